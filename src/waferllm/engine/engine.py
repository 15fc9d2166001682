"""The generation loop: prefill once, then decode, one `Step` per token (SPEC.md §6).

`Engine.generate(prompt_ids, params)` returns a `Generation`, an iterator over `Step`s that
also holds the request's `Trace`: one cost ledger per phase (prefill, transition, each decode
step, and the host I/O of sampling), from which `engine.metrics` derives the modelled metrics.
`Engine.generate_batch` runs several requests as one batch on the wafer (prompts prefilled in
turn, decode steps shared): each trace holds its own prefill and the batch's shared ledgers.
The engine knows nothing of tokenizers, text or printing; the model owns the mesh, the
weights and the KV cache (`waferllm.model`).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from waferllm.device import Device
from waferllm.engine.sampling import Sampler, SamplingParams
from waferllm.errors import WaferError
from waferllm.mesh.cost import Ledger

# Legend: V vocabulary size.


class ModelOutput(Protocol):
    """What one model call leaves on the mesh: the greedy token and the logits behind it."""

    @property
    def token(self) -> int:
        """The on-mesh argmax of the last position's logits."""
        ...

    def fetch_logits(self, ledger: Ledger) -> torch.Tensor:
        """The last position's logits on the host, [V] (real vocabulary), charged as host I/O."""
        ...


class GenerativeModel(Protocol):
    """The narrow surface of `waferllm.model.MeshTransformer` the engine drives."""

    @property
    def device(self) -> Device: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt the prefill plan's SRAM holds."""
        ...

    def can_prefill(self, prompt_len: int) -> bool:
        """Whether the prefill plan holds such a prompt, at once or in chunks."""
        ...

    @property
    def max_position_embeddings(self) -> int:
        """The longest sequence the model was trained for (its config's field)."""
        ...

    def kv_capacity_tokens(self, *, prompt_len: int) -> int:
        """Largest total context (prompt + fed-back tokens) the KV cache holds after a prompt
        of `prompt_len` tokens (the concat policy's depends on the prompt)."""
        ...

    def max_new_tokens(self, prompt_len: int) -> int:
        """Tokens that can be generated after the prompt; 0 when the prompt does not fit."""
        ...

    def prefill(self, token_ids: Sequence[int], ledger: Ledger) -> ModelOutput: ...

    def transition(self, ledger: Ledger) -> None:
        """Re-lay the KV cache (and weights) from the prefill to the decode plan."""
        ...

    def decode_step(self, token_id: int, ledger: Ledger) -> ModelOutput: ...

    def prefill_batch(
        self,
        prompts: Sequence[Sequence[int]],
        ledgers: Sequence[Ledger],
        *,
        context_tokens: Sequence[int] | None = None,
    ) -> Sequence[ModelOutput]:
        """Admit a batch by KV capacity (each sequence's prompt + fed-back tokens), then
        prefill its prompts in turn."""
        ...

    def decode_batch(
        self, token_ids: Sequence[int], ledger: Ledger, *, seqs: Sequence[int] | None = None
    ) -> Sequence[ModelOutput]:
        """One decode step of the batch's sequences `seqs`, each fed its token."""
        ...

    def retire(self, b: int) -> None:
        """Sequence b of the batch finished."""
        ...


class RequestError(WaferError):
    """A request the model cannot serve: bad token ids, too long for the KV cache."""


class FinishReason(enum.StrEnum):
    STOP = "stop"  # an end-of-sequence token was generated
    LENGTH = "length"  # max_tokens reached


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """One generated token. `modelled_s`: the modelled time of the call that produced it (TTFT
    for the first token, one decode step after; the transition between them is in the trace).
    `finish_reason` is set on the last step only."""

    token_id: int
    index: int
    is_first: bool
    modelled_s: float
    finish_reason: FinishReason | None = None


