"""`MeshTransformer`: a Llama-family model resident on the virtual wafer (SPEC.md §5, §6).

`prefill(token_ids, ledger)` runs the prompt with the prefill plan (in chunks against the cached
keys when it is longer than the plan holds at once: `chunked.py`) and selects the first token
on the mesh; `transition(ledger)` hands the KV cache (and, with one resident layout, the
weights) to the decode plan; `decode_step(token_id, ledger)` feeds one token back. Each returns
a `StepOutput`: the on-mesh argmax and a handle that gathers the logits to the host, charged
as host I/O. With `weights=None` the same code runs in estimate mode on meta tensors. Identical
layers are walked once and their ledger extended by the layer count; the estimate layer prices
decode steps without tokens through the `decode_records` hooks (`waferllm.estimate.decode_walks`).
This class keeps the batch in flight (admission, KV stores, hand-off) and selects tokens; the
walks are in `prefill.py`, `chunked.py` and `decode.py`, the result types in `steps.py`, the
generation loop in `engine`, the vocabulary ends in `vocab.py`.
Legend: L prompt tokens, D model dim, V vocab; R x C the grid of a phase.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.kernels.attention_chunked import KeyChunk
from waferllm.mesh.comm import ReduceAlgorithm
from waferllm.mesh.cost import Ledger
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mode
from waferllm.model import vocab
from waferllm.model.admission import Admission
from waferllm.model.chunked import prefill_chunks
from waferllm.model.config import ModelConfig, rope_inv_freq
from waferllm.model.decode import (
    attention_cost,
    attention_records,
    decode_layers,
    decode_logits,
    decode_stores,
    held_logits,
    park_prompt,
    shift_records,
)
from waferllm.model.kv_cache import Append, KvPolicy, RowCounts
from waferllm.model.kv_store import KvStore
from waferllm.model.layers import LayerLedgers
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts, heads_for
from waferllm.model.plan import ModelPlan, PhaseState, build_phase, plan_model
from waferllm.model.prefill import prefill_logits, prefill_walk
from waferllm.model.quant import UNCOMPRESSED, Storage, quantise_weights
from waferllm.model.steps import DecodeRecords, SeqState, StepOutput, check_finite
from waferllm.model.transfers import charge_transition, weights_relayout
from waferllm.model.weights import ModelWeights


class MeshTransformer(Admission):
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
    `walk_every_region=False` (estimate mode): walk only the first region's priced layer, not
    the later regions' unpriced ones (which are walked for their SRAM peaks and routes): the
    same ledgers, for callers that ask only the time (the grid search's candidates).
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
        walk_every_region: bool = True,
    ) -> None:
        self.config = config
        self.mode = Mode.FUNCTIONAL if weights is not None else Mode.ESTIMATE
        if not walk_every_region and self.mode is Mode.FUNCTIONAL:
            raise WaferError("walk_every_region=False is for estimate-mode models (weights=None)")
        self.walk_every_region = walk_every_region
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
        self.decode_state: PhaseState = build_phase(self.plan, Phase.DECODE, weights, mesh_args)
        self.prefill_state: PhaseState = build_phase(
            self.plan, Phase.PREFILL, weights, mesh_args, twin=self.decode_state
        )
        self.inv_freq = rope_inv_freq(config)
        self._seqs: list[SeqState] = []  # the batch in flight
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
        lengths = [len(p) for p in ids]
        chunks = self.prompt_chunks(lengths, chunk_tokens)
        shares = self.kv_shares(lengths, context_tokens)
        self._reset()
        self._ensure_stores(sum(shares))
        outputs = []
        for b, (prompt, ledger) in enumerate(zip(ids, ledgers, strict=True)):
            if b:
                self._park(b - 1)
            outputs.append(self._prefill_one(prompt, ledger, chunks[b]))
            self._seqs.append(
                SeqState(prompt_len=len(prompt), slots=shares[b], chunk_tokens=chunks[b])
            )
        return outputs

    def _prefill_one(self, ids: list[int], ledger: Ledger, chunk_tokens: int | None) -> StepOutput:
        """One prompt through the prefill plan (in chunks of `chunk_tokens` when given); its
        k and v stay on the prefill grid; the first token is selected on the mesh."""
        if chunk_tokens is not None:
            x, last, self._prefill_kv = prefill_chunks(self, ids, ledger, chunk_tokens)
            last_length = last.length
        else:
            x, self._prefill_kv = prefill_walk(self, ids, ledger)
            last_length = len(ids)
        logits = prefill_logits(self, x, last_length, ledger)
        (out,) = self._select(
            logits,
            ledger,
            positions=[len(ids)],
            labels=["the prefill (generated token 1)"],
            algorithm=ReduceAlgorithm.RING,
        )
        return out

    # ---- the hand-off ------------------------------------------------------------------------
    def _park(self, b: int) -> None:
        """Sequence b's prompt KV (just prefilled) into its decode rows, rebalanced."""
        seq = self._seqs[b]
        counts = self.handoff_counts(seq.prompt_len, slots=seq.slots)
        if self.mode is Mode.FUNCTIONAL:
            pheads = heads_for(self.config, self.plan.prefill.grid[1])
            park_prompt(self._stores, self._prefill_kv, counts, seq=b, prefill_heads=pheads)
        self._free_prefill_kv()
        seq.counts = counts

    @torch.inference_mode()
    def transition(self, ledger: Ledger) -> None:
        """Re-lay every sequence's KV cache onto the decode grid (rows rebalanced) and, with one
        resident layout, the weights to the decode plan and back for the next request."""
        if not self._prefill_kv:
            raise WaferError("transition() needs a prefill first")
        self._park(len(self._seqs) - 1)
        counts = [seq.counts for seq in self._seqs if seq.counts]
        chunks = [seq.chunk_tokens for seq in self._seqs if seq.counts]
        self.charge_transition(counts, ledger, chunk_tokens=chunks)

    def _ensure_stores(self, slots: int) -> None:
        """Every decode region's store, its SRAM sized for `slots` per row (the batch's)."""
        if self._stores and self._stores[0].slots == slots:
            return
        self._reset_stores()
        self._stores = decode_stores(self.plan, self.decode_state, slots)

    def _reset_stores(self) -> None:
        for store in self._stores:
            store.free()
        self._stores = []

    @functools.cached_property
    def _weights_relayout(self):  # the mesh's Charge (only mesh/ names the pricing types)
        return weights_relayout(self.plan)

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
        chunks: list[int | None] = [None] * len(counts)
        if chunk_tokens is not None:
            chunks = list(chunk_tokens)
        weights = self._weights_relayout
        charge_transition(self.plan, list(counts), chunks, ledger, weights=weights)

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

    # ---- hooks of the estimate layer (estimate mode; `waferllm.estimate.decode_walks`) -------
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
        seqs, tokens = list(range(len(counts))), [0] * len(counts)
        x = decode_layers(
            self, self._stores, tokens, seqs, counts, records, walk_layers=walk_layers
        )
        self._decode_head(x, positions, records.after, [""] * len(counts))
        return records

    def decode_attention_records(
        self, counts: Sequence[RowCounts], *, walk: bool = False
    ) -> Ledger:
        """Estimate mode: one layer's attention at `counts`' next step, in closed form or walked
        (`walk`) as `decode_layer` charges it; SRAM was checked at the widest window's walk."""
        self._ensure_stores(sum(c.slots for c in counts))
        if walk:
            return attention_records(self._stores[0], counts, self.config.sliding_window)
        return attention_cost(self._stores[0], counts)

    def kv_shift_records(self, append: Append, counts: RowCounts) -> Ledger:
        """Estimate mode: one layer's one-hop KV shift for `append` after `counts` (no data)."""
        if not self._stores:
            self._ensure_stores(counts.slots)
        return shift_records(self._stores[0], append, counts)

    def ready_decode(self, *, slots: int, batch: int, hold_logits: bool) -> None:
        """Estimate mode: the decode regions as a request's steps find them, whatever earlier
        requests left: the KV cache of `slots` per row, and the previous step's logits [B, V]
        when `hold_logits` (from the second step on, kept for `fetch_logits` until the next
        step selects)."""
        self._ensure_stores(slots)
        held, mesh = self._logits, self.decode_state.head_mesh
        same = held is not None and held.mesh is mesh and held.layout.shape[0] == batch
        if hold_logits and same:
            return
        self._drop_logits()
        if hold_logits:
            self._logits = held_logits(self.decode_state, self.config.vocab_size, batch)

    @property
    def holds_decode_logits(self) -> bool:
        """Whether a decode step's logits are on the decode head's mesh (they count in the
        next step's SRAM)."""
        return self._logits is not None and self._logits.mesh is self.decode_state.head_mesh

    @property
    def held_logits_bytes(self) -> int:
        """The bytes per core of the decode logits held on the head's mesh (0: none held)."""
        held = self._logits if self.holds_decode_logits else None
        return 0 if held is None else held.tile_bytes

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
        x = decode_layers(self, self._stores, token_ids, seqs, counts, records, walk_layers=True)
        layers = self.config.num_hidden_layers
        ledger.extend(layer, count=layers)
        ledger.extend(kv, count=layers)
        labels = [
            f"position {p} (generated token {p - self._seqs[b].prompt_len + 2})"
            for b, p in zip(seqs, positions, strict=True)
        ]
        return self._decode_head(x, positions, ledger, labels)

    def _decode_head(
        self, x: DistTensor, positions: list[int], ledger: Ledger, labels: list[str]
    ) -> list[StepOutput]:
        logits = decode_logits(self, x, ledger)
        return self._select(logits, ledger, positions=[p + 1 for p in positions], labels=labels)

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
            check_finite(logits, labels)
        tokens = vocab.argmax_tokens(logits, ledger, algorithm=algorithm)
        self._drop_logits()
        self._logits = logits  # kept on the mesh until the next call, for fetch_logits
        return [
            StepOutput(token=t, position=p, logits=logits, row=b)
            for b, (t, p) in enumerate(zip(tokens, positions, strict=True))
        ]

    # ---- helpers -----------------------------------------------------------------------------
    def _check_ids(self, token_ids: Sequence[int]) -> list[int]:
        ids = list(map(int, token_ids))
        if not ids:
            raise WaferError("the prompt is empty: give at least one token")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:  # C loops: estimates pass 4K ids
            bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
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
