"""`LLM`: vLLM-style generation from a local checkpoint on the virtual wafer (SPEC.md §1.2).

    llm = LLM("path/to/checkpoint", device="tiny")
    out = llm.generate(["The wafer"], SamplingParams(max_tokens=32, temperature=0.0))
    out[0].text, out[0].metrics.ttft_s, out[0].report.to_dict()

Loads config, weights and (if present) tokenizer.json, places the model on the mesh, and runs
each prompt through `engine.Engine`; every metric is modelled (`RequestMetrics`), host
wall-clock is reported apart. Tokenisation happens here, never in the engine.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from waferllm.api.provenance import make_provenance
from waferllm.device import Device, get_device, with_overrides
from waferllm.engine.chat import ChatTemplate, load_chat_template
from waferllm.engine.engine import Engine, FinishReason, Generation, Step, Trace
from waferllm.engine.metrics import Occupancy, breakdown, request_metrics
from waferllm.engine.sampling import SamplingParams
from waferllm.engine.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from waferllm.errors import GridError, WaferError
from waferllm.estimate.capacity import whole_model_capacity
from waferllm.estimate.cost import Setup
from waferllm.estimate.search import default_grids
from waferllm.mesh.virtual import COMPUTE_DTYPES, GridLike, as_grid, resolve_torch_device
from waferllm.model.config import ModelConfig
from waferllm.model.kv_cache import KvPolicy
from waferllm.model.placement import PlacementMode, ResidentLayouts
from waferllm.model.quant import Storage
from waferllm.model.report import RequestMetrics, RequestReport
from waferllm.model.transformer import MeshTransformer
from waferllm.model.weights import ModelWeights, load_checkpoint

__all__ = ["LLM", "RequestOutput", "SamplingParams", "StreamChunk"]

Grid = GridLike
Prompt = str | Sequence[int]
Message = Mapping[str, Any]  # {"role": ..., "content": ...}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestOutput:
    """One finished request. `token_ids` are the generated ids only; `text` their decoding
    (None without a tokenizer). `metrics` and `report` are modelled; `report.host_wall_s` is
    real time on this machine."""

    prompt: str | None
    prompt_token_ids: list[int]
    text: str | None
    token_ids: list[int]
    finish_reason: str
    metrics: RequestMetrics
    report: RequestReport
    trace: Trace = dataclasses.field(repr=False, compare=False)  # every ledger (--trace)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamChunk:
    """One generated token as it arrives: `text` is the new text it completes (may be empty);
    `output` is set on the last chunk only."""

    token_id: int
    text: str
    step: Step
    output: RequestOutput | None = None


def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (text or ids) or a list of them -> a list of prompts."""
    if isinstance(prompts, bytes | bytearray | memoryview):
        raise TypeError(
            "prompts must be text (str) or lists of token ids, not bytes; decode the bytes "
            "(e.g. data.decode('utf-8')) or pass list(token_ids)"
        )
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return [items]  # type: ignore[list-item]
    bad = [p for p in items if not isinstance(p, str | list | tuple)]
    if bad:
        raise WaferError(f"prompts must be text or lists of token ids, got {type(bad[0]).__name__}")
    return items  # type: ignore[return-value]


def _params_list(
    params: SamplingParams | Sequence[SamplingParams] | None, count: int
) -> list[SamplingParams]:
    """One SamplingParams per prompt (vLLM's rule: one for all, or a list of the same length)."""
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * count
    items = list(params)
    if len(items) != count or not all(isinstance(q, SamplingParams) for q in items):
        raise WaferError(
            f"params must be one SamplingParams or a list of {count} (one per prompt), got "
            f"{len(items)} items"
        )
    return items


def _choice(value: str, options: type[enum.StrEnum], name: str) -> Any:
    try:
        return options(value)
    except ValueError:
        valid = ", ".join(str(o) for o in options)
        raise WaferError(f"{name}={value!r} is not one of {valid}") from None


