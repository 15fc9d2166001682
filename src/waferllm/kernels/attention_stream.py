"""Key-streamed prefill attention: one score block live per core, an online softmax over blocks.

The memory-lean form of `attention.prefill_attention` (same layouts, same dist-GEMM-T data
movement), for prompts whose owned score blocks [G, n, Lt, Kc*Lt] do not fit beside the
weights: each step's Q K^T block is reduced to its owner column, which takes its running row
max and exp (flash-attention style), and multicasts the probability block with the new max and
its row sums to the group; every column rescales its P V accumulator and adds the block.
Legend as in `attention.py`: R rows, C columns, Lt tokens per row, G kv heads per column, n
query heads per kv head, H q/k head-dim slots, Hv v slots per column.
"""

from __future__ import annotations

import math

import torch

from waferllm.kernels.attention import attention_output_layout
from waferllm.kernels.attention_stream_cost import (
    charge_block,
    estimated_streamed_attention,
    streamed_attention_numel,
)
from waferllm.kernels.gemm_t import BlockOwners, block_at, block_owners
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.softmax import causal_mask
from waferllm.kernels.vector import (
    NORMALISE,
    RECIPROCAL,
    charge_vector,
)
from waferllm.mesh.comm import ring_shift
from waferllm.mesh.compute import matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode


def prefill_attention_streamed(
    mesh: Mesh,
    *,
    q: DistTensor,
    k: DistTensor,
    v: DistTensor,
    heads: HeadLayout,
    length: int,
    sliding_window: int | None,
    ledger: Ledger,
    walk: bool = False,
) -> DistTensor:
    """Causal softmax(Q K^T / sqrt(hd)) V over a prompt of `length` tokens, keys streamed.

    Layout: as `prefill_attention`: q[L_y, (C*G*n*H)_x], k [L_y, (C*G*H)_x], v [L_y,
    (C*G*Hv)_x] -> out [L_y, (C*G*n*Hv)_x] (the P V accumulator, normalised in place).
    Schedule: R steps of {local Q K^T block (G*n*H*Lt instructions of length Lt); shift
    K and V one ring position along Y; the block chain-reduced within the kv-group to its owner
    column (streamed behind the previous one; the last step pays the chains' latency); on the
    owner, the block's scale, mask, row max, exp against the new running max and row sum
    (G*n*Lt instructions of Lt each); the multicast of the block with the new max and sums
    (G*n*Lt*(Lt+2) values) within the group; on every column, the correction exp(m_old -
    m_new) and the sum update (one instruction of G*n*Lt each) and the accumulator's rescale
    (G*n*Lt instructions of Hv); the local P V (Lt*Lt MACs of length Hv per head)}, each step
    one overlapped block + step overhead. Then one reciprocal per row (one instruction of
    G*n*Lt) and the normalise (G*n*Lt instructions of Hv). Masks and padding as in
    `prefill_attention`; a padded query row gives zeros.
    SRAM: the output, then `streamed_attention_numel` in scratch.
    Estimate mode charges it from the sizes (`attention_stream_cost`) unless `walk` (the
    oracle, on meta tensors).
    """
    if mesh.mode is Mode.ESTIMATE and not walk:
        return estimated_streamed_attention(mesh, q=q, heads=heads, ledger=ledger)
    rows, cols = mesh.shape
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    hv = heads.value_slots
    lt = q.tile_shape[0]
    owners = block_owners(heads.group_sizes, rows)
    out_key = mesh.sram.alloc("attn", lt * heads.o_width * mesh.device.storage_bytes)
    q_t = q.data.reshape(rows, cols, lt, g, n, h).permute(0, 1, 3, 4, 2, 5)  # [G, n, Lt, H]
    k_t = k.data.reshape(rows, cols, lt, g, h).permute(0, 1, 3, 4, 2).unsqueeze(3)  # [G,1,H,Lt]
    v_t = v.data.reshape(rows, cols, lt, g, hv).permute(0, 1, 3, 2, 4).unsqueeze(3)  # [G,1,Lt,Hv]
    functional = mesh.mode is Mode.FUNCTIONAL
    state = _Online(q_t, hv)  # meta tensors in estimate mode: shapes only
    with mesh.sram.scope():
        sb = mesh.device.storage_bytes
        mesh.sram.alloc("attn.stream", streamed_attention_numel(heads, lt) * sb)
        k_cur, v_cur = k_t, v_t
        scale = 1.0 / math.sqrt(heads.head_dim)

        def step(t: int, *, last: bool) -> None:
            nonlocal k_cur, v_cur
            assert state is not None
            overhead = mesh.device.step_overhead_cycles
            with ledger.overlap("attn.step", step_overhead_cycles=overhead):
                part = matmul(mesh, a=q_t, b=k_cur, ledger=ledger, op="qk.local")
                k_next = ring_shift(mesh, k_cur, axis=Axis.Y, ledger=ledger, op="qk.shift")
                charge_block(mesh, owners, heads, lt, ledger, last=last)
                block = _reduced(part, owners) if functional else part
                p = state.update(block, _mask(mesh, lt, length, sliding_window, t), scale)
                pv = matmul(mesh, a=p, b=v_cur, ledger=ledger, op="pv.local")
                state.add(pv)
                v_cur = ring_shift(mesh, v_cur, axis=Axis.Y, ledger=ledger, op="pv.shift")
                k_cur = k_next

        for t in mesh.steps(rows - 1, ledger):
            step(t, last=False)
        step(rows - 1, last=True)
        rows_per_core = g * n * lt
        charge_vector(
            mesh, ledger, "attn.reciprocal", rows=1, length=rows_per_core, cost=RECIPROCAL
        )
        charge_vector(mesh, ledger, "attn.normalise", rows=rows_per_core, length=hv, cost=NORMALISE)
        out = state.result(q.data.dtype)
    out = out.permute(0, 1, 4, 2, 3, 5).reshape(rows, cols, lt, heads.o_width)
    layout = attention_output_layout(q.layout, heads)
    return DistTensor(out.contiguous(), layout, mesh, "attn", out_key)


