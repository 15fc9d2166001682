"""`MeshTransformer`: a Llama-family model resident on the virtual wafer (SPEC.md §5, §6).

`prefill(token_ids, ledger)` runs the prompt with the prefill plan (in chunks against the cached
keys when it is longer than the plan holds at once: `chunked.py`) and selects the first token
on the mesh; `transition(ledger)` hands the KV cache (and, with one resident layout, the
weights) to the decode plan; `decode_step(token_id, ledger)` feeds one token back. Each returns
a `StepOutput`: the on-mesh argmax and a handle that gathers the logits to the host, charged
as host I/O. With `weights=None` the same code runs in estimate mode on meta tensors. Identical
layers are walked once and their ledger extended by the layer count; the estimate layer prices
decode steps without tokens through the `decode_records` hooks (`waferllm.estimate.cost`).
The generation loop lives in `engine`; the vocabulary ends in `vocab.py`.
Legend: L prompt tokens, D model dim, V vocab; R x C the grid of a phase.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import torch

from waferllm.device import Device
from waferllm.errors import NonFiniteError, WaferError
from waferllm.kernels.attention import KeyChunk
from waferllm.mesh.comm import ReduceAlgorithm, broadcast
from waferllm.mesh.compute import charge_inline_compute
from waferllm.mesh.cost import Ledger, UnpricedLedger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.relayout import concurrent_relayout_charge, hop
from waferllm.mesh.storage import bytes_per_element, stored_bytes
from waferllm.mesh.system_link import system_link_hop
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mode
from waferllm.model import vocab
from waferllm.model.chunked import chunk_candidates, default_chunk_tokens, kept_kv, prefill_chunks
from waferllm.model.config import ModelConfig, rope_inv_freq
from waferllm.model.kv_cache import (
    Append,
    KvBudget,
    KvCacheFullError,
    KvPolicy,
    KvStore,
    RowCounts,
    admit,
    evicts,
    kv_capacity_tokens,
    max_new_tokens,
    slots_needed,
)
from waferllm.model.layers import (
    CacheStep,
    LayerContext,
    LayerLedgers,
    charge_rope_tables,
    decode_attention_walk,
    decode_layer,
    decode_slot_mask,
    prefill_layer,
    rope_tables,
)
from waferllm.model.pipeline import device_count
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts, heads_for
from waferllm.model.plan import (
    ModelPlan,
    PhaseState,
    build_phase,
    decode_scratch_bytes,
    plan_model,
)
from waferllm.model.quant import UNCOMPRESSED, Storage, quantise_weights
from waferllm.model.transfers import kv_moves, kv_quantise_cycles, per_layer_hops, weight_moves
from waferllm.model.weights import ModelWeights


@dataclasses.dataclass(frozen=True, eq=False)
class StepOutput:
    """One model call's result: `token` is the on-mesh argmax of the last position's logits
    (0 in estimate mode, which has no numbers); `position` is how many tokens the model has
    now seen. `fetch_logits` brings the logits [V] to the host, charged as host I/O."""

    token: int
    position: int
    logits: DistTensor  # [V] after a prefill, [B, V] after a decode step of B sequences
    row: int = 0  # this sequence's row of a decode step's logits

    def fetch_logits(self, ledger: Ledger) -> torch.Tensor:
        values = self.logits.mesh.gather(self.logits, ledger=ledger).float()
        return values[self.row] if values.dim() == 2 else values


@dataclasses.dataclass(eq=False, kw_only=True)
class _Seq:
    """One sequence of the batch in flight: its prompt, its share of the KV slots per row and,
    once its prompt's KV is in its decode rows, its per-row counts."""

    prompt_len: int
    slots: int
    chunk_tokens: int | None = None  # its prompt's prefill chunks (None: one piece)
    counts: RowCounts | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class DecodeRecords:
    """One decode step's ledgers kept apart: `before` the layers (the token in, embedding,
    region hops, RoPE tables), one layer's (`layer`) and its KV shift (`kv`), `after` the
    layers (final norm, LM head, argmax). The step's ledger is before, layer and kv times
    the layer count, after."""

    before: Ledger
    layer: LayerLedgers
    kv: Ledger
    after: Ledger


class _Uncharged(UnpricedLedger):
    """A ledger that keeps and prices nothing, for the layers whose cost is the walked layer's
    (the same shapes on the same grid): functional runs compute every layer but price one.
    Routes and SRAM are still checked."""


