"""The numbers a Cannon ring loop computes, in a few batched ops instead of one per ring step.

A ring GEMM's schedule does not depend on the data: at step s logical cell (i, j) multiplies
A's block from ring position home_s[j] of its row by B's block from position home_s[i] of
its column (home_s = `rings.ring_index(L, kind, -s)`), and adds the product into its
accumulator. On a square grid in float32 (`_by_k`) every pair that meets shares one K block,
so the products are one multiply per K block (A and B gathered by K block once, straight
from their tiles), added step by step in the loop's order (the library's multiply may round
a product's k-sum differently in the last bit from a multiply per core). Otherwise, where
torch multiplies a tile with its small-matrix loop (fewer than `SMALL_TILE_MACS` multiply-
adds: one fixed order, whatever the memory layout), `ring_products_sum` forms the products
of many steps in one batched multiply and adds them step by step in the loop's order; larger
tiles are multiplied step by step in the loop's own layout (BLAS may round by where the
output lands), bit-identical to the loop. `pv_all_steps` does the same for prefill
attention's P V loop (dist-GEMM-T's QK^T loop has its own in `gemm_t`). Costs are not
charged here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from waferllm.mesh import rings
from waferllm.mesh.compute import matmul_values
from waferllm.mesh.geometry import RingKind
from waferllm.mesh.tiling import LogicalGrid, to_blocks
from waferllm.mesh.virtual import Mesh

if TYPE_CHECKING:
    from waferllm.kernels.gemm_t import BlockOwners

# Host memory the gathered operands of one batch of steps (or, in `_by_k`, of one batch of
# columns of cells) may take (bytes): bounds the batch, not the result.
STEP_BATCH_BYTES = 64 * 2**20
# torch's CPU batched multiply runs tiles of fewer multiply-adds (p*q*n) than this with a
# plain loop over k (ATen's baddbmm small-matrix kernel, LinearAlgebra.cpp), above it BLAS.
SMALL_TILE_MACS = 400


@lru_cache(maxsize=64)
def homes(size: int, kind: RingKind, device: str) -> torch.Tensor:
    """homes[s, i]: the ring position whose block sits at position i after s ring steps."""
    table = np.stack([rings.ring_successor(size, kind, -s) for s in range(size)])
    return torch.tensor(table, dtype=torch.int64, device=device)


def small_tiles(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether every per-core a @ b has one rounding whatever its layout: torch's small-matrix
    loop on the CPU (p*q*n below `SMALL_TILE_MACS`); on a GPU bit-identity is not promised."""
    return a.device.type != "cpu" or a.shape[-2] * a.shape[-1] * b.shape[-1] < SMALL_TILE_MACS