@dataclasses.dataclass(kw_only=True)
class Trace:
    """Everything a request charged, one ledger per phase (SPEC.md §10.4's ingredients).

    `host_io` holds the logits' trips to the host for non-greedy samplers, kept apart from the
    phases so that no modelled time includes them; `host_wall_s` is real time on this machine.
    """

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    prefill: Ledger = dataclasses.field(default_factory=Ledger)
    transition: Ledger = dataclasses.field(default_factory=Ledger)
    decode: list[Ledger] = dataclasses.field(default_factory=list)
    host_io: Ledger = dataclasses.field(default_factory=Ledger)
    token_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: FinishReason | None = None
    host_wall_s: float = 0.0

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def output_len(self) -> int:
        return len(self.token_ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Generation(Iterator[Step]):
    """One request in flight: iterate for its `Step`s; `trace` fills in as it runs."""

    def __init__(self, engine: Engine, prompt_ids: tuple[int, ...], params: SamplingParams):
        self.trace = Trace(prompt_ids=prompt_ids, params=params)
        self._steps = engine._run(self.trace)

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> Step:
        return next(self._steps)

    def run(self) -> Trace:
        """Run to the end; the finished trace."""
        for _ in self:
            pass
        return self.trace


class Engine:
    """Drives a `GenerativeModel`: one request at a time (batch 1, as the paper serves), or a
    batch of requests decoded together (`generate_batch`)."""

    def __init__(self, model: GenerativeModel) -> None:
        self.model = model

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Validate the request now (bad ids, prompt or max_tokens too long for the KV cache
        raise `RequestError` before anything runs), then generate lazily as it is iterated."""
        ids = self.validate(prompt_ids, params)
        return Generation(self, ids, params)

    def validate(self, prompt_ids: Sequence[int], params: SamplingParams) -> tuple[int, ...]:
        ids = tuple(prompt_ids)
        if not ids:
            raise RequestError("the prompt is empty: give at least one token")
        vocab = self.model.vocab_size
        bad = [
            t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab
        ]
        if bad:
            raise RequestError(
                f"prompt token id {bad[0]!r} is not in the vocabulary [0, {vocab})"
                + (f" ({len(bad)} such ids)" if len(bad) > 1 else "")
            )
        positions = self.model.max_position_embeddings
        if len(ids) + params.max_tokens - 1 > positions:  # SPEC.md §9
            raise RequestError(
                f"the prompt has {len(ids)} tokens and max_tokens={params.max_tokens}: "
                f"{len(ids) + params.max_tokens - 1} positions, more than the model's "
                f"max_position_embeddings={positions}; shorten the prompt or lower max_tokens"
            )
        if not self.model.can_prefill(len(ids)):  # neither at once nor in chunks
            raise RequestError(
                f"the prompt has {len(ids)} tokens but the prefill plan holds at most "
                f"{self.model.max_prompt_tokens} in SRAM at once and cannot hold its KV cache "
                "in chunks; use a larger prefill grid or a shorter prompt"
            )
        room = self.model.max_new_tokens(len(ids))
        if room < 1:
            capacity = self.model.kv_capacity_tokens(prompt_len=len(ids))
            raise RequestError(
                f"the prompt has {len(ids)} tokens, more than the KV cache holds "
                f"({capacity} tokens in all); use a larger decode grid or a shorter prompt"
            )
        if params.max_tokens > room:
            raise RequestError(
                f"max_tokens={params.max_tokens} but only {room} new tokens fit in the KV cache "
                f"after this {len(ids)}-token prompt (lower max_tokens or use a larger grid)"
            )
        return ids

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> list[Trace]:
        """Run the requests as one batch to the end; their finished traces. Every request is
        validated and the batch admitted by KV capacity (KvCacheFullError) before any runs.
        Each trace's `prefill` is its own prompt's (the prompts run one after another); its
        `transition` and `decode` ledgers are the batch's, shared by every trace."""
        ids = [self.validate(p, q) for p, q in zip(prompts, params, strict=True)]
        traces = [Trace(prompt_ids=i, params=q) for i, q in zip(ids, params, strict=True)]
        samplers = [None if q.greedy else Sampler(q) for q in params]
        start = time.perf_counter()
        contexts = [len(i) + q.max_tokens - 1 for i, q in zip(ids, params, strict=True)]
        with torch.inference_mode():
            outs = self.model.prefill_batch(
                ids, [t.prefill for t in traces], context_tokens=contexts
            )
        tokens = []
        for out, sampler, trace in zip(outs, samplers, traces, strict=True):
            tokens.append(self._select(out, sampler, trace.host_io))
            self._record(trace, tokens[-1], trace.prefill)
        live = [b for b, t in enumerate(traces) if not t.done]
        if live:
            with torch.inference_mode():
                self.model.transition(traces[0].transition)
        for trace in traces[1:]:
            trace.transition = traces[0].transition
        while live:
            ledger = Ledger()
            with torch.inference_mode():
                outs = self.model.decode_batch([tokens[b] for b in live], ledger, seqs=live)
            for b, out in zip(live, outs, strict=True):
                traces[b].decode.append(ledger)
                tokens[b] = self._select(out, samplers[b], traces[b].host_io)
                self._record(traces[b], tokens[b], ledger)
                if traces[b].done:
                    self.model.retire(b)
            live = [b for b in live if not traces[b].done]
        wall_s = time.perf_counter() - start
        for trace in traces:
            trace.host_wall_s = wall_s
        return traces

    def _run(self, trace: Trace) -> Iterator[Step]:
        """The request's steps. Model calls run under `torch.inference_mode` (nothing here
        needs autograd; it saves a few percent of a decode step's host time), never across a
        `yield`, so the caller's code between steps runs in its own mode. Tensors the model
        creates here are inference tensors: a later in-place update must also run in that mode
        (the model's own calls through this engine do)."""
        params = trace.params
        sampler = None if params.greedy else Sampler(params)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.prefill(trace.prompt_ids, trace.prefill)
        token = self._select(out, sampler, trace.host_io)
        step = self._record(trace, token, trace.prefill)
        trace.host_wall_s += time.perf_counter() - start
        yield step
        if trace.done:
            return
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.transition(trace.transition)
        while not trace.done:
            ledger = Ledger()
            trace.decode.append(ledger)
            with torch.inference_mode():
                out = self.model.decode_step(token, ledger)
            token = self._select(out, sampler, trace.host_io)
            step = self._record(trace, token, ledger)
            trace.host_wall_s += time.perf_counter() - start
            yield step
            start = time.perf_counter()

    @staticmethod
    def _select(out: ModelOutput, sampler: Sampler | None, host_io: Ledger) -> int:
        if sampler is None:
            return int(out.token)
        return sampler.sample(out.fetch_logits(host_io))

    def _record(self, trace: Trace, token: int, ledger: Ledger) -> Step:
        trace.token_ids.append(token)
        params = trace.params
        if token in self.model.eos_token_ids and not params.ignore_eos:
            trace.finish_reason = FinishReason.STOP
        elif trace.output_len >= params.max_tokens:
            trace.finish_reason = FinishReason.LENGTH
        seconds = self.model.device.cycles_to_seconds(ledger.totals().latency_cycles)
        return Step(
            token_id=token,
            index=trace.output_len - 1,
            is_first=trace.output_len == 1,
            modelled_s=seconds,
            finish_reason=trace.finish_reason,
        )
