"""One decode step of a batch through the decode plan, and the estimate layer's pieces of it.

`decode_layers` takes the batch's tokens through every region (each sequence attending to its
own KV rows in the regions' `KvStore`s) and commits their counts; `decode_logits` is the LM
head. `attention_records` and `shift_records` price one layer's attention or KV shift
without walking the step (`waferllm.estimate.decode_walks`); `kv_budget` is what the decode regions'
SRAM holds for a batch's KV cache, `decode_stores` those caches, `park_prompt` a prompt's k/v
into them at the hand-off. Selecting tokens and the batch's bookkeeping are `transformer.py`'s.
Legend: B sequences, D model dim, V vocab; R x C the decode grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from waferllm.kernels.attention_chunked import KeyChunk
from waferllm.kernels.attention_cost import decode_attention_cost
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mode
from waferllm.model import vocab
from waferllm.model.decode_attention import decode_attention_walk
from waferllm.model.kv_cache import Append, KvBudget, RowCounts
from waferllm.model.kv_store import KvStore
from waferllm.model.layers import (
    CacheStep,
    LayerContext,
    LayerLedgers,
    charge_rope_tables,
    decode_layer,
    decode_slot_mask,
    rope_tables,
)
from waferllm.model.placement import heads_for, kv_slot_bytes_per_core
from waferllm.model.plan import ModelPlan, PhaseState, decode_scratch_bytes
from waferllm.model.prefill import enter_region, logical_kv
from waferllm.model.steps import DecodeRecords, Uncharged
from waferllm.model.transfers import per_layer_hops

if TYPE_CHECKING:
    from waferllm.model.transformer import MeshTransformer


def decode_layers(
    model: MeshTransformer,
    stores: list[KvStore],
    token_ids: list[int],
    seqs: list[int],
    counts: Sequence[RowCounts],
    records: DecodeRecords,
    *,
    walk_layers: bool,
) -> DistTensor:
    """The batch's tokens (sequences `seqs` of the stores) through every region (commits
    `counts`); `records.before` gets what precedes the layers, `records.layer`/`records.kv`
    the first layer's records. Without `walk_layers` the layers are not walked (without the
    model's `walk_every_region`, only the first region's)."""
    state, config = model.decode_state, model.config
    appends = [c.plan_append() for c in counts]
    before = records.before
    state.meshes[0].charge_host_io(before, "host.token_in", len(token_ids))
    x = vocab.embed(state, token_ids, before, config=config, device=model.device, tokens_axis=None)
    for r in range(len(state.regions.regions)):
        if r:
            x = enter_region(model.device, state, r, x, before)
        mesh = state.meshes[r]
        charge_rope_tables(mesh, heads_for(config, mesh.cols), len(seqs), before)
        if walk_layers and (r == 0 or model.walk_every_region):
            if r == 0:
                walk, kv = records.layer, records.kv
            else:
                walk, kv = LayerLedgers.single(Uncharged()), Uncharged()
            step = cache_step(stores[r], seqs, counts, appends, kv, config.sliding_window)
            x = _walk_region(model, r, x, step, walk)
    per_layer_hops(model.plan, x, before)
    for c, append in zip(counts, appends, strict=True):
        c.commit(append)
    return x


def cache_step(
    store: KvStore,
    seqs: list[int],
    counts: Sequence[RowCounts],
    appends: list[Append],
    kv_ledger: Ledger,
    window: int | None,
) -> CacheStep:
    """This step's cache update in `store` (its mesh's mask under a sliding `window`)."""
    return CacheStep(
        store=store,
        seqs=tuple(seqs),
        counts=tuple(counts),
        appends=tuple(appends),
        slot_mask=decode_slot_mask(store.mesh, counts, appends, window),
        kv_ledger=kv_ledger,
    )


def decode_logits(model: MeshTransformer, x: DistTensor, ledger: Ledger) -> DistTensor:
    """Final norm and LM head of the batch's hidden states: logits [B, V] (V split along X)."""
    with ledger.scope("head"):
        return vocab.lm_head(model.decode_state, x, ledger, config=model.config, axis=Axis.Y)


