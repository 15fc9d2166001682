"""Attention on the mesh with heads along X in kv-groups of columns (SPEC.md §5, §10.8).

Decode (`E_y L^x`): the token's q is split along X by head-dim slots and replicated along Y;
the cache holds positions along Y. Scores are local q.K^T partials summed within each kv-group
of columns, softmax runs along Y (one value per head), P@V partials are summed along Y.
Prefill (`L_y E_x`): dist-GEMM-T (`gemm_t.py`) within kv-groups: K circulates on the Y ring; each
step's partial Q K^T block is reduced within the group onto the column that owns that key block
(the root differs per row and per step); softmax runs along X within the group; P@V circulates V on
the Y ring while the owner column multicasts the matching probability block within the group (the
transposed dual of dist-GEMM-T). Both prefill loops take R steps; the R-th shift brings K and V
home for the KV cache. Every step's traffic has the same cost whatever its roots (each step's per-
row roots are a permutation of the key blocks), so estimate mode records one step. Every block is
computed and then masked: causal blocks above the diagonal are not skipped.
Chunked prefill against cached keys lives in `attention_chunked.py`.
The output is in the value slots (`HeadLayout.o_width`: [G, n, Hv] per column), W_o's rows.
Legend: R rows, C columns, Lt tokens per row, G kv heads per column, n query heads per kv head,
H q/k head-dim slots, Hv v slots per column, Kc key blocks owned per column, w cache slots read
per row.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np
import torch

from waferllm.kernels.gemm_t import (
    BlockOwners,
    block_at,
    block_owners,
    gemm_t_steps,
    step_owners,
)
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.ring_sum import pv_all_steps, small_tiles
from waferllm.kernels.softmax import causal_mask, softmax
from waferllm.mesh.charges import charge_multicast
from waferllm.mesh.comm import (
    allreduce,
    bytes_per_core,
    charge_ring_shift,
    ring_shift,
)
from waferllm.mesh.comm_groups import Owners, charge_owned, segmented_allreduce
from waferllm.mesh.compute import charge_matmul, matmul, matmul_cycles, matmul_values
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode


# ---- decode ------------------------------------------------------------------------------------
def decode_attention(
    mesh: Mesh,
    *,
    q: DistTensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mask: torch.Tensor,
    heads: HeadLayout,
    ledger: Ledger,
) -> DistTensor:
    """softmax(q K^T / sqrt(hd)) V for each of B sequences' new token against its own cache.

    Layout: q[B, C*G*n*H] split along X, replicated along Y (tile [B, G, n, H]); k_cache (R, C,
    B, G, H, w) and v_cache (R, C, B, G, w, Hv) per core, positions along Y, each sequence's own
    rows, w the batch's widest window; slot_mask (R, 1, B, 1, 1, w) the slots each token
    attends (filled, in the window). -> attn[B, C*G*n*Hv] split along X (the value slots,
    `attention_output_layout`). Below, for B = 1; a
    batch multiplies every instruction count and message size by B and shares every
    collective (one message carries all B sequences' values).
    Cost: the scores, per kv head a local [n, H] @ [H, w], in the cheaper loop order
    (`loop_order`: n*H instructions of w, or H*w of n); a segmented reduce of G*n*w per core
    along X onto each kv-group's root column; the softmax along Y (two allreduces of G*n
    values), whose G*n rows the group's columns nearest the root share (`head_spread`:
    ceil(G*n / group width) rows each, not every column the whole group's); a chain of the
    probabilities to the root over those columns and the root's multicast of G*n*w to the
    group; P@V, per kv head a local [n, w] @ [w, Hv] in the cheaper order (n*w instructions of
    Hv, or w*Hv of n), and an allreduce of G*n*Hv per core along Y. Groups of one column (C <
    Hkv) skip the spread, the gather and the multicast; one group spanning the row (one kv
    head) sums its scores with the row's K-tree allreduce instead (the public code's single
    head).
    GQA against MHA at one grid: a kv head's hd dims spread over about C/Hkv columns, so few kv
    heads mean wide kv-groups (LLaMA3-8B at 420 columns: 8 groups of 52-53; LLaMA2-13B: 40 of
    10-11). The score sum is then a chain of about C/(2 Hkv) stages (26 against 5) and the
    probabilities' gather and multicast cross the same width, while the local products stay
    short (H = 4, Hv = 3 slots). These latencies, not FLOPs or KV bytes, are why a GQA layer
    can cost more than an MHA layer of more heads on the same grid. A two-level tree inside
    each group would cut the chain to about 2 sqrt(C/Hkv) stages, but it needs its own phase-1
    and phase-2 colours along X with roots relative to each group (the row-wide X K-tree routes
    towards one global root, and WSE-2's static decode already uses 20 of its 21 user colours,
    code notes §5.2), so it is not modelled. Merging the n query heads of a kv head into one
    instruction needs no 2D descriptor: the other loop order runs along the heads with strided
    1D DSDs, which `loop_order` takes where it is cheaper.
    """
    rows, cols = mesh.shape
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    batch, width = k_cache.shape[2], k_cache.shape[-1]
    q_tile = q.data.reshape(rows, cols, batch, g, n, h)
    spread = head_spread(heads)
    with mesh.sram.scope():
        attended = _attended_rows(mesh, slot_mask)
        order = loop_order(mesh, m=n, k=h, n=width)
        partial = _on_rows(
            mesh, q_tile, k_cache, attended, ledger=ledger, op="scores", vector=order
        )
        full = _score_sums(mesh, partial, heads, ledger, broadcast=spread is None)
        layout = Layout((batch, cols * g, n, rows * width), y_dim=3, x_dim=1, tag="cache_slots")
        scores = mesh.register(full, layout, "scores")
        probs = softmax(
            mesh,
            scores=scores,
            ledger=ledger,
            dim=3,
            axis=Axis.Y,
            mask=slot_mask,
            scale=1.0 / math.sqrt(heads.head_dim),
            rows_per_core=None if spread is None else batch * spread.rows_per_core,
        )
        if spread is not None:
            charge_probs_spread(
                mesh, spread, nbytes=bytes_per_core(mesh, probs.data), ledger=ledger
            )
        order = loop_order(mesh, m=n, k=width, n=heads.value_slots)
        out = _on_rows(mesh, probs.data, v_cache, attended, ledger=ledger, op="pv", vector=order)
        out = allreduce(mesh, out, axis=Axis.Y, ledger=ledger, op="pv.allreduce")
    layout = attention_output_layout(q.layout, heads)
    return mesh.register(out.reshape(rows, cols, batch, heads.o_width), layout, "attn")


# selecting the attended rows pays where the cores are many and at most half the rows hold a
# slot (a short context on a large grid); elsewhere it costs more host time than it saves
ROW_SKIP_MIN_CORES = 4096


def _attended_rows(mesh: Mesh, slot_mask: torch.Tensor) -> torch.Tensor | None:
    """The mesh rows holding a slot some token attends, where few (None: every row, a small
    mesh or estimate mode)."""
    if mesh.mode is Mode.ESTIMATE or mesh.num_cores < ROW_SKIP_MIN_CORES:
        return None
    held = slot_mask.reshape(slot_mask.shape[0], -1).any(dim=1)
    if 2 * int(held.sum()) > held.numel():
        return None
    return torch.nonzero(held).reshape(-1)


def _on_rows(
    mesh: Mesh,
    a: torch.Tensor,
    b: torch.Tensor,
    rows: torch.Tensor | None,
    *,
    ledger: Ledger,
    op: str,
    vector: str,
) -> torch.Tensor:
    """Per-core a @ b (`matmul`, charged on every core), computed on the mesh rows `rows` only:
    the others hold no attended slot, so their score partials are masked by the softmax and
    their P@V partials multiply zero probabilities; they are left as zeros."""
    if rows is None:
        return matmul(mesh, a=a, b=b, ledger=ledger, op=op, vector=vector)
    charge_matmul(mesh, ledger, op, a_shape=a.shape, n=b.shape[-1], vector=vector)
    part = matmul_values(mesh, a.index_select(0, rows), b.index_select(0, rows))
    out = part.new_zeros((mesh.rows, *part.shape[1:]))
    return out.index_copy_(0, rows, part)


def loop_order(mesh: Mesh, *, m: int, k: int, n: int) -> str:
    """The cheaper loop order of one core's [m, k] @ [k, n] (`mesh.compute.matmul_cycles`):
    "n", m*k axpy instructions along the output's rows (the public decode's form: out[0:Nt] +=
    in[m] * W[m, 0:Nt], code notes §3.3), or "m", k*n instructions along its m rows (for
    attention the query heads of a kv head, read and written with a stride: 1D memory DSDs
    with a stride, code notes §6 "f16 SIMD"). Short vectors pay the instruction floor either
    way, so the order with fewer instructions wins; a tie keeps "n"."""
    by_rows = matmul_cycles(mesh.device, m=m, k=k, n=n, vector="n")
    by_heads = matmul_cycles(mesh.device, m=m, k=k, n=n, vector="m")
    return "m" if by_heads < by_rows else "n"


def attention_output_layout(q_layout: Layout, heads: HeadLayout) -> Layout:
    """q's layout with its head features replaced by the value slots of every query head
    ([..., C*G*n*Hv], split along X as q is)."""
    shape = (*q_layout.shape[:-1], heads.num_cols * heads.o_width)
    return Layout(shape, y_dim=q_layout.y_dim, x_dim=q_layout.x_dim)


def _score_sums(
    mesh: Mesh, partial: torch.Tensor, heads: HeadLayout, ledger: Ledger, *, broadcast: bool
) -> torch.Tensor:
    """Sum the score partials over each kv-group's columns: a chain per group onto its root
    (the axis's chain colours), or, when one group spans the whole row (one kv head), the row's
    K-tree allreduce (the decode program's X tree; the public code's single-head score
    allreduce, code notes §3.3 step 4)."""
    if len(heads.group_sizes) == 1:
        line = allreduce(mesh, partial, axis=Axis.X, ledger=ledger, op="scores.allreduce")
        return line.expand_as(partial)
    return segmented_allreduce(
        mesh,
        partial,
        axis=Axis.X,
        group_sizes=heads.group_sizes,
        ledger=ledger,
        op="scores.group",
        broadcast_result=broadcast,
    )


@dataclasses.dataclass(frozen=True)
class HeadSpread:
    """How decode spreads a kv-group's softmax rows (its query heads) over the group's columns:
    `cores` adjacent columns around the group root each compute `rows_per_core` rows, chain
    their probabilities to the root (`gather_owner`, a no-op for one core), which multicasts
    them to the group (`root`). Owners are alike on every line (one (C,) row)."""

    rows_per_core: int
    cores: int
    gather_owner: Owners
    root: Owners


def charge_probs_spread(mesh: Mesh, spread: HeadSpread, *, nbytes: int, ledger: Ledger) -> None:
    """Charge a head-spread softmax's probabilities back to every column of their kv group:
    reduced to the gather owner across the spread's cores (when more than one), then multicast
    from its root along X (`nbytes` per core), as `charges.charge_reduce_to_owners` and
    `charges.charge_multicast` charge these maps (`comm_groups.charge_owned`: the same routes,
    each charge from the line priced once)."""
    if spread.cores > 1:
        charge_owned(
            mesh,
            ledger,
            "chain",
            axis=Axis.X,
            owners=spread.gather_owner,
            nbytes=nbytes,
            op="probs.gather",
        )
    charge_owned(
        mesh, ledger, "multicast", axis=Axis.X, owners=spread.root, nbytes=nbytes, op="probs.bcast"
    )


@lru_cache(maxsize=256)
def head_spread(heads: HeadLayout) -> HeadSpread | None:
    """The spread for kv-groups wider than one column (None: every column computes its own
    whole kv heads, or one group spans the row and its K-tree broadcasts the scores). The
    reduce ends at the group root; the `cores` columns nearest it each take ceil(G*n /
    narrowest group) rows, so no column repeats the group's whole softmax."""
    sizes = np.asarray(heads.group_sizes, dtype=np.int64)
    if sizes.max() == 1 or len(sizes) == 1:  # one column per group, or the row's K-tree
        return None
    rows = heads.kv_per_tile * heads.n_rep
    per_core = -(-rows // int(sizes.min()))
    cores = -(-rows // per_core)
    starts = np.cumsum(sizes) - sizes
    root = np.repeat(starts + sizes // 2, sizes)
    col = np.arange(len(root))
    first = root - cores // 2
    gather = np.where((col >= first) & (col < first + cores), root, col)
    line = np.zeros(1, dtype=np.int64)  # `Owners.of_map` of a (C,) map: its one row
    return HeadSpread(
        rows_per_core=per_core,
        cores=cores,
        gather_owner=Owners.of_rows(gather[None, :], line),
        root=Owners.of_rows(root[None, :], line),
    )


# ---- prefill -----------------------------------------------------------------------------------
def prefill_attention(
    mesh: Mesh,
    *,
    q: DistTensor,
    k: DistTensor,
    v: DistTensor,
    heads: HeadLayout,
    length: int,
    sliding_window: int | None,
    ledger: Ledger,
) -> DistTensor:
    """Causal softmax(Q K^T / sqrt(hd)) V over a prompt of `length` tokens.

    Layout: q[L_y, (C*G*n*H)_x], k [L_y, (C*G*H)_x], v [L_y, (C*G*Hv)_x] (tiles [Lt, G*n*H],
    [Lt, G*H], [Lt, G*Hv]) -> out [L_y, (C*G*n*Hv)_x] (`attention_output_layout`). Scores
    live on their key block's owner column: tile [G, n, Lt, Kc*Lt].
    Schedule: R steps of {local Q K^T block (H*Lt MACs of length Lt per head), shift K one
    ring position along Y, the previous block's chain reduce within the kv-group to its owner
    column}, overlapped; the reduce streams follow each other, so the chains' latency (d hops,
    d-1 stages, d the farthest column from its owner) is paid once, after the last step.
    Softmax along X within groups. R steps of {the owner multicasts the P block within the
    group (d hops + block/link), local P V (Lt*Lt MACs of length Hv per head), shift V along
    Y}, overlapped. Per step: max(compute, 2 hops + tile/link, comm of the group) + overhead.
    """
    rows, cols = mesh.shape
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    lt = q.tile_shape[0]
    owners = block_owners(heads.group_sizes, rows)
    kc = owners.per_col
    hv = heads.value_slots
    q_t, k_t, v_t = _head_tiles(q.data, k.data, v.data, (rows, cols, lt, g, n, h, hv))
    with mesh.sram.scope():
        layout = Layout((cols * g, n, rows * lt, kc * lt), y_dim=2, x_dim=0, tag="owned_keys")
        key = scratch_buffer(mesh, "scores", layout.tile_shape(rows, cols))
        data = gemm_t_steps(mesh, a_t=q_t, b_t=k_t, owners=owners, ledger=ledger, op="qk")
        probs = softmax(
            mesh,
            scores=DistTensor(data, layout, mesh, "scores", key),
            ledger=ledger,
            dim=3,
            axis=Axis.X,
            mask=_prefill_mask(mesh, owners, lt, length, sliding_window),
            scale=1.0 / math.sqrt(heads.head_dim),
            group_sizes=heads.group_sizes,
        )
        out = pv_steps(mesh, _real_rows_only(probs.data, length), v_t, owners, ledger)
    if out.is_meta:  # estimate mode: the shape and dtype the walk's ops give
        out = meta_empty((rows, cols, lt, heads.o_width), out.dtype)
    else:
        out = out.permute(0, 1, 4, 2, 3, 5).reshape(rows, cols, lt, heads.o_width).contiguous()
    return mesh.register(out, attention_output_layout(q.layout, heads), "attn")


def _head_tiles(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [G, n, Lt, H], k [G, 1, H, Lt] and v [G, 1, Lt, Hv] per core (views of the tiles;
    meta tiles of those shapes in estimate mode, without the views' dispatches)."""
    rows, cols, lt, g, n, h, hv = dims
    if q.is_meta and k.is_meta and v.is_meta:
        return (
            meta_empty((rows, cols, g, n, lt, h), q.dtype),
            meta_empty((rows, cols, g, 1, h, lt), k.dtype),
            meta_empty((rows, cols, g, 1, lt, hv), v.dtype),
        )
    q_t = q.reshape(rows, cols, lt, g, n, h).permute(0, 1, 3, 4, 2, 5)
    k_t = k.reshape(rows, cols, lt, g, h).permute(0, 1, 3, 4, 2).unsqueeze(3)
    v_t = v.reshape(rows, cols, lt, g, hv).permute(0, 1, 3, 2, 4).unsqueeze(3)
    return q_t, k_t, v_t


def _real_rows_only(probs: torch.Tensor, length: int) -> torch.Tensor:
    """Probabilities with the padded query rows' set to zero (R, C, G, n, Lt, Kc*Lt): their
    outputs are never used, and zero rows stay zero through the layer, so the kernels that
    follow multiply only the prompt's rows (`ring_sum.active_rows`)."""
    if probs.is_meta:
        return probs
    rows, lt = probs.shape[0], probs.shape[-2]
    real = torch.arange(rows * lt, device=probs.device) < length
    return probs.masked_fill(~real.reshape(rows, 1, 1, 1, lt, 1), 0.0)


def scratch_buffer(mesh: Mesh, name: str, tile: tuple[int, ...] | torch.Size) -> str:
    """Charge a per-core buffer to SRAM (freed by the enclosing `mesh.sram.scope()`)."""
    return mesh.sram.alloc(name, int(np.prod(tuple(tile))) * mesh.device.storage_bytes)


def pv_steps(
    mesh: Mesh, probs: torch.Tensor, v_t: torch.Tensor, owners: BlockOwners, ledger: Ledger
) -> torch.Tensor:
    rows, cols = mesh.shape
    lt = v_t.shape[-2]
    # (R, C, G, n, Lt, Kc, Lt); estimate mode reads no blocks (its steps only charge)
    p_blocks = probs if probs.is_meta else probs.reshape(*probs.shape[:-1], owners.per_col, lt)
    out_shape = (*probs.shape[:-1], v_t.shape[-1])  # (R, C, G, n, Lt, H)
    if probs.is_meta:
        out = meta_empty(out_shape, probs.dtype)
    else:
        out = torch.zeros(out_shape, dtype=probs.dtype, device=probs.device)
    scratch_buffer(mesh, "pv.acc", out_shape[2:])
    scratch_buffer(mesh, "v_ring", v_t.shape[2:])
    block_shape = (*probs.shape[:-1], lt)
    scratch_buffer(mesh, "p_block", block_shape[2:])
    nbytes = int(np.prod(block_shape[2:])) * mesh.device.storage_bytes
    owner0 = step_owners(owners, rows, 0)  # every step's multicast costs the same
    # small tiles: every step's numbers at once (`ring_sum.pv_all_steps`), the loop only charges
    batched = mesh.mode is Mode.ESTIMATE or small_tiles(p_blocks[..., 0, :], v_t)
    if batched and mesh.mode is Mode.FUNCTIONAL:
        pv_all_steps(mesh, out, p_blocks, v_t, owners)
    v_cur = v_t
    for step in (mesh.charged_steps if batched else mesh.steps)(rows, ledger):
        with ledger.overlap("pv.step", step_overhead_cycles=mesh.device.step_overhead_cycles):
            if owners.shared:
                charge_multicast(
                    mesh, axis=Axis.X, owner=owner0, nbytes=nbytes, ledger=ledger, op="pv.bcast"
                )
            if batched:
                charge_matmul(mesh, ledger, "pv.local", a_shape=block_shape, n=v_t.shape[-1])
                charge_ring_shift(mesh, v_cur, axis=Axis.Y, ledger=ledger, op="pv.shift")
                continue
            block = _gather_blocks(p_blocks, owners, step)
            out = matmul(mesh, a=block, b=v_cur, ledger=ledger, op="pv.local", accumulate=out)
            v_cur = ring_shift(mesh, v_cur, axis=Axis.Y, ledger=ledger, op="pv.shift")
    return out


def _gather_blocks(p_blocks: torch.Tensor, owners: BlockOwners, step: int) -> torch.Tensor:
    """(R, C, G, n, Lt, Lt): the probability block of each row's current key block, as the
    owner column multicasts it to every column of its kv-group."""
    rows = p_blocks.shape[0]
    block = block_at(rows, step)
    on = p_blocks.device
    y = torch.arange(rows, device=on)[:, None]
    col = torch.as_tensor(owners.column[:, block].T, device=on)  # (R, Ng)
    slot = torch.as_tensor(owners.slot[:, block].T, device=on)
    per_group = p_blocks[y, col, :, :, :, slot, :]  # (R, Ng, G, n, Lt, Lt)
    return per_group[:, torch.as_tensor(owners.group_of, device=on)]


def _prefill_mask(
    mesh: Mesh, owners: BlockOwners, lt: int, length: int, sliding_window: int | None
) -> torch.Tensor:
    """(R, C, 1, 1, Lt, Kc*Lt): causal, sliding-window and padding mask of the owned keys.
    Padded query rows attend to key 0 only (their outputs are never used; this keeps them
    finite)."""
    rows, cols = mesh.shape
    if mesh.mode is Mode.ESTIMATE:
        return meta_empty((rows, cols, 1, 1, lt, owners.per_col * lt), torch.bool)
    query = torch.arange(rows * lt).reshape(rows, 1, lt, 1)
    kk = torch.arange(owners.per_col)
    block = torch.as_tensor(owners.first_block)[:, None] + kk[None, :]  # (C, Kc)
    owned = kk[None, :] < torch.as_tensor(owners.num_blocks)[:, None]
    key = (block[:, :, None] * lt + torch.arange(lt)).reshape(1, cols, 1, -1)
    key_ok = (owned[:, :, None].expand(-1, -1, lt).reshape(1, cols, 1, -1)) & (key < length)
    real = causal_mask(query_positions=query, key_positions=key, sliding_window=sliding_window)
    keep = torch.where(query < length, real & key_ok, key_ok & (key == 0))
    return keep.reshape(rows, cols, 1, 1, lt, -1).to(mesh.torch_device)
