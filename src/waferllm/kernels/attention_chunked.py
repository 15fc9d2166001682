"""Chunked prefill attention: one prompt chunk's queries against the cached key chunks and its own.

One key chunk at a time with an online softmax (running max and sum per query row, the output
rescaled as the max grows), so a chunk's scratch is one key chunk's scores; each key chunk runs
exactly the dist-GEMM-T and P V loops of `attention.prefill_attention`.
Legend as in `attention.py`: R rows, C columns, Lt query tokens per row, Lk key tokens per row,
G kv heads per column, n query heads per kv head, H q/k slots, Hv v slots per column.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from waferllm.kernels.attention import attention_output_layout, pv_steps, scratch_buffer
from waferllm.kernels.attention_chunked_cost import (
    RESCALE_ADD,
    BlockRecords,
    estimated_cached_prefill_attention,
)
from waferllm.kernels.gemm_t import block_owners, gemm_t_steps
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.softmax import causal_mask
from waferllm.kernels.vector import (
    EXP_SUB,
    MASK_SELECT,
    MAX_ACC,
    NORMALISE,
    RECIPROCAL,
    SCALE,
    SUM_ACC,
    charge_vector,
    small_allreduce,
)
from waferllm.mesh.comm import ReduceAlgorithm, ReduceOp
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class KeyChunk:
    """One prefill chunk's k [T_y, kv_x] and v [T_y, v_x] (tiles [Tt, G*H], [Tt, G*Hv]) and the
    positions they hold:
    `start` .. `start + length - 1`."""

    k: DistTensor
    v: DistTensor
    start: int
    length: int


@dataclasses.dataclass(kw_only=True, eq=False)
class _Online:
    """Online softmax state per query row (R, C, G, n, Lt, .): running max, sum, output."""

    m: torch.Tensor
    total: torch.Tensor
    acc: torch.Tensor


def cached_prefill_attention(
    mesh: Mesh,
    *,
    q: DistTensor,
    query_start: int,
    query_length: int,
    keys: Sequence[KeyChunk],
    heads: HeadLayout,
    sliding_window: int | None,
    ledger: Ledger,
    walk: bool = False,
    blocks: BlockRecords | None = None,
) -> DistTensor:
    """Causal softmax(Q K^T / sqrt(hd)) V of one prefill chunk against `keys` (the cached
    chunks and its own), one key chunk at a time with an online softmax.

    Layout: q[T_y, (C*G*n*H)_x] (tile [Lt, G*n*H]) for positions query_start ..; each key
    chunk's k [Tk_y, (C*G*H)_x] and v [Tk_y, (C*G*Hv)_x] -> out [T_y, (C*G*n*Hv)_x]
    (`attention.attention_output_layout`). Per key chunk, exactly the
    loops of `prefill_attention`: R dist-GEMM-T steps (scores [G, n, Lt, Kc*Lk] on the key
    blocks' owner columns), the masked scores' max and sum allreduced within the kv-group, R
    steps of {multicast of the unnormalised P block, local P V, V shift}. Online state per
    query row (m, l) and its output accumulator [G, n, Lt, Hv]: m' = max(m, max_j), alpha =
    exp(m - m'), l = l*alpha + sum_j, acc = acc*alpha + P_j V_j; finally out = acc / l.
    Cost per key chunk: prefill_attention's QK^T and PV loops at (Lt, Lk); scale, select, max,
    exp and sum over G*n*Lt rows of Kc*Lk and two allreduces of G*n*Lt values within the
    kv-group; G*n*Lt rows of {max, exp, multiply-add} of one element (the state update) and
    of a multiply-add of Hv (the output's rescale). Once: G*n*Lt reciprocals of l and a
    multiply of G*n*Lt rows of Hv (softmax's normalisation). The charges depend on the shapes
    only: estimate mode charges them from the sizes (`attention_chunked_cost`; the key blocks
    of sizes in `blocks`, priced earlier in the same chunked walk, append their records)
    unless `walk` (the oracle on meta tensors: each distinct key tile shape walked once, its
    records replayed).
    """
    if mesh.mode is Mode.ESTIMATE and not walk:
        return estimated_cached_prefill_attention(
            mesh,
            q=q,
            key_rows=[key.k.tile_shape[0] for key in keys],
            heads=heads,
            ledger=ledger,
            blocks=blocks,
        )
    rows, cols = mesh.shape
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    hv = heads.value_slots
    lt = q.tile_shape[0]
    q_t = q.data.reshape(rows, cols, lt, g, n, h).permute(0, 1, 3, 4, 2, 5)  # [G, n, Lt, H]
    lead = (rows, cols, g, n, lt)
    f32, device = torch.float32, q.data.device
    state = _Online(
        m=torch.full((*lead, 1), -math.inf, dtype=f32, device=device),
        total=torch.zeros((*lead, 1), dtype=f32, device=device),
        acc=torch.zeros((*lead, hv), dtype=f32, device=device),
    )
    walked: dict[tuple[int, ...], tuple[int, int]] = {}  # estimate mode: key tile -> records
    with mesh.sram.scope():
        scratch_buffer(mesh, "online.state", (g, n, lt, hv + 2))  # acc, m and l per query row
        for key in keys:
            shape = tuple(key.k.data.shape)
            if mesh.mode is Mode.ESTIMATE and shape in walked:
                ledger.replay(*walked[shape])  # a block's charges depend on its shapes only
                continue
            start = ledger.mark()
            with mesh.sram.scope():
                mask = _chunk_mask(
                    mesh, heads, lt, (query_start, query_length), key, sliding_window
                )
                _online_block(
                    mesh, q_t=q_t, key=key, mask=mask, heads=heads, state=state, ledger=ledger
                )
            walked[shape] = (start, ledger.mark())
        # as softmax normalises: one reciprocal per query row, a multiply per output entry
        charge_vector(mesh, ledger, "online.reciprocal", rows=1, length=g * n * lt, cost=RECIPROCAL)
        charge_vector(mesh, ledger, "online.normalise", rows=g * n * lt, length=hv, cost=NORMALISE)
        out = state.acc / torch.where(state.total > 0, state.total, 1.0)
    out = out.to(q.data.dtype).permute(0, 1, 4, 2, 3, 5).reshape(rows, cols, lt, heads.o_width)
    return mesh.register(out.contiguous(), attention_output_layout(q.layout, heads), "attn")


def _online_block(
    mesh: Mesh,
    *,
    q_t: torch.Tensor,
    key: KeyChunk,
    mask: torch.Tensor,
    heads: HeadLayout,
    state: _Online,
    ledger: Ledger,
) -> None:
    """One key chunk's scores, online softmax update and P V into `state` (in place)."""
    rows, cols = mesh.shape
    g, h, hv = heads.kv_per_tile, heads.head_slots, heads.value_slots
    lt, lk = q_t.shape[-2], key.k.tile_shape[0]
    owners = block_owners(heads.group_sizes, rows)
    k_t = key.k.data.reshape(rows, cols, lk, g, h).permute(0, 1, 3, 4, 2).unsqueeze(3)
    v_t = key.v.data.reshape(rows, cols, lk, g, hv).permute(0, 1, 3, 2, 4).unsqueeze(3)
    scratch_buffer(mesh, "scores", (g, heads.n_rep, lt, owners.per_col * lk))
    scores = gemm_t_steps(mesh, a_t=q_t, b_t=k_t, owners=owners, ledger=ledger, op="qk")
    lines, length = g * heads.n_rep * lt, owners.per_col * lk

    def vector(op: str, cost: tuple[int, int, int], width: int = length, count: int = lines):
        charge_vector(mesh, ledger, f"softmax.{op}", rows=count, length=width, cost=cost)

    def reduce(local: torch.Tensor, reduce_op: ReduceOp, name: str) -> torch.Tensor:
        return small_allreduce(
            mesh,
            local,
            axis=Axis.X,
            ledger=ledger,
            op=f"softmax.{name}",
            reduce_op=reduce_op,
            algorithm=ReduceAlgorithm.KTREE,
            group_sizes=heads.group_sizes,
        )

    vector("scale", SCALE)
    vector("mask", MASK_SELECT)
    scale = 1.0 / math.sqrt(heads.head_dim)
    s = torch.where(mask, scores.to(torch.float32) * scale, -math.inf)
    vector("max", MAX_ACC)
    block_max = reduce(s.amax(dim=-1, keepdim=True), ReduceOp.MAX, "allreduce_max")
    vector("online.max", MAX_ACC, width=1)
    m_new = torch.maximum(state.m, block_max)
    m_safe = torch.where(torch.isfinite(m_new), m_new, 0.0)  # no key kept yet: 0
    vector("exp", EXP_SUB)
    e = torch.exp(s - m_safe)
    vector("sum", SUM_ACC)
    block_sum = reduce(e.sum(dim=-1, keepdim=True), ReduceOp.SUM, "allreduce_sum")
    vector("online.exp", EXP_SUB, width=1)
    alpha = torch.exp(state.m - m_safe)
    vector("online.sum", RESCALE_ADD, width=1)
    state.total = state.total * alpha + block_sum
    pv = pv_steps(mesh, e.to(q_t.dtype), v_t, owners, ledger)  # (R, C, G, n, Lt, Hv)
    vector("online.rescale", RESCALE_ADD, width=hv)
    state.acc = state.acc * alpha + pv.to(torch.float32)
    state.m = m_new


def _chunk_mask(
    mesh: Mesh,
    heads: HeadLayout,
    lt: int,
    query: tuple[int, int],
    key: KeyChunk,
    sliding_window: int | None,
) -> torch.Tensor:
    """(R, C, 1, 1, Lt, Kc*Lk): which owned keys of `key` each query of the chunk (start,
    length) attends: causal, in the window, neither padding."""
    rows, cols = mesh.shape
    owners = block_owners(heads.group_sizes, rows)
    lk = key.k.tile_shape[0]
    if mesh.mode is Mode.ESTIMATE:
        return torch.empty(
            (rows, cols, 1, 1, lt, owners.per_col * lk), dtype=torch.bool, device="meta"
        )
    start, length = query
    local_q = torch.arange(rows * lt).reshape(rows, 1, lt, 1)
    kk = torch.arange(owners.per_col)
    block = torch.as_tensor(owners.first_block)[:, None] + kk[None, :]  # (C, Kc)
    owned = kk[None, :] < torch.as_tensor(owners.num_blocks)[:, None]
    local_k = (block[:, :, None] * lk + torch.arange(lk)).reshape(1, cols, 1, -1)
    key_ok = owned[:, :, None].expand(-1, -1, lk).reshape(1, cols, 1, -1) & (local_k < key.length)
    real = causal_mask(
        query_positions=start + local_q,
        key_positions=key.start + local_k,
        sliding_window=sliding_window,
    )
    keep = real & key_ok & (local_q < length)
    return keep.reshape(rows, cols, 1, 1, lt, -1).to(mesh.torch_device)