def _walk_region(
    model: MeshTransformer, r: int, x: DistTensor, step: CacheStep, walk: LayerLedgers
) -> DistTensor:
    """Region r's layers on the batch's tokens (estimate mode: its first layer only, the
    others being identical in cost); `walk` gets the first layer's records, `step.kv_ledger`
    its KV shifts."""
    state, config = model.decode_state, model.config
    mesh, region = state.meshes[r], state.regions.regions[r]
    heads = heads_for(config, mesh.cols)
    positions = torch.tensor([c.end for c in step.counts])
    cos, sin = rope_tables(mesh, heads, model.inv_freq, positions, tokens_axis=None)
    ctx = LayerContext(
        config=config,
        heads=heads,
        cos=cos,
        sin=sin,
        length=len(step.counts),
        head_chunk=heads.n_rep,
    )
    for j, i in enumerate(region.layers):
        if j and model.mode is Mode.ESTIMATE:
            break  # identical cost; the other layers' tensors are already placed
        if j == 1:
            step = dataclasses.replace(step, kv_ledger=Uncharged())
        target = walk if j == 0 else LayerLedgers.single(Uncharged())
        with target.scope("layer"):
            x = decode_layer(mesh, state.layers[i], x, ctx, i, step, target)
    cos.free()
    sin.free()
    return x


# ---- the estimate layer's pieces (estimate mode) ------------------------------------------------
def attention_records(store: KvStore, counts: Sequence[RowCounts], window: int | None) -> Ledger:
    """One layer's attention at `counts`' next step (the windows it reads), as `decode_layer`
    charges it. SRAM was checked at the widest window by a full walk."""
    appends = [c.plan_append() for c in counts]
    step = cache_step(store, list(range(len(counts))), counts, appends, Ledger(), window)
    return decode_attention_walk(store.mesh, step)


def attention_cost(store: KvStore, counts: Sequence[RowCounts]) -> Ledger:
    """`attention_records` from the sizes alone (`kernels.attention_cost`): the records of the
    widest window the batch reads, without a walk."""
    width = max(int(c.plan_append().counts_after.max()) for c in counts)
    ledger = Ledger()
    with ledger.scope("layer"), ledger.scope("attn"):
        decode_attention_cost(
            store.mesh,
            heads=store.heads,
            batch=len(counts),
            width=width,
            stored=store.stored,
            ledger=ledger,
        )
    return ledger


def shift_records(store: KvStore, append: Append, counts: RowCounts) -> Ledger:
    """One layer's one-hop KV shift for `append` after `counts` (no data)."""
    shift = Ledger()
    heads = store.heads
    k = torch.empty((*store.mesh.shape, heads.kv_per_tile, heads.head_slots), device="meta")
    v = torch.empty((*store.mesh.shape, heads.kv_per_tile, heads.value_slots), device="meta")
    store.write(store.layers[0], k, v, append, counts, shift)
    return shift


def kv_budget(plan: ModelPlan) -> KvBudget:
    """The decode regions' room for a batch's KV cache and scratch (`kv_cache.admit`)."""
    config, device = plan.config, plan.device
    rows, cols = plan.decode.grid
    sb = device.storage_bytes
    step_bytes, score_bytes = decode_scratch_bytes(config, rows, cols, sb)
    slot_bytes = kv_slot_bytes_per_core(config, cols, sb, plan.storage.kv)  # one layer's K, V
    return KvBudget(
        rows=rows,
        slots=plan.kv_slots,
        slot_bytes=tuple(len(r.layers) * slot_bytes for r in plan.decode.regions),
        score_bytes=score_bytes,
        step_bytes=step_bytes,
    )


# ---- the batch's stores and held logits ---------------------------------------------------------
def decode_stores(plan: ModelPlan, state: PhaseState, slots: int) -> list[KvStore]:
    """Every decode region's KV store, its SRAM sized for `slots` per row (the batch's)."""
    return [
        KvStore(
            mesh,
            heads_for(plan.config, mesh.cols),
            layers=region.layers,
            slots=slots,
            stored=plan.storage.kv,
        )
        for mesh, region in zip(state.meshes, state.regions.regions, strict=True)
    ]


def park_prompt(
    stores: list[KvStore],
    prefill_kv: dict[int, list[KeyChunk]],
    counts: RowCounts,
    *,
    seq: int,
    prefill_heads: HeadLayout,
) -> None:
    """Functional mode: sequence `seq`'s prefill k/v chunks (joined in position order) into
    its decode rows as `counts` says (the last window kept under a sliding window)."""
    for store in stores:
        k_index, v_index = prefill_heads.kv_index(), prefill_heads.v_index()
        for i in store.layers:
            chunks = prefill_kv[i]
            k = torch.cat([logical_kv(c.k, k_index) for c in chunks])
            v = torch.cat([logical_kv(c.v, v_index) for c in chunks])
            store.fill(i, k, v, counts, seq=seq)


def held_logits(state: PhaseState, vocab_size: int, batch: int) -> DistTensor:
    """Estimate mode: the previous step's logits [B, V] on the head's mesh (V split along X),
    as they are from the second step on."""
    mesh = state.head_mesh
    layout = Layout((batch, vocab_size), x_dim=1)
    return mesh.register(
        torch.empty((*mesh.shape, *layout.tile_shape(*mesh.shape)), device="meta"),
        layout,
        "logits",
    )
