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
Legend: R rows, C columns, Lt tokens per row, G kv heads per column, n query heads per kv head,
H head-dim slots per column, Kc key blocks owned per column, w cache slots read per row.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from waferllm.kernels.gemm_t import BlockOwners, block_at, block_owners, gemm_t_steps, owner_map
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.softmax import causal_mask, softmax
from waferllm.mesh.charges import charge_multicast
from waferllm.mesh.comm import allreduce, ring_shift, segmented_allreduce
from waferllm.mesh.compute import matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
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
    """softmax(q K^T / sqrt(hd)) V for one token against the cache.

    Layout: q[C*G*n*H] split along X, replicated along Y (tile [G, n, H]); k_cache (R, C, G, H,
    w) and v_cache (R, C, G, w, H) per core, positions along Y; slot_mask (R, 1, 1, 1, w) the
    slots this token attends (filled, in the window). -> attn[C*G*n*H] in q's layout.
    Cost: G*n*H instructions of w (scores), a segmented allreduce of G*n*w per core along X
    (within kv-groups), the softmax along Y (two allreduces of G*n values), G*n*w instructions
    of H (P@V) and an allreduce of G*n*H per core along Y.
    """
    rows, cols = mesh.shape
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    width = k_cache.shape[-1]
    q_tile = q.data.reshape(rows, cols, g, n, h)
    with mesh.sram.scope():
        partial = matmul(mesh, a=q_tile, b=k_cache, ledger=ledger, op="scores", vector="n")
        full = segmented_allreduce(
            mesh,
            partial,
            axis=Axis.X,
            group_sizes=heads.group_sizes,
            ledger=ledger,
            op="scores.allreduce",
        )
        layout = Layout((cols * g, n, rows * width), y_dim=2, x_dim=0, tag="cache_slots")
        scores = mesh.register(full, layout, "scores")
        probs = softmax(
            mesh,
            scores=scores,
            ledger=ledger,
            dim=2,
            axis=Axis.Y,
            mask=slot_mask,
            scale=1.0 / math.sqrt(heads.head_dim),
        )
        out = matmul(mesh, a=probs.data, b=v_cache, ledger=ledger, op="pv", vector="n")
        out = allreduce(mesh, out, axis=Axis.Y, ledger=ledger, op="pv.allreduce")
    return mesh.register(out.reshape(rows, cols, g * n * h), q.layout, "attn")


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

    Layout: q[L_y, (C*G*n*H)_x], k and v [L_y, (C*G*H)_x] (tiles [Lt, G*n*H], [Lt, G*H]) ->
    out in q's layout. Scores live on their key block's owner column: tile [G, n, Lt, Kc*Lt].
    Schedule: R steps of {local Q K^T block (H*Lt MACs of length Lt per head), shift K one
    ring position along Y, the previous block's chain reduce within the kv-group to its owner
    column}, overlapped; the reduce streams follow each other, so the chains' latency (d hops,
    d-1 stages, d the farthest column from its owner) is paid once, after the last step.
    Softmax along X within groups. R steps of {the owner multicasts the P block within the
    group (d hops + block/link), local P V (Lt*Lt MACs of length H per head), shift V along
    Y}, overlapped. Per step: max(compute, 2 hops + tile/link, comm of the group) + overhead.
    """
    rows, cols = mesh.shape
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    lt = q.tile_shape[0]
    owners = block_owners(heads.group_sizes, rows)
    kc = owners.per_col
    q_t = q.data.reshape(rows, cols, lt, g, n, h).permute(0, 1, 3, 4, 2, 5)  # [G, n, Lt, H]
    k_t = k.data.reshape(rows, cols, lt, g, h).permute(0, 1, 3, 4, 2).unsqueeze(3)  # [G,1,H,Lt]
    v_t = v.data.reshape(rows, cols, lt, g, h).permute(0, 1, 3, 2, 4).unsqueeze(3)  # [G,1,Lt,H]
    with mesh.sram.scope():
        layout = Layout((cols * g, n, rows * lt, kc * lt), y_dim=2, x_dim=0, tag="owned_keys")
        key = _scratch(mesh, "scores", layout.tile_shape(rows, cols))
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
        out = _pv_steps(mesh, probs.data, v_t, owners, ledger)  # (R, C, G, n, Lt, H)
    out = out.permute(0, 1, 4, 2, 3, 5).reshape(rows, cols, lt, g * n * h)
    return mesh.register(out.contiguous(), q.layout, "attn")


def _scratch(mesh: Mesh, name: str, tile: tuple[int, ...] | torch.Size) -> str:
    """Charge a per-core buffer to SRAM (freed by the enclosing `mesh.sram.scope()`)."""
    return mesh.sram.alloc(name, int(np.prod(tuple(tile))) * mesh.device.storage_bytes)


def _pv_steps(
    mesh: Mesh, probs: torch.Tensor, v_t: torch.Tensor, owners: BlockOwners, ledger: Ledger
) -> torch.Tensor:
    rows, cols = mesh.shape
    lt = v_t.shape[-2]
    p_blocks = probs.reshape(*probs.shape[:-1], owners.per_col, lt)  # (R, C, G, n, Lt, Kc, Lt)
    out_shape = (*probs.shape[:-1], v_t.shape[-1])  # (R, C, G, n, Lt, H)
    out = torch.zeros(out_shape, dtype=probs.dtype, device=probs.device)
    _scratch(mesh, "pv.acc", out_shape[2:])
    _scratch(mesh, "v_ring", v_t.shape[2:])
    block_shape = (*probs.shape[:-1], lt)
    _scratch(mesh, "p_block", block_shape[2:])
    nbytes = int(np.prod(block_shape[2:])) * mesh.device.storage_bytes
    owner0 = owner_map(owners, rows, 0)  # every step's multicast costs the same
    v_cur = v_t
    for step in mesh.steps(rows, ledger):
        with ledger.overlap("pv.step", step_overhead_cycles=mesh.device.step_overhead_cycles):
            if owners.shared:
                charge_multicast(
                    mesh, axis=Axis.X, owner=owner0, nbytes=nbytes, ledger=ledger, op="pv.bcast"
                )
            block = (
                _gather_blocks(p_blocks, owners, step)
                if mesh.mode is Mode.FUNCTIONAL
                else (torch.empty(block_shape, dtype=probs.dtype, device="meta"))
            )
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
        return torch.empty(
            (rows, cols, 1, 1, lt, owners.per_col * lt), dtype=torch.bool, device="meta"
        )
    query = torch.arange(rows * lt).reshape(rows, 1, lt, 1)
    kk = torch.arange(owners.per_col)
    block = torch.as_tensor(owners.first_block)[:, None] + kk[None, :]  # (C, Kc)
    owned = kk[None, :] < torch.as_tensor(owners.num_blocks)[:, None]
    key = (block[:, :, None] * lt + torch.arange(lt)).reshape(1, cols, 1, -1)
    key_ok = (owned[:, :, None].expand(-1, -1, lt).reshape(1, cols, 1, -1)) & (key < length)
    real = causal_mask(query_positions=query, key_positions=key, sliding_window=sliding_window)
    keep = torch.where(query < length, real & key_ok, key_ok & (key == 0))
    return keep.reshape(rows, cols, 1, 1, lt, -1).to(mesh.torch_device)