class MeshTransformer:
    """A decoder-only Llama/Mistral/Qwen2 model placed on `device` (see the module docstring).

    `prefill_grid`, `decode_grid`: (rows, cols) of each phase's regions. `placement`: `fit`
    (every layer resident, over as many regions as SRAM needs) or `per-layer` (estimate only:
    one layer's plan, costs times the layer count). `kv_policy`: shift or concat.
    `resident_layouts`: `one` re-lays the weights per request (charged in `transition`),
    `both` keeps both plans' copies. `max_context_tokens`: size the KV cache for this many
    tokens (default: as many as SRAM holds). `storage`: weights and KV cache compressed or
    not (`model.quant`); real weights are quantised here, once. `torch_device`: where
    functional tiles live (`cpu`, or a GPU: `cuda`).
    `num_devices`: `fit` over that many linked devices, a range of layers each (`pipeline.py`);
    the residual stream crosses the inter-system link between them.
    """

    def __init__(
        self,
        config: ModelConfig,
        weights: ModelWeights | None,
        *,
        device: Device,
        prefill_grid: tuple[int, int],
        decode_grid: tuple[int, int],
        placement: PlacementMode = PlacementMode.FIT,
        kv_policy: KvPolicy = KvPolicy.SHIFT,
        compute_dtype: torch.dtype = torch.float32,
        f16_accumulate: bool = False,
        resident_layouts: ResidentLayouts = ResidentLayouts.ONE,
        max_context_tokens: int | None = None,
        storage: Storage = UNCOMPRESSED,
        torch_device: torch.device | str = "cpu",
        num_devices: int = 1,
    ) -> None:
        self.config = config
        self.mode = Mode.FUNCTIONAL if weights is not None else Mode.ESTIMATE
        if placement is PlacementMode.PER_LAYER and self.mode is Mode.FUNCTIONAL:
            raise WaferError(
                "placement per-layer is an estimate-only extrapolation (one layer's plan times "
                "the layer count); use placement fit to generate with real weights"
            )
        self.kv_policy = KvPolicy(kv_policy)
        self.plan: ModelPlan = plan_model(
            config,
            device,
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            placement=PlacementMode(placement),
            resident=ResidentLayouts(resident_layouts),
            max_context_tokens=max_context_tokens,
            storage=storage,
            num_devices=num_devices,
        )
        if weights is not None:
            weights = quantise_weights(weights, storage.weights)
        mesh_args = {
            "mode": self.mode,
            "compute_dtype": compute_dtype,
            "f16_accumulate": f16_accumulate,
            "torch_device": torch_device,
        }
        self.prefill_state: PhaseState = build_phase(self.plan, Phase.PREFILL, weights, mesh_args)
        self.decode_state: PhaseState = build_phase(self.plan, Phase.DECODE, weights, mesh_args)
        self.inv_freq = rope_inv_freq(config)
        self._seqs: list[_Seq] = []  # the batch in flight
        self._stores: list[KvStore] = []  # per decode region, shared by the batch
        self._prefill_kv: dict[int, list[KeyChunk]] = {}  # the latest prompt's, per chunk
        self._logits: DistTensor | None = None

    # ---- the engine's surface ----------------------------------------------------------------
    @property
    def device(self) -> Device:
        return self.plan.device

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.config.eos_token_ids

    @property
    def max_position_embeddings(self) -> int:
        return self.config.max_position_embeddings

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt the prefill plan's SRAM holds at once (an upper-bound estimate);
        longer ones run in chunks (`model.chunked`)."""
        return self.plan.max_prompt_tokens

    @property
    def kv_slots_per_row(self) -> int:
        return self.plan.kv_slots

    def evicts(self, policy: KvPolicy | None = None) -> bool:
        """Whether the cache evicts keys older than the sliding window (and never fills)."""
        policy = KvPolicy(policy or self.kv_policy)
        rows = self.plan.decode.grid[0]
        return evicts(policy, rows, self.plan.kv_slots, self.config.sliding_window)

    def kv_capacity_tokens(self, policy: KvPolicy | None = None, prompt_len: int = 0) -> int:
        """Largest total context (prompt + tokens fed back) the cache holds (SPEC.md §10.4).
        An evicting cache (sliding window) holds any context: the model's trained context
        (max_position_embeddings) bounds it instead."""
        rows = self.plan.decode.grid[0]
        policy = KvPolicy(policy or self.kv_policy)
        return kv_capacity_tokens(
            policy, rows, self.plan.kv_slots, prompt_len, **self._window_limits()
        )

    def max_new_tokens(self, prompt_len: int, policy: KvPolicy | None = None) -> int:
        """Tokens that can be generated after a prompt of `prompt_len` before SRAM runs out
        (an evicting cache: before the trained context ends)."""
        rows = self.plan.decode.grid[0]
        policy = KvPolicy(policy or self.kv_policy)
        return max_new_tokens(policy, rows, self.plan.kv_slots, prompt_len, **self._window_limits())

    def _window_limits(self) -> dict[str, int | None]:
        return {
            "window": self.config.sliding_window,
            "max_positions": self.config.max_position_embeddings,
        }

    def can_prefill(self, prompt_len: int) -> bool:
        """Whether the prefill plan holds the prompt, at once or in chunks."""
        fits = prompt_len <= self.plan.max_prompt_tokens
        return fits or bool(chunk_candidates(self.plan, prompt_len))

    def default_chunk_tokens(self, prompt_len: int) -> int:
        """The chunk a too-long prompt runs in: the fewest equal chunks that fit the plan."""
        return default_chunk_tokens(self.plan, prompt_len)

    # ---- prefill -----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self, token_ids: Sequence[int], ledger: Ledger, *, chunk_tokens: int | None = None
    ) -> StepOutput:
        """Run the prompt with the prefill plan; the first generated token is selected on the
        mesh. Starts a new request (the previous one's cache is dropped); the sequence may use
        the whole KV cache. A prompt longer than the plan holds at once runs in chunks
        (`chunked.py`) of `chunk_tokens` (default: the fewest equal chunks that fit);
        `chunk_tokens` forces chunks on a shorter prompt."""
        return self.prefill_batch([token_ids], [ledger], chunk_tokens=[chunk_tokens])[0]

    @torch.inference_mode()
    def prefill_batch(
        self,
        prompts: Sequence[Sequence[int]],
        ledgers: Sequence[Ledger],
        *,
        context_tokens: Sequence[int] | None = None,
        chunk_tokens: Sequence[int | None] | None = None,
    ) -> list[StepOutput]:
        """Start a batch of B sequences: admit them by KV capacity (each takes its share of the
        slots for `context_tokens[b]` cached positions, prompt + fed-back tokens; default: an
        equal share each), then run each prompt through the prefill plan in turn, charged to
        its own ledger (one prompt at a time: prefill is not batched), in chunks of
        `chunk_tokens[b]` where given or where the prompt is longer than the plan holds at
        once (`prefill`). Each sequence's KV cache moves to its decode rows before the next
        prompt runs (charged in `transition`)."""
        ids = [self._check_ids(p) for p in prompts]
        if len(ids) != len(ledgers):
            raise WaferError(f"{len(ids)} prompts but {len(ledgers)} ledgers")
        chunks = self._chunk_sizes(ids, chunk_tokens)
        shares = self._admit([len(p) for p in ids], context_tokens)
        self._reset()
        self._ensure_stores(sum(shares))
        outputs = []
        for b, (prompt, ledger) in enumerate(zip(ids, ledgers, strict=True)):
            if b:
                self._park(b - 1)
            outputs.append(self._prefill_one(prompt, ledger, chunks[b]))
            self._seqs.append(_Seq(prompt_len=len(prompt), slots=shares[b], chunk_tokens=chunks[b]))
        return outputs

    def _chunk_sizes(
        self, ids: list[list[int]], chunk_tokens: Sequence[int | None] | None
    ) -> list[int | None]:
        """Each prompt's chunk (None: one piece); a prompt longer than the plan holds at once
        takes `default_chunk_tokens` (which raises when even chunks do not fit)."""
        given: list[int | None] = [None] * len(ids)
        if chunk_tokens is not None:
            given = list(chunk_tokens)
        if len(given) != len(ids):
            raise WaferError(f"{len(ids)} prompts but {len(given)} chunk sizes")
        for b, prompt in enumerate(ids):
            self._check_prompt(len(prompt))
            if given[b] is None and len(prompt) > self.plan.max_prompt_tokens:
                given[b] = self.default_chunk_tokens(len(prompt))
        return given

    @property
    def kv_budget(self) -> KvBudget:
        """The decode regions' room for a batch's KV cache and scratch (`admit`)."""
        rows, cols = self.plan.decode.grid
        sb = self.device.storage_bytes
        step_bytes, score_bytes = decode_scratch_bytes(self.config, rows, cols, sb)
        heads = heads_for(self.config, cols)
        token_bytes = stored_bytes(
            self.plan.storage.kv,
            reduced=heads.head_slots,
            other=heads.kv_per_tile,
            storage_bytes=sb,
        )
        slot_bytes = 2 * token_bytes  # K and V of one layer, as stored
        return KvBudget(
            rows=rows,
            slots=self.plan.kv_slots,
            slot_bytes=tuple(len(r.layers) * slot_bytes for r in self.plan.decode.regions),
            score_bytes=score_bytes,
            step_bytes=step_bytes,
        )

    def admits(self, prompt_lens: Sequence[int], context_tokens: Sequence[int]) -> bool:
        """Whether the KV cache holds a batch of these prompts growing to these contexts."""
        rows = self.plan.decode.grid[0]
        needs = [
            slots_needed(self.kv_policy, rows, p, c)
            for p, c in zip(prompt_lens, context_tokens, strict=True)
        ]
        return self.kv_budget.fits(needs)

    def _admit(self, lengths: list[int], context_tokens: Sequence[int] | None) -> list[int]:
        """Each sequence's share of the slots per row (KvCacheFullError when the batch's KV
        does not fit; under a sliding window a sequence needs at most the window)."""
        budget, policy, window = self.kv_budget, self.kv_policy, self.config.sliding_window
        if context_tokens is None:  # an equal share each, or what its prompt needs if more
            share = budget.equal_share(len(lengths))
            shares = [
                max(share, slots_needed(policy, budget.rows, n, n, window=window)) for n in lengths
            ]
            if budget.fits(shares):
                return shares
            context_tokens = [budget.rows * s for s in shares]  # admit says what does not fit
        if len(context_tokens) != len(lengths):
            raise WaferError(f"{len(lengths)} prompts but {len(context_tokens)} context sizes")
        contexts = [int(c) for c in context_tokens]
        return admit(policy, budget, lengths, contexts, window=window)

    def _check_prompt(self, length: int) -> None:
        if not self.evicts() and length > self.kv_capacity_tokens():
            raise KvCacheFullError(
                f"the prompt has {length} tokens but the KV cache holds at most "
                f"{self.kv_capacity_tokens()} ({self.kv_policy.value} policy); use a larger "
                "decode grid, more SRAM or a shorter prompt"
            )

    def _prefill_one(self, ids: list[int], ledger: Ledger, chunk_tokens: int | None) -> StepOutput:
        """One prompt through the prefill plan (in chunks of `chunk_tokens` when given); its
        k and v stay on the prefill grid."""
        length = len(ids)
        if chunk_tokens is not None:
            x, last, self._prefill_kv = prefill_chunks(self, ids, ledger, chunk_tokens)
            return self._head_prefill(x, last.length, ledger, position=length)
        state = self.prefill_state
        first = state.meshes[0]
        first.charge_host_io(ledger, "host.prompt_in", length)
        x = vocab.embed(
            state, ids, ledger, config=self.config, device=self.device, tokens_axis=Axis.Y
        )
        layer_ledger = Ledger()
        for r, region in enumerate(state.regions.regions):
            mesh = state.meshes[r]
            if r:
                x = self._enter_region(state, r, x, ledger)
            heads = heads_for(self.config, mesh.cols)
            charge_rope_tables(mesh, heads, x.tile_shape[0], ledger)
            cos, sin = rope_tables(
                mesh, heads, self.inv_freq, torch.arange(length), tokens_axis=Axis.Y
            )
            ctx = LayerContext(
                config=self.config,
                heads=heads,
                cos=cos,
                sin=sin,
                length=length,
                head_chunk=self.plan.attention_chunk(length),
                streamed=self.plan.attention_streamed(length),
            )
            walked = region.layers
            if self.mode is Mode.ESTIMATE:  # walk one layer, after the others' kept k/v (the
                walked = region.layers[-1:]  # region's SRAM peak); they cost the same
                for i in region.layers[:-1]:
                    k, v = kept_kv(mesh, heads, length, i)
                    self._prefill_kv[i] = [KeyChunk(k=k, v=v, start=0, length=length)]
            for j, i in enumerate(walked):
                target = layer_ledger if (r, j) == (0, 0) else _Uncharged()
                with target.scope("layer"):
                    x, k, v = prefill_layer(mesh, state.layers[i], x, ctx, target)
                self._prefill_kv[i] = [KeyChunk(k=k, v=v, start=0, length=length)]
            cos.free()
            sin.free()
        ledger.extend(layer_ledger, count=self.config.num_hidden_layers)
        per_layer_hops(self.plan, x, ledger)
        return self._head_prefill(x, length, ledger, position=length)

    def _enter_region(self, state: PhaseState, r: int, x: DistTensor, ledger: Ledger) -> DistTensor:
        """The residual stream from region r-1 to region r: an on-wafer hop, or the
        inter-system link where region r starts the next device."""
        regions = state.regions.regions
        if regions[r].device != regions[r - 1].device:
            return system_link_hop(self.device, x, state.meshes[r], ledger, op=f"hop{r}")
        return hop(self.device, x, state.meshes[r], ledger, op=f"hop{r}")

    def _head_prefill(
        self, x: DistTensor, length: int, ledger: Ledger, *, position: int
    ) -> StepOutput:
        """Final norm, LM head and argmax for the last of x's `length` positions (`[D_x, V_y]`
        placement); `position`: the prompt's length."""
        state = self.prefill_state
        mesh = x.mesh
        lt = x.tile_shape[0]
        row, i = divmod(length - 1, lt)
        last = x.data[:, :, i, :]  # (R, C, Dt): the last token's row, valid on `row`
        with ledger.scope("head"):
            last = broadcast(mesh, last, axis=Axis.Y, root=row, ledger=ledger, op="last_token")
            h = mesh.register(
                last.contiguous(), Layout((self.config.hidden_size,), x_dim=0), "last_hidden"
            )
            x.free()
            logits = vocab.lm_head(state, h, ledger, config=self.config, axis=Axis.X)
        (out,) = self._select(
            logits,
            ledger,
            positions=[position],
            labels=["the prefill (generated token 1)"],
            algorithm=ReduceAlgorithm.RING,
        )
        return out

    # ---- the hand-off ------------------------------------------------------------------------
    def _park(self, b: int) -> None:
        """Sequence b's prompt KV (just prefilled) into its decode rows, rebalanced."""
        seq = self._seqs[b]
        counts = self.handoff_counts(seq.prompt_len, slots=seq.slots)
        pheads = heads_for(self.config, self.plan.prefill.grid[1])
        for store in self._stores:
            for i in store.layers:
                if self.mode is Mode.FUNCTIONAL:
                    chunks = self._prefill_kv[i]
                    k = torch.cat([_logical(c.k, pheads) for c in chunks])
                    v = torch.cat([_logical(c.v, pheads) for c in chunks])
                    store.fill(i, k, v, counts, seq=b)
        self._free_prefill_kv()
        seq.counts = counts

    @torch.inference_mode()
    def transition(self, ledger: Ledger) -> None:
        """Re-lay every sequence's KV cache onto the decode grid (rows rebalanced) and, with one
        resident layout, the weights to the decode plan and back for the next request."""
        if not self._prefill_kv:
            raise WaferError("transition() needs a prefill first")
        self._park(len(self._seqs) - 1)
        seqs = [seq for seq in self._seqs if seq.counts]
        chunks = [seq.chunk_tokens for seq in seqs]
        self.charge_transition([s.counts for s in seqs], ledger, chunk_tokens=chunks)  # type: ignore[misc]

    def handoff_counts(self, prompt_len: int, *, slots: int | None = None) -> RowCounts:
        """Cached positions per decode row after a prompt of `prompt_len` (rows balanced), in
        a share of `slots` per row (default: the whole cache); an evicting cache keeps the last
        window."""
        rows, window = self.plan.decode.grid[0], self.config.sliding_window
        share = self.plan.kv_slots if slots is None else slots
        return RowCounts.balanced(self.kv_policy, rows, share, prompt_len, window)

    def _ensure_stores(self, slots: int) -> None:
        """Every decode region's store, its SRAM sized for `slots` per row (the batch's)."""
        if self._stores and self._stores[0].slots == slots:
            return
        self._reset_stores()
        dstate = self.decode_state
        self._stores = [
            KvStore(
                mesh,
                heads_for(self.config, mesh.cols),
                layers=region.layers,
                slots=slots,
                stored=self.plan.storage.kv,
            )
            for mesh, region in zip(dstate.meshes, dstate.regions.regions, strict=True)
        ]

    def _reset_stores(self) -> None:
        for store in self._stores:
            store.free()
        self._stores = []

    @functools.cached_property
    def _weights_relayout(self):  # the mesh's Charge (only mesh/ names the pricing types)
        """The weights' re-layout between the plans, every device's at once (the slowest
        counts): it depends on the plans only, so every request on this model shares it."""
        weight_bytes = bytes_per_element(self.plan.storage.weights, self.device.storage_bytes)
        devices = range(device_count(self.plan.decode))
        moves = [weight_moves(self.plan, on_device=d) for d in devices]
        return concurrent_relayout_charge(self.device, moves, bytes_per_element=weight_bytes)

    def charge_transition(
        self,
        counts: Sequence[RowCounts],
        ledger: Ledger,
        *,
        chunk_tokens: Sequence[int | None] | None = None,
    ) -> None:
        """The re-layouts of `transition` for sequences holding `counts` (plans and counts
        only), each prefilled in chunks of `chunk_tokens[b]` (None: one piece): each
        sequence's KV cache, and the weights once for the batch."""
        sb, storage = self.device.storage_bytes, self.plan.storage
        chunks: list[int | None] = [None] * len(counts)
        if chunk_tokens is not None:
            chunks = list(chunk_tokens)
        # each device re-lays its own layers, all devices at once: the slowest one counts
        devices = range(device_count(self.plan.decode))
        with ledger.scope("transition"):
            kv_bytes = bytes_per_element(storage.kv, sb)
            for c, chunk in zip(counts, chunks, strict=True):
                quantise = kv_quantise_cycles(self.plan, c)
                charge_inline_compute(ledger, "kv_quantise", cycles=quantise)
                kv = [kv_moves(self.plan, c, on_device=d, chunk_tokens=chunk) for d in devices]
                kv_charge = concurrent_relayout_charge(self.device, kv, bytes_per_element=kv_bytes)
                ledger.charge("kv", kv_charge)
            if self.plan.resident is ResidentLayouts.ONE:
                # the way back (readying the next request) is the mirror image: same cost
                weights = self._weights_relayout
                ledger.charge("weights_to_decode", weights)
                ledger.charge("weights_to_prefill", weights)

    # ---- decode ------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode_step(self, token_id: int, ledger: Ledger) -> StepOutput:
        """Feed one token (the previous step's choice) and select the next on the mesh."""
        return self.decode_batch([token_id], ledger)[0]

    @torch.inference_mode()
    def decode_batch(
        self, token_ids: Sequence[int], ledger: Ledger, *, seqs: Sequence[int] | None = None
    ) -> list[StepOutput]:
        """One decode step of the sequences `seqs` (default: every sequence of the batch, in
        order), each fed its token; one StepOutput per sequence. The GEMVs carry the B vectors
        together; each sequence attends to its own KV rows."""
        if self._prefill_kv:
            self.transition(ledger)
        if not self._seqs:
            raise WaferError("decode_step() needs a prefill first")
        index = list(range(len(self._seqs))) if seqs is None else [int(b) for b in seqs]
        if len(index) != len(token_ids) or not index:
            raise WaferError(f"{len(token_ids)} tokens for {len(index)} sequences")
        if len(set(index)) != len(index) or not all(0 <= b < len(self._seqs) for b in index):
            raise WaferError(f"sequences {index} must be distinct indices of the batch")
        ids = self._check_ids(token_ids)
        counts = [self._seqs[b].counts for b in index]
        assert all(c is not None for c in counts)
        return self._decode(ids, index, counts, ledger)  # type: ignore[arg-type]

    def retire(self, b: int) -> None:
        """Sequence b finished: forget its tiles (its share of the slots stays reserved)."""
        for store in self._stores:
            store.drop(b)

    # ---- hooks of the estimate layer (estimate mode; `waferllm.estimate.cost`) ---------------
    def decode_records(
        self, counts: Sequence[RowCounts], *, walk_layers: bool = True
    ) -> DecodeRecords:
        """Estimate mode: the ledgers of the decode step of B sequences after `counts`
        (committed), kept apart. Without `walk_layers` the layers are not walked (their records
        are left empty: the caller holds those of an earlier walk with the same shapes)."""
        if self.mode is not Mode.ESTIMATE:
            raise WaferError("decode_records needs an estimate-mode model (weights=None)")
        self._ensure_stores(sum(c.slots for c in counts))
        records = DecodeRecords(
            before=Ledger(),
            layer=LayerLedgers(pre=Ledger(), attn=Ledger(), post=Ledger()),
            kv=Ledger(),
            after=Ledger(),
        )
        positions = [c.end for c in counts]
        seqs = list(range(len(counts)))
        x = self._decode_layers([0] * len(counts), seqs, counts, records, walk_layers=walk_layers)
        self._decode_head(x, positions, records.after, [""] * len(counts))
        return records

    def decode_attention_records(self, counts: Sequence[RowCounts]) -> Ledger:
        """Estimate mode: one layer's attention at `counts`' next step (the windows it reads),
        as `decode_layer` charges it. SRAM was checked at the widest window by a full walk."""
        self._ensure_stores(sum(c.slots for c in counts))
        mesh = self.decode_state.meshes[0]
        appends = [c.plan_append() for c in counts]
        step = self._cache_step(0, list(range(len(counts))), counts, appends, Ledger())
        return decode_attention_walk(mesh, step)

    def kv_shift_records(self, append: Append, counts: RowCounts) -> Ledger:
        """Estimate mode: one layer's one-hop KV shift for `append` after `counts` (no data)."""
        if not self._stores:
            self._ensure_stores(counts.slots)
        shift, store = Ledger(), self._stores[0]
        tile = torch.empty(
            (*store.mesh.shape, store.heads.kv_per_tile, store.heads.head_slots), device="meta"
        )
        store.write(store.layers[0], tile, tile, append, counts, shift)
        return shift

    def ready_decode(self, *, slots: int, batch: int, hold_logits: bool) -> None:
        """Estimate mode: the decode regions as a request's steps find them, whatever earlier
        requests left: the KV cache of `slots` per row, and the previous step's logits [B, V]
        when `hold_logits` (from the second step on, kept for `fetch_logits` until the next
        step selects)."""
        self._ensure_stores(slots)
        state = self.decode_state
        held = self._logits
        same = held is not None and held.mesh is state.head_mesh and held.layout.shape[0] == batch
        if hold_logits and same:
            return
        self._drop_logits()
        if not hold_logits:
            return
        mesh, vocab = state.head_mesh, self.config.vocab_size
        layout = Layout((batch, vocab), x_dim=1)  # the LM head's output: V split along X
        self._logits = mesh.register(
            torch.empty((*mesh.shape, *layout.tile_shape(*mesh.shape)), device="meta"),
            layout,
            "logits",
        )

    @property
    def holds_decode_logits(self) -> bool:
        """Whether a decode step's logits are on the decode head's mesh (they count in the
        next step's SRAM)."""
        return self._logits is not None and self._logits.mesh is self.decode_state.head_mesh

    # ---- one decode step -----------------------------------------------------------------------
    def _decode(
        self, token_ids: list[int], seqs: list[int], counts: list[RowCounts], ledger: Ledger
    ) -> list[StepOutput]:
        """One decode step: the first layer walked and priced, its records times the layers."""
        positions = [c.end for c in counts]
        layer, kv = Ledger(), Ledger()
        records = DecodeRecords(
            before=ledger, layer=LayerLedgers.single(layer), kv=kv, after=ledger
        )
        x = self._decode_layers(token_ids, seqs, counts, records, walk_layers=True)
        layers = self.config.num_hidden_layers
        ledger.extend(layer, count=layers)
        ledger.extend(kv, count=layers)
        labels = [
            f"position {p} (generated token {p - self._seqs[b].prompt_len + 2})"
            for b, p in zip(seqs, positions, strict=True)
        ]
        return self._decode_head(x, positions, ledger, labels)

    def _decode_layers(
        self,
        token_ids: list[int],
        seqs: list[int],
        counts: Sequence[RowCounts],
        records: DecodeRecords,
        *,
        walk_layers: bool,
    ) -> DistTensor:
        """The batch's tokens through every region (commits `counts`); `records.before` gets
        what precedes the layers, `records.layer`/`records.kv` the first layer's records."""
        state = self.decode_state
        appends = [c.plan_append() for c in counts]
        before = records.before
        state.meshes[0].charge_host_io(before, "host.token_in", len(token_ids))
        x = vocab.embed(
            state, token_ids, before, config=self.config, device=self.device, tokens_axis=None
        )
        for r in range(len(state.regions.regions)):
            if r:
                x = self._enter_region(state, r, x, before)
            mesh = state.meshes[r]
            charge_rope_tables(mesh, heads_for(self.config, mesh.cols), len(seqs), before)
            if walk_layers:
                if r == 0:
                    walk, kv = records.layer, records.kv
                else:
                    walk, kv = LayerLedgers.single(_Uncharged()), _Uncharged()
                step = self._cache_step(r, seqs, counts, appends, kv)
                x = self._walk_region(r, x, step, walk)
        per_layer_hops(self.plan, x, before)
        for c, append in zip(counts, appends, strict=True):
            c.commit(append)
        return x

    def _cache_step(
        self,
        r: int,
        seqs: list[int],
        counts: Sequence[RowCounts],
        appends: list[Append],
        kv_ledger: Ledger,
    ) -> CacheStep:
        mesh = self.decode_state.meshes[r]
        return CacheStep(
            store=self._stores[r],
            seqs=tuple(seqs),
            counts=tuple(counts),
            appends=tuple(appends),
            slot_mask=decode_slot_mask(mesh, counts, appends, self.config.sliding_window),
            kv_ledger=kv_ledger,
        )

    def _decode_head(
        self, x: DistTensor, positions: list[int], ledger: Ledger, labels: list[str]
    ) -> list[StepOutput]:
        with ledger.scope("head"):
            logits = vocab.lm_head(self.decode_state, x, ledger, config=self.config, axis=Axis.Y)
        return self._select(logits, ledger, positions=[p + 1 for p in positions], labels=labels)

    def _walk_region(
        self, r: int, x: DistTensor, step: CacheStep, walk: LayerLedgers
    ) -> DistTensor:
        """Region r's layers on the batch's tokens (estimate mode: its first layer only, the
        others being identical in cost); `walk` gets the first layer's records, `step.kv_ledger`
        its KV shifts."""
        state = self.decode_state
        mesh, region = state.meshes[r], state.regions.regions[r]
        heads = heads_for(self.config, mesh.cols)
        positions = torch.tensor([c.end for c in step.counts])
        cos, sin = rope_tables(mesh, heads, self.inv_freq, positions, tokens_axis=None)
        ctx = LayerContext(
            config=self.config,
            heads=heads,
            cos=cos,
            sin=sin,
            length=len(step.counts),
            head_chunk=heads.n_rep,
        )
        for j, i in enumerate(region.layers):
            if j and self.mode is Mode.ESTIMATE:
                break  # identical cost; the other layers' tensors are already placed
            if j == 1:
                step = dataclasses.replace(step, kv_ledger=_Uncharged())
            target = walk if j == 0 else LayerLedgers.single(_Uncharged())
            with target.scope("layer"):
                x = decode_layer(mesh, state.layers[i], x, ctx, i, step, target)
        cos.free()
        sin.free()
        return x

    # ---- vocabulary ends ---------------------------------------------------------------------
    def _select(
        self,
        logits: DistTensor,
        ledger: Ledger,
        *,
        positions: list[int],
        labels: list[str],
        algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    ) -> list[StepOutput]:
        """The on-mesh argmax of logits [V] (prefill) or [B, V] (decode), one StepOutput per
        row; `labels` name each row's step in errors."""
        if self.mode is Mode.FUNCTIONAL:
            _check_finite(logits, labels)
        tokens = vocab.argmax_tokens(logits, ledger, algorithm=algorithm)
        self._drop_logits()
        self._logits = logits  # kept on the mesh until the next call, for fetch_logits
        return [
            StepOutput(token=t, position=p, logits=logits, row=b)
            for b, (t, p) in enumerate(zip(tokens, positions, strict=True))
        ]

    # ---- helpers -----------------------------------------------------------------------------
    def _check_ids(self, token_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in token_ids]
        if not ids:
            raise WaferError("the prompt is empty: give at least one token")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise WaferError(
                f"token id {bad[0]} is not in the vocabulary [0, {self.config.vocab_size})"
            )
        return ids

    def _drop_logits(self) -> None:
        if self._logits is not None:
            self._logits.free()
            self._logits = None

    def _reset(self) -> None:
        self._drop_logits()
        self._reset_stores()
        self._free_prefill_kv()
        self._seqs = []

    def _free_prefill_kv(self) -> None:
        for chunks in self._prefill_kv.values():
            for chunk in chunks:
                chunk.k.free()
                chunk.v.free()
        self._prefill_kv = {}

    def routes_per_core(self) -> dict[str, int]:
        """The largest route count configured on any core, per phase (after a call)."""
        return {
            "prefill": max(m.routes.routes_per_core for m in self.prefill_state.all_meshes),
            "decode": max(m.routes.routes_per_core for m in self.decode_state.all_meshes),
        }

    def peak_sram_bytes_per_core(self) -> int:
        meshes = [*self.prefill_state.all_meshes, *self.decode_state.all_meshes]
        return max(m.sram.peak_bytes for m in meshes)