class LLM:
    """A checkpoint placed on the virtual wafer, ready to generate (batch 1, one request at
    a time). `grid` sets both phases; `prefill_grid`/`decode_grid` set them apart; with no
    grid, the smallest square grid that holds the model with room for a few hundred tokens
    of context is used for both (`default_grids`). `weight_dtype`/`kv_dtype` (float16, int8,
    int4; SPEC.md §10.2) store the weights and the KV cache compressed: the checkpoint is
    quantised at load, the KV cache on write, and the costs count the stored bytes.
    `torch_device` says where the virtual wafer's tensors live: `cpu` (default) or `cuda` (a
    GPU; WaferError when there is none).

    One object serves one request at a time: `generate` and `stream` calls from several
    threads are serialised by a lock (each waits for the request in flight); an unfinished
    `stream()` on the calling thread makes a second request there raise `WaferError`."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str | Device = "tiny",
        device_overrides: Mapping[str, Any] | None = None,
        grid: Grid | None = None,
        prefill_grid: Grid | None = None,
        decode_grid: Grid | None = None,
        dtype: str = "float32",
        f16_accumulate: bool = False,
        kv_cache: str = "shift",
        placement: str = "fit",
        resident_layouts: str = "one",
        weight_dtype: str = "float16",
        kv_dtype: str = "float16",
        torch_device: str = "cpu",
    ) -> None:
        if grid is not None and (prefill_grid is not None or decode_grid is not None):
            raise GridError("give either grid or prefill_grid/decode_grid, not both")
        if dtype not in COMPUTE_DTYPES:
            raise WaferError(f"dtype={dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        tiles_device = resolve_torch_device(torch_device)  # before loading: fail fast
        self.device = device if isinstance(device, Device) else get_device(device)
        if device_overrides:
            self.device = with_overrides(self.device, device_overrides)
        self.path = Path(model)
        storage = Storage.of(weight_dtype, kv_dtype)
        # float32 compute of uncompressed weights: each tensor as stored (a float16/bfloat16
        # checkpoint stays half the size, on the host and in the tiles: `mesh.virtual.held_dtype`);
        # else float32, which quantisation and the other compute dtypes start from
        exact = dtype == "float32" and not storage.weights.compressed
        checkpoint = load_checkpoint(self.path, dtype=None if exact else torch.float32)
        self.config: ModelConfig = checkpoint.config
        self.tokenizer: Tokenizer | None = (
            load_tokenizer(self.path) if (self.path / TOKENIZER_FILE).is_file() else None
        )
        self._chat_template: ChatTemplate | None = None  # loaded by the first chat
        self.dtype = dtype
        self._mesh: dict[str, Any] = dict(
            compute_dtype=COMPUTE_DTYPES[dtype],
            f16_accumulate=f16_accumulate,
            torch_device=tiles_device,
        )
        self._plan: dict[str, Any] = dict(
            kv_policy=_choice(kv_cache, KvPolicy, "kv_cache"),
            placement=_choice(placement, PlacementMode, "placement"),
            resident_layouts=_choice(resident_layouts, ResidentLayouts, "resident_layouts"),
            storage=storage,
        )
        prefill = self._grid(grid, "grid") or self._grid(prefill_grid, "prefill_grid")
        decode = self._grid(grid, "grid") or self._grid(decode_grid, "decode_grid")
        self.model = self._place(checkpoint.weights, prefill, decode)
        self.engine = Engine(self.model)
        # One request at a time: the model's KV cache and logits are per-object state.
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread running a request, while one runs

    def _acquire(self) -> None:
        """Wait for the request in flight in another thread; refuse to wait on this thread's
        own unfinished `stream()` (that would deadlock, and interleaving would mix caches)."""
        if self._owner == threading.get_ident():
            raise WaferError(
                "this LLM is already running a request in this thread (an unfinished "
                "stream()); consume or close() it first: one LLM serves one request at a time"
            )
        self._lock.acquire()
        self._owner = threading.get_ident()

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    def _grid(self, value: Grid | None, name: str) -> tuple[int, int] | None:
        parsed = as_grid(value, name)
        rows, cols = self.device.mesh_rows, self.device.mesh_cols
        if parsed is not None and (parsed[0] > rows or parsed[1] > cols):
            raise GridError(
                f"{name} {parsed[0]}x{parsed[1]} is larger than the {self.device.name} device's "
                f"{rows}x{cols} mesh"
            )
        return parsed

    # ---- placement -----------------------------------------------------------------------------
    def _place(
        self,
        weights: ModelWeights,
        prefill: tuple[int, int] | None,
        decode: tuple[int, int] | None,
    ) -> MeshTransformer:
        """Place the model on the given grids; a missing grid is `default_grids`' choice."""
        if prefill is None or decode is None:
            prefill, decode = default_grids(
                self.config,
                self.device,
                prefill=prefill,
                decode=decode,
                placement=self._plan["placement"],
                resident_layouts=self._plan["resident_layouts"],
                storage=self._plan["storage"],
            )
        return MeshTransformer(
            self.config,
            weights,
            device=self.device,
            prefill_grid=prefill,
            decode_grid=decode,
            **self._plan,
            **self._mesh,
        )

    # ---- requests ------------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise WaferError(
                    f"{self.path} has no {TOKENIZER_FILE}, so text prompts cannot be "
                    "tokenised; pass token ids instead"
                )
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def chat_prompt(self, messages: Sequence[Message]) -> list[int]:
        """The token ids of a conversation under the checkpoint's chat template (rendered as
        transformers' `apply_chat_template(..., add_generation_prompt=True)` does)."""
        if self._chat_template is None:
            self._chat_template = load_chat_template(self.path)
        text = self._chat_template.render(messages)
        if self.tokenizer is None:
            raise WaferError(f"{self.path} has no {TOKENIZER_FILE}, so a chat cannot be tokenised")
        return self.tokenizer.encode(text, add_special_tokens=False)  # the template has BOS

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """Generate the assistant's reply to one conversation (a list of {role, content}
        messages) or to each of a list of conversations, as vLLM's `LLM.chat`."""
        single = bool(messages) and isinstance(messages[0], Mapping)
        conversations = [messages] if single else list(messages)
        prompts = [self.chat_prompt(c) for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, params)

    def check_request(self, prompt: Prompt, params: SamplingParams) -> None:
        """Raise the error `generate` would raise for this request, without running it."""
        self.engine.validate(self.encode(prompt), params)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids), one output per prompt in order, as
        vLLM's `LLM.generate`: `params` is one SamplingParams for all or a list, one per
        prompt. Every request is checked before the first one runs. Several prompts run as
        wafer batches (decoded together, each sequence in its own KV rows): in order, as
        many per batch as the KV cache admits."""
        batch = _as_batch(prompts)
        per_prompt = _params_list(params, len(batch))
        encoded = [self.encode(p) for p in batch]
        for ids, q in zip(encoded, per_prompt, strict=True):
            self.engine.validate(ids, q)
        outputs = []
        self._acquire()
        try:
            if len(batch) == 1:  # the paper's batch-1 request, streamed
                *_, last = self._stream(batch[0], encoded[0], per_prompt[0])
                assert last.output is not None
                return [last.output]
            for group in self._pack(encoded, per_prompt):
                traces = self.engine.generate_batch(
                    [encoded[i] for i in group], [per_prompt[i] for i in group]
                )
                for i, trace in zip(group, traces, strict=True):
                    outputs.append(self._finished(batch[i], trace, batch_size=len(group)))
        finally:
            self._release()
        return outputs

    def _pack(self, encoded: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
        """Consecutive prompts grouped into batches the KV cache admits (each alone does)."""
        groups: list[list[int]] = []
        for i in range(len(encoded)):
            group = [*groups[-1], i] if groups else [i]
            lengths = [len(encoded[j]) for j in group]
            contexts = [len(encoded[j]) + params[j].max_tokens - 1 for j in group]
            if groups and self.model.admits(lengths, contexts):
                groups[-1] = group
            else:
                groups.append([i])
        return groups

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[StreamChunk]:
        """Generate for one prompt, one chunk per token as it is produced. The request holds
        the LLM from its first chunk until it is consumed, closed or dropped: other threads
        wait; a second stream or generate on the same thread meanwhile raises `WaferError`."""
        params = params or SamplingParams()
        if isinstance(prompt, bytes | bytearray | memoryview):
            _as_batch(prompt)  # raises the TypeError
        ids = self.encode(prompt)
        self.engine.validate(ids, params)
        return self._held(prompt, ids, params)

    def _held(
        self, prompt: Prompt, ids: list[int], params: SamplingParams
    ) -> Iterator[StreamChunk]:
        self._acquire()
        try:
            yield from self._stream(prompt, ids, params)
        finally:
            self._release()

    def _stream(
        self, prompt: Prompt, ids: list[int], params: SamplingParams
    ) -> Iterator[StreamChunk]:
        generation = self.engine.generate(ids, params)
        decoder = self.tokenizer.stream() if self.tokenizer is not None else None
        for step in generation:
            text = decoder.push(step.token_id) if decoder is not None else ""
            if step.finish_reason is None:
                yield StreamChunk(token_id=step.token_id, text=text, step=step)
                continue
            text += decoder.flush() if decoder is not None else ""
            output = self._output(prompt, generation)
            yield StreamChunk(token_id=step.token_id, text=text, step=step, output=output)

    def _output(self, prompt: Prompt, generation: Generation) -> RequestOutput:
        return self._finished(prompt, generation.trace, batch_size=1)

    def _finished(self, prompt: Prompt, trace: Trace, *, batch_size: int) -> RequestOutput:
        text = self.tokenizer.decode(trace.token_ids) if self.tokenizer is not None else None
        report = self.report(trace, text=text, batch_size=batch_size)
        return RequestOutput(
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_token_ids=list(trace.prompt_ids),
            text=text,
            token_ids=list(trace.token_ids),
            finish_reason=str(trace.finish_reason or FinishReason.LENGTH),
            metrics=report.metrics,
            report=report,
            trace=trace,
        )

    # ---- reporting -----------------------------------------------------------------------------
    def occupancy(self) -> Occupancy:
        """The cores the placed model occupies (the larger phase: one resident copy of the
        weights is re-laid between the phases' regions), its peak SRAM and its routes."""
        plan = self.model.plan
        num_cores = max(
            len(phase.regions) * phase.grid[0] * phase.grid[1]
            for phase in (plan.prefill, plan.decode)
        )
        return Occupancy(
            num_cores=num_cores,
            peak_sram_bytes_per_core=self.model.peak_sram_bytes_per_core(),
            routes_per_core=max(self.model.routes_per_core().values()),
        )

    def report(
        self, trace: Trace, *, text: str | None = None, batch_size: int = 1
    ) -> RequestReport:
        """The SPEC.md §10.4 request report of a finished generation (one sequence of a batch
        of `batch_size`: its TPOT is the batch's decode step)."""
        model, length, occupancy = self.model, trace.prompt_len, self.occupancy()
        metrics = request_metrics(
            trace, device=self.device, occupancy=occupancy, config=self.config
        )
        # SPEC.md §10.10: the whole model resident over a tiling of the whole device (this
        # plan's own cache may be smaller: it uses the fewest regions that hold the model)
        setup = Setup(
            config=self.config,
            device=self.device,
            resident=model.plan.resident,
            storage=model.plan.storage,
        )
        grids = (model.plan.prefill.grid, model.plan.decode.grid)
        capacity, room = whole_model_capacity(setup, *grids, length)
        return RequestReport(
            kind="generate",
            model=self.config.name,
            device=self.device.name,
            prompt_len=length,
            output_len=trace.output_len,
            prefill_grid=model.plan.prefill.grid,
            decode_grid=model.plan.decode.grid,
            placement=str(model.plan.placement),
            metrics=metrics,
            kv_capacity_tokens=capacity,
            max_new_tokens=room,
            breakdown={
                **breakdown(trace, device=self.device),
                "dtype": self.dtype,
                "kv_cache": str(self._plan["kv_policy"]),
                "regions": {
                    "prefill": len(model.plan.prefill.regions),
                    "decode": len(model.plan.decode.regions),
                },
            },
            host_wall_s=trace.host_wall_s,
            text=text,
            token_ids=list(trace.token_ids),
            provenance=make_provenance(device=self.device, config=self.config),
            sram_used_fraction=_sram_used_fraction(self.device, occupancy),
            weight_dtype=model.plan.storage.weights.value,
            kv_dtype=model.plan.storage.kv.value,
            batch_size=batch_size,
        )


def _sram_used_fraction(device: Device, occupancy: Occupancy) -> float | None:
    """The peak core's bytes on every core the model occupies, over the device's SRAM (an
    upper bound on the share in use at the peak)."""
    if occupancy.peak_sram_bytes_per_core is None:
        return None
    used = occupancy.peak_sram_bytes_per_core * occupancy.num_cores
    return used / (device.sram_bytes_per_core * device.num_cores)