def step_batches(size: int, per_step_numel: int, element_size: int) -> Iterator[slice]:
    """Consecutive ranges of the `size` steps whose operands fit `STEP_BATCH_BYTES`."""
    batch = max(1, min(size, STEP_BATCH_BYTES // max(1, per_step_numel * element_size)))
    for start in range(0, size, batch):
        yield slice(start, min(size, start + batch))


def active_rows(a_l: torch.Tensor) -> int:
    """Logical rows up to the last one holding a nonzero element of A: rows past it (the
    zero padding of a short M) multiply to zeros, which the accumulator already holds."""
    nonzero = a_l.reshape(a_l.shape[0], -1).ne(0).any(dim=1)
    found = torch.nonzero(nonzero)
    return int(found[-1, 0]) + 1 if found.numel() else 0


def ring_products_sum(
    mesh: Mesh,
    *,
    grid: LogicalGrid,
    a_l: torch.Tensor,
    b_l: torch.Tensor,
    acc: torch.Tensor,
    kind: RingKind,
) -> torch.Tensor:
    """acc += sum over the L ring steps of A_s @ B_s, added in step order (in place).

    a_l: (L, L, *ta, p, q) A's blocks as skewed; b_l: (L, L, *tb, q, n) B's as skewed;
    acc: (L, L, *batch, p, n), zeros. Returns acc.
    """
    if a_l.is_meta:
        return acc
    if _plain_float32(grid, a_l, b_l):
        return _by_k(a_l, b_l, acc, kind)
    if not small_tiles(a_l, b_l):
        return _stepwise(mesh, grid, a_l, b_l, acc, kind)
    return _batched(mesh, a_l, b_l, acc, kind)


@lru_cache(maxsize=256)
def _k_indices(
    size: int, kind: RingKind, rows: int, p: int, q: int, cols: tuple[int, int], device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices for `_k_products` of the columns cols[0]..cols[1]-1 (w of them). homes[s]
    is the ring's shift applied s times, so with r(i) the place of i along the ring's cycle
    (at_place[r(i)] = i) the pair that meets at cell (i, j) at step s shares the K block
    k = r(i) + r(j) + s (mod L) (the skew makes one such labelling the true K index). Into A
    (L, L, p, q) as runs of q, the block of K index k of each row in (k, i, p) order; into B
    (L, L, q, n) as runs of n, the block of K index k of each column in (k, q, x) order; into
    the products (k, i, p, x, n) as runs of n, each step's in (s, i, x, p) order."""
    at_place = homes(size, kind, "cpu")[:, 0]  # at_place[r]: r steps along the cycle from 0
    place = torch.argsort(at_place)  # place[i] = r(i)
    x = torch.arange(*cols)
    k, i, w = torch.arange(size), torch.arange(rows), len(x)
    a_x = at_place[(k[:, None] - place[None, :rows]) % size]  # (k, i): A's position
    a_rows = (i[None, :, None] * size + a_x[:, :, None]) * p + torch.arange(p)
    b_y = at_place[(k[:, None] - place[None, x]) % size]  # (k, x): B's position
    b_rows = (b_y[:, None, :] * size + x) * q + torch.arange(q)[None, :, None]
    step_k = (place[None, :rows, None] + place[None, None, x] + k[:, None, None]) % size
    out_rows = (step_k * rows + i[None, :, None]) * p  # (s, i, x): the block's first row
    out_rows = (out_rows[..., None] + torch.arange(p)) * w + torch.arange(w)[:, None]
    a_index, b_index, step_index = (t.reshape(-1).to(device) for t in (a_rows, b_rows, out_rows))
    return a_index, b_index, step_index


def _by_k(a_l: torch.Tensor, b_l: torch.Tensor, acc: torch.Tensor, kind: RingKind) -> torch.Tensor:
    """The plain float32 loop with one multiply per K block (`_k_products`), then each output's
    products added in its step order (only A's rows up to its last nonzero one), a few
    columns of cells at a time within `STEP_BATCH_BYTES` (B's blocks by K and the products
    twice). Each product's k-sum runs inside the library's multiply, whose order may differ
    in the last bit from a multiply per core."""
    size, rows = a_l.shape[0], active_rows(a_l)
    if rows == 0:
        return acc
    p, q, n = a_l.shape[-2], a_l.shape[-1], b_l.shape[-1]
    per_column = size * (q * n + 2 * rows * p * n) * a_l.element_size()
    width = max(1, min(size, STEP_BATCH_BYTES // per_column))
    target = acc[:rows]
    for start in range(0, size, width):
        cols = slice(start, min(size, start + width))
        at_step = _k_products(a_l[:rows], b_l, kind, cols)
        columns = target[:, cols]
        for s in range(size):  # the loop's order: step 0's product first
            columns.add_(at_step[s])
    return acc


def _k_products(a_rows: torch.Tensor, b_l: torch.Tensor, kind: RingKind, cols: slice):
    """The products of the columns `cols` (w of them) in step order (s, i, x, p, n): every
    pair that meets shares a K block, so they are one (rows*p, q) @ (q, w*n) multiply per K
    block (A's blocks of that K in every row against B's in every column), each operand
    gathered once from the tiles as they lie."""
    size, rows, p, q = b_l.shape[0], a_rows.shape[0], a_rows.shape[-2], a_rows.shape[-1]
    n, w = b_l.shape[-1], cols.stop - cols.start
    a_index, b_index, step_index = _k_indices(
        size, kind, rows, p, q, (cols.start, cols.stop), a_rows.device.type
    )
    a_by_k = a_rows.reshape(-1, q).index_select(0, a_index).reshape(size, rows * p, q)
    b_by_k = b_l.reshape(-1, n).index_select(0, b_index).reshape(size, q, w * n)
    products = (a_by_k @ b_by_k).reshape(-1, n)  # (k, i, p, x, n)
    return products.index_select(0, step_index).reshape(size, rows, w, p, n)


def _batched(
    mesh: Mesh, a_l: torch.Tensor, b_l: torch.Tensor, acc: torch.Tensor, kind: RingKind
) -> torch.Tensor:
    """Many steps' products in one multiply, only for A's rows up to its last nonzero one."""
    size = a_l.shape[0]
    rows = active_rows(a_l)
    if rows == 0:
        return acc
    table = homes(size, kind, a_l.device.type)
    a_rows = a_l[:rows]
    per_step = rows * size * (math.prod(a_l.shape[2:]) + math.prod(b_l.shape[2:]))
    per_step += math.prod(acc.shape[1:]) * rows
    for batch in step_batches(size, per_step, a_l.element_size()):
        idx = table[batch]
        steps = idx.shape[0]
        a_all = a_rows.index_select(1, idx.reshape(-1))
        a_all = a_all.reshape(rows, steps, *a_l.shape[1:]).transpose(0, 1).contiguous()
        b_all = b_l.index_select(0, idx[:, :rows].reshape(-1))
        b_all = b_all.reshape(steps, rows, *b_l.shape[1:])
        products = matmul_values(mesh, a_all, b_all)
        target = acc[:rows]
        for s in range(steps):
            target.add_(products[s])
    return acc


def _stepwise(
    mesh: Mesh,
    grid: LogicalGrid,
    a_l: torch.Tensor,
    b_l: torch.Tensor,
    acc: torch.Tensor,
    kind: RingKind,
) -> torch.Tensor:
    """The loop's own multiplies: step 0 in blocks form, later steps in B's row order (the
    order a copied B would have), every product in a buffer laid out as the loop's."""
    acc_blocks = to_blocks(acc, grid)
    acc_blocks.add_(matmul_values(mesh, to_blocks(a_l, grid), to_blocks(b_l, grid)))
    b_moved = b_l.contiguous()
    device = a_l.device.type
    for step in range(1, grid.size):
        holder = rings.ring_index(grid.size, kind, step, device)
        home = rings.ring_index(grid.size, kind, -step, device)
        a_moved = a_l.index_select(1, home)  # A after `step` ring steps along X
        products = matmul_values(mesh, a_moved.index_select(0, holder), b_moved)
        acc_blocks.add_(to_blocks(products.index_select(0, home), grid))
    return acc


def _plain_float32(grid: LogicalGrid, a_l: torch.Tensor, b_l: torch.Tensor) -> bool:
    """A square grid, float32 and no batch dims: the loop's products are plain bmm's."""
    square = grid.per_row == grid.per_col == 1
    return square and a_l.dim() == b_l.dim() == 4 and a_l.dtype == b_l.dtype == torch.float32


def pv_all_steps(
    mesh: Mesh, out: torch.Tensor, p_blocks: torch.Tensor, v_t: torch.Tensor, owners: BlockOwners
) -> None:
    """out += every step's P block @ V, a few steps per batched multiply, added in step order;
    only the rows up to the last one holding a nonzero probability (the others add zeros)."""
    rows = out.shape[0]
    active = active_rows(p_blocks)
    if active == 0:
        return
    on = out.device
    table = homes(rows, RingKind.INTERLEAVED, on.type)[:, :active]  # block_at
    column = torch.as_tensor(owners.column, device=on)
    slot = torch.as_tensor(owners.slot, device=on)
    group_of = torch.as_tensor(owners.group_of, device=on)
    y = torch.arange(active, device=on)[None, :, None]
    per_step = active * (math.prod(v_t.shape[1:]) + 2 * math.prod(out.shape[1:]))
    target = out[:active]
    for batch in step_batches(rows, per_step, v_t.element_size()):
        idx = table[batch]  # (S, active): the key block each row holds at each step
        steps = idx.shape[0]
        cols, slots = column[:, idx].permute(1, 2, 0), slot[:, idx].permute(1, 2, 0)
        blocks = p_blocks[y, cols, :, :, :, slots, :][:, :, group_of]  # (S, active, C, ...)
        v_all = v_t.index_select(0, idx.reshape(-1)).reshape(steps, active, *v_t.shape[1:])
        products = matmul_values(mesh, blocks, v_all)
        for s in range(steps):
            target.add_(products[s])