def _check_finite(logits: DistTensor, labels: list[str]) -> None:
    """Stop with a clear error when the logits behind the next token hold NaN or inf (the
    argmax of such logits is meaningless); float16 compute names the likely cause."""
    values = logits.mesh.gather(logits)  # host copy, uncharged: a check, not a transfer
    finite = torch.isfinite(values).reshape(len(labels), -1).all(dim=1)
    if bool(finite.all()):
        return
    step = labels[int((~finite).nonzero()[0, 0])]
    dtype = logits.mesh.compute_dtype
    cause = (
        f"{dtype} overflow: values beyond the float16 range (+-65504); use dtype float32"
        if dtype in (torch.float16, torch.bfloat16)
        else "check the checkpoint's weights for NaN, inf or huge values"
    )
    raise NonFiniteError(f"the logits of {step} hold NaN or inf; {cause}")


def _logical(t: DistTensor, heads) -> torch.Tensor:
    """Prefill k or v [L_y, (C*G*H)_x] -> [L, Hkv*hd] in the checkpoint's feature order."""
    joined = t.mesh.gather(t)  # [L, C*G*H] in the heads' slot order
    index = heads.kv_index()
    out = joined.new_zeros(joined.shape[0], int(index.max()) + 1)
    real = np.flatnonzero(index >= 0)
    out[:, torch.as_tensor(index[real])] = joined[:, torch.as_tensor(real)]
    return out