class _Online:
    """Every query row's running max m, sum l and P V accumulator (float32), updated block by
    block: m' = max(m, rowmax(s)); p = exp(s - m'); l' = l exp(m - m') + rowsum(p); acc' = acc
    exp(m - m') + p V. Rows with nothing kept yet hold m = -inf and contribute zeros."""

    def __init__(self, q_t: torch.Tensor, hv: int) -> None:
        rows_shape = (*q_t.shape[:-1], 1)  # (R, C, G, n, Lt, 1)
        on, f32 = q_t.device, torch.float32
        self.dtype = q_t.dtype
        self.m = torch.full(rows_shape, -math.inf, dtype=f32, device=on)
        self.l = torch.zeros(rows_shape, dtype=f32, device=on)
        self.acc = torch.zeros((*q_t.shape[:-1], hv), dtype=f32, device=on)
        self.correction = torch.ones(rows_shape, dtype=f32, device=on)

    def update(self, block: torch.Tensor, keep: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Take one score block (R, C, G, n, Lt, Lt); returns its p in the compute dtype."""
        s = block.to(torch.float32) * scale
        if keep is not None:
            s = torch.where(keep, s, -math.inf)
        m_new = torch.maximum(self.m, s.amax(dim=-1, keepdim=True))
        base = torch.where(torch.isfinite(m_new), m_new, 0.0)
        p = torch.exp(s - base)
        self.correction = torch.exp(self.m - base)
        self.l = self.l * self.correction + p.sum(dim=-1, keepdim=True)
        self.m = m_new
        return p.to(self.dtype)

    def add(self, pv: torch.Tensor) -> None:
        self.acc = self.acc * self.correction + pv.to(torch.float32)

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        """acc / l (R, C, G, n, Lt, Hv); zeros for a row that attends nothing (padding)."""
        kept = self.l > 0
        return torch.where(kept, self.acc / torch.where(kept, self.l, 1.0), 0.0).to(dtype)


def _reduced(part: torch.Tensor, owners: BlockOwners) -> torch.Tensor:
    """Each row's partial block summed over its kv-group's columns, as every column of the
    group receives it from the owner (R, C, G, n, Lt, Lt)."""
    rows = part.shape[0]
    group_of = torch.as_tensor(owners.group_of, device=part.device)
    summed = part.new_zeros((rows, owners.column.shape[0], *part.shape[2:]))
    summed.index_add_(1, group_of, part)
    return summed[:, group_of]


def _mask(
    mesh: Mesh, lt: int, length: int, sliding_window: int | None, step: int
) -> torch.Tensor | None:
    """(R, 1, 1, 1, Lt, Lt): which keys of the block row y holds at `step` its queries attend
    (causal, window, padding); None in estimate mode."""
    if mesh.mode is Mode.ESTIMATE:
        return None
    rows = mesh.rows
    block = torch.as_tensor(block_at(rows, step))
    query = (torch.arange(rows)[:, None] * lt + torch.arange(lt)[None, :])[:, :, None]
    key = (block[:, None] * lt + torch.arange(lt)[None, :])[:, None, :]
    key = torch.where(key < length, key, -1)
    query = torch.where(query < length, query, -1)
    keep = causal_mask(query_positions=query, key_positions=key, sliding_window=sliding_window)
    return keep.reshape(rows, 1, 1, 1, lt, lt).to(mesh.torch_device)
