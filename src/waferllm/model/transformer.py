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
from waferllm.mesh.storage import bytes_per_element
from waferllm.mesh.system_link import system_link_hop
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mode
from waferllm.model import vocab
from waferllm.model.chunked import chunk_candidates, default_chunk_tokens, prefill_chunks
from waferllm.model.config import ModelConfig, rope_inv_freq
from waferllm.model.kv_cache import (
    Append,
    KvCacheFullError,
    KvPolicy,
    KvStore,
    RowCounts,
    evicts,
    kv_capacity_tokens,
    max_new_tokens,
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
from waferllm.model.plan import ModelPlan, PhaseState, build_phase, plan_model
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
    logits: DistTensor

    def fetch_logits(self, ledger: Ledger) -> torch.Tensor:
        return self.logits.mesh.gather(self.logits, ledger=ledger).float()


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
        self._counts: RowCounts | None = None
        self._stores: list[KvStore] = []
        self._prefill_kv: dict[int, list[KeyChunk]] = {}  # every layer's k/v, per chunk
        self._chunk_tokens: int | None = None  # the last prefill's chunk (None: one piece)
        self._prompt_len = 0
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

    # ---- prefill -----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self, token_ids: Sequence[int], ledger: Ledger, *, chunk_tokens: int | None = None
    ) -> StepOutput:
        """Run the prompt with the prefill plan; the first generated token is selected on the
        mesh. Starts a new request (the previous one's cache is dropped). A prompt longer than
        the plan holds at once runs in chunks (`chunked.py`) of `chunk_tokens` (default: the
        fewest equal chunks that fit); `chunk_tokens` forces chunks on a shorter prompt."""
        ids = self._check_ids(token_ids)
        length = len(ids)
        if not self.evicts() and length > self.kv_capacity_tokens():
            raise KvCacheFullError(
                f"the prompt has {length} tokens but the KV cache holds at most "
                f"{self.kv_capacity_tokens()} ({self.kv_policy.value} policy); use a larger "
                "decode grid, more SRAM or a shorter prompt"
            )
        if chunk_tokens is None and length > self.plan.max_prompt_tokens:
            chunk_tokens = self.default_chunk_tokens(length)
        self._reset()
        if chunk_tokens is not None:
            x, last, self._prefill_kv = prefill_chunks(self, ids, ledger, chunk_tokens)
            self._chunk_tokens = chunk_tokens
            self._prompt_len = length
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
            cos, sin = rope_tables(mesh, heads, self.inv_freq, torch.arange(length), per_token=True)
            ctx = LayerContext(config=self.config, heads=heads, cos=cos, sin=sin, length=length)
            for j, i in enumerate(region.layers):
                target = layer_ledger if (r, j) == (0, 0) else _Uncharged()
                if j and self.mode is Mode.ESTIMATE:
                    (first_kv,) = self._prefill_kv[region.layers[0]]
                    self._prefill_kv[i] = [
                        dataclasses.replace(
                            first_kv,
                            k=_like(first_kv.k, f"prefill.k{i}"),
                            v=_like(first_kv.v, f"prefill.v{i}"),
                        )
                    ]
                    continue
                with target.scope("layer"):
                    x, k, v = prefill_layer(mesh, state.layers[i], x, ctx, target)
                self._prefill_kv[i] = [KeyChunk(k=k, v=v, start=0, length=length)]
            cos.free()
            sin.free()
        ledger.extend(layer_ledger, count=self.config.num_hidden_layers)
        per_layer_hops(self.plan, x, ledger)
        self._prompt_len = length
        return self._head_prefill(x, length, ledger, position=length)

    def _enter_region(self, state: PhaseState, r: int, x: DistTensor, ledger: Ledger) -> DistTensor:
        """The residual stream from region r-1 to region r: an on-wafer hop, or the
        inter-system link where region r starts the next device."""
        regions = state.regions.regions
        if regions[r].device != regions[r - 1].device:
            return system_link_hop(self.device, x, state.meshes[r], ledger, op=f"hop{r}")
        return hop(self.device, x, state.meshes[r], ledger, op=f"hop{r}")

    def default_chunk_tokens(self, prompt_len: int) -> int:
        """The chunk a too-long prompt runs in: the fewest equal chunks that fit the plan."""
        return default_chunk_tokens(self.plan, prompt_len)

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
        return self._select(logits, ledger, position=position, algorithm=ReduceAlgorithm.RING)

    # ---- the hand-off ------------------------------------------------------------------------
    @torch.inference_mode()
    def transition(self, ledger: Ledger) -> None:
        """Re-lay the prompt's KV cache onto the decode grid (rows rebalanced) and, with one
        resident layout, the weights to the decode plan and back for the next request."""
        if not self._prefill_kv:
            raise WaferError("transition() needs a prefill first")
        counts = self.handoff_counts(self._prompt_len)
        self._reset_stores()
        self._ensure_stores()
        pheads = heads_for(self.config, self.plan.prefill.grid[1])
        for store in self._stores:
            for i in store.layers:
                chunks = self._prefill_kv[i]
                if self.mode is Mode.FUNCTIONAL:
                    k = torch.cat([_logical(c.k, pheads) for c in chunks])
                    v = torch.cat([_logical(c.v, pheads) for c in chunks])
                    store.fill(i, k, v, counts)
        self.charge_transition(counts, ledger, chunk_tokens=self._chunk_tokens)
        self._free_prefill_kv()
        self._counts = counts

    def handoff_counts(self, prompt_len: int) -> RowCounts:
        """Cached positions per decode row after a prompt of `prompt_len` (rows balanced)."""
        rows, window = self.plan.decode.grid[0], self.config.sliding_window
        return RowCounts.balanced(self.kv_policy, rows, self.plan.kv_slots, prompt_len, window)

    def _ensure_stores(self) -> None:
        if self._stores:
            return
        dstate = self.decode_state
        self._stores = [
            KvStore(
                mesh,
                heads_for(self.config, mesh.cols),
                layers=region.layers,
                slots=self.plan.kv_slots,
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
        self, counts: RowCounts, ledger: Ledger, *, chunk_tokens: int | None = None
    ) -> None:
        """The re-layouts of `transition` for a cache holding `counts` after a prefill in
        chunks of `chunk_tokens` (None: one piece); plans and counts only."""
        sb, storage = self.device.storage_bytes, self.plan.storage
        # each device re-lays its own layers, all devices at once: the slowest one counts
        devices = range(device_count(self.plan.decode))
        with ledger.scope("transition"):
            quantise = kv_quantise_cycles(self.plan, counts)
            charge_inline_compute(ledger, "kv_quantise", cycles=quantise)
            kv = [
                kv_moves(self.plan, counts, on_device=d, chunk_tokens=chunk_tokens) for d in devices
            ]
            kv_bytes = bytes_per_element(storage.kv, sb)
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
        if self._counts is None:
            if not self._prefill_kv:
                raise WaferError("decode_step() needs a prefill first")
            self.transition(ledger)
        self._check_ids([token_id])
        assert self._counts is not None
        return self._decode(token_id, self._counts, ledger)

    # ---- hooks of the estimate layer (estimate mode; `waferllm.estimate.cost`) ---------------
    def decode_records(self, counts: RowCounts, *, walk_layers: bool = True) -> DecodeRecords:
        """Estimate mode: the ledgers of the decode step after `counts` (committed), kept apart.
        Without `walk_layers` the layers are not walked (their records are left empty: the
        caller holds those of an earlier walk with the same window and shift)."""
        if self.mode is not Mode.ESTIMATE:
            raise WaferError("decode_records needs an estimate-mode model (weights=None)")
        self._ensure_stores()
        records = DecodeRecords(
            before=Ledger(),
            layer=LayerLedgers(pre=Ledger(), attn=Ledger(), post=Ledger()),
            kv=Ledger(),
            after=Ledger(),
        )
        position = counts.end
        x = self._decode_layers(0, counts, records, walk_layers=walk_layers)
        self._decode_head(x, position, records.after)
        return records

    def decode_attention_records(self, counts: RowCounts) -> Ledger:
        """Estimate mode: one layer's attention at `counts`' next step (the window it reads),
        as `decode_layer` charges it. SRAM was checked at the widest window by a full walk;
        this walk's q is a placeholder of the real q's tile."""
        self._ensure_stores()
        mesh = self.decode_state.meshes[0]
        return decode_attention_walk(mesh, self._stores[0], counts, self.config)

    def kv_shift_records(self, append: Append, counts: RowCounts) -> Ledger:
        """Estimate mode: one layer's one-hop KV shift for `append` after `counts` (no data)."""
        self._ensure_stores()
        shift, store = Ledger(), self._stores[0]
        tile = torch.empty(
            (*store.mesh.shape, store.heads.kv_per_tile, store.heads.head_slots), device="meta"
        )
        store.write(store.layers[0], tile, tile, append, counts, shift)
        return shift

    def hold_previous_logits(self) -> None:
        """Estimate mode: put the previous decode step's logits on the mesh, as they are from
        the second step on (kept for `fetch_logits` until the next step selects)."""
        state = self.decode_state
        if self._logits is not None and self._logits.mesh is state.meshes[-1]:
            return
        self._drop_logits()
        mesh, vocab = state.meshes[-1], self.config.vocab_size
        layout = Layout((vocab,), x_dim=0)  # the LM head's output: V split along X
        self._logits = mesh.register(
            torch.empty((*mesh.shape, *layout.tile_shape(*mesh.shape)), device="meta"),
            layout,
            "logits",
        )

    # ---- one decode step -----------------------------------------------------------------------
    def _decode(self, token_id: int, counts: RowCounts, ledger: Ledger) -> StepOutput:
        """One decode step: the first layer walked and priced, its records times the layers."""
        position = counts.end
        layer, kv = Ledger(), Ledger()
        records = DecodeRecords(
            before=ledger, layer=LayerLedgers.single(layer), kv=kv, after=ledger
        )
        x = self._decode_layers(token_id, counts, records, walk_layers=True)
        layers = self.config.num_hidden_layers
        ledger.extend(layer, count=layers)
        ledger.extend(kv, count=layers)
        return self._decode_head(x, position, ledger)

    def _decode_layers(
        self, token_id: int, counts: RowCounts, records: DecodeRecords, *, walk_layers: bool
    ) -> DistTensor:
        """The token through every region (commits `counts`); `records.before` gets what
        precedes the layers, `records.layer`/`records.kv` the first layer's records."""
        state = self.decode_state
        append = counts.plan_append()
        before = records.before
        state.meshes[0].charge_host_io(before, "host.token_in", 1)
        x = vocab.embed(
            state, [token_id], before, config=self.config, device=self.device, tokens_axis=None
        )
        for r in range(len(state.regions.regions)):
            if r:
                x = self._enter_region(state, r, x, before)
            mesh = state.meshes[r]
            charge_rope_tables(mesh, heads_for(self.config, mesh.cols), 1, before)
            if walk_layers:
                if r == 0:
                    walk, kv = records.layer, records.kv
                else:
                    walk, kv = LayerLedgers.single(_Uncharged()), _Uncharged()
                x = self._walk_region(r, x, counts, append, walk, kv)
        per_layer_hops(self.plan, x, before)
        counts.commit(append)
        return x

    def _decode_head(self, x: DistTensor, position: int, ledger: Ledger) -> StepOutput:
        with ledger.scope("head"):
            logits = vocab.lm_head(self.decode_state, x, ledger, config=self.config, axis=Axis.Y)
        return self._select(logits, ledger, position=position + 1)

    def _walk_region(
        self,
        r: int,
        x: DistTensor,
        counts: RowCounts,
        append: Append,
        walk: LayerLedgers,
        kv_ledger: Ledger,
    ) -> DistTensor:
        """Region r's layers on the decode token (estimate mode: its first layer only, the
        others being identical in cost); `walk` gets the first layer's records, `kv_ledger`
        its KV shift."""
        state = self.decode_state
        mesh, region = state.meshes[r], state.regions.regions[r]
        position = counts.end
        heads = heads_for(self.config, mesh.cols)
        cos, sin = rope_tables(
            mesh, heads, self.inv_freq, torch.tensor([position]), per_token=False
        )
        ctx = LayerContext(config=self.config, heads=heads, cos=cos, sin=sin, length=position + 1)
        mask = decode_slot_mask(mesh, counts, append, position, self.config.sliding_window)
        for j, i in enumerate(region.layers):
            if j and self.mode is Mode.ESTIMATE:
                break  # identical cost; the other layers' tensors are already placed
            step = CacheStep(
                store=self._stores[r],
                counts=counts,
                append=append,
                slot_mask=mask,
                kv_ledger=kv_ledger if j == 0 else _Uncharged(),
            )
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
        position: int,
        algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    ) -> StepOutput:
        if self.mode is Mode.FUNCTIONAL:
            self._check_finite(logits, position)
        token = vocab.argmax_token(logits, ledger, algorithm=algorithm)
        self._drop_logits()
        self._logits = logits  # kept on the mesh until the next call, for fetch_logits
        return StepOutput(token=token, position=position, logits=logits)

    # ---- helpers -----------------------------------------------------------------------------
    def _check_finite(self, logits: DistTensor, position: int) -> None:
        """Stop with a clear error when the logits behind the next token hold NaN or inf (the
        argmax of such logits is meaningless); float16 compute names the likely cause."""
        values = logits.mesh.gather(logits)  # host copy, uncharged: a check, not a transfer
        if bool(torch.isfinite(values).all()):
            return
        step = "the prefill" if position == self._prompt_len else f"position {position - 1}"
        dtype = logits.mesh.compute_dtype
        cause = (
            f"{dtype} overflow: values beyond the float16 range (+-65504); use dtype float32"
            if dtype in (torch.float16, torch.bfloat16)
            else "check the checkpoint's weights for NaN, inf or huge values"
        )
        raise NonFiniteError(
            f"the logits of {step} (generated token {position - self._prompt_len + 1}) hold "
            f"NaN or inf; {cause}"
        )

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
        self._counts = None

    def _free_prefill_kv(self) -> None:
        for chunks in self._prefill_kv.values():
            for chunk in chunks:
                chunk.k.free()
                chunk.v.free()
        self._prefill_kv = {}
        self._chunk_tokens = None

    def routes_per_core(self) -> dict[str, int]:
        """The largest route count configured on any core, per phase (after a call)."""
        return {
            "prefill": max(m.routes.routes_per_core for m in self.prefill_state.meshes),
            "decode": max(m.routes.routes_per_core for m in self.decode_state.meshes),
        }

    def peak_sram_bytes_per_core(self) -> int:
        meshes = [*self.prefill_state.meshes, *self.decode_state.meshes]
        return max(m.sram.peak_bytes for m in meshes)


def _like(t: DistTensor, name: str) -> DistTensor:
    """Another tensor with t's tiles and layout (estimate mode: meta, SRAM charged)."""
    return t.mesh.register(torch.empty_like(t.data), t.layout, name)


def _logical(t: DistTensor, heads) -> torch.Tensor:
    """Prefill k or v [L_y, (C*G*H)_x] -> [L, Hkv*hd] in the checkpoint's feature order."""
    joined = t.mesh.gather(t)  # [L, C*G*H] in the heads' slot order
    index = heads.kv_index()
    out = joined.new_zeros(joined.shape[0], int(index.max()) + 1)
    real = np.flatnonzero(index >= 0)
    out[:, torch.as_tensor(index[real])] = joined[:, torch.as_tensor(real)]
    return out
