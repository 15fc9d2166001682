"""The ring GEMMs form the loop's products in batched ops (`kernels.ring_sum`): the sum must
equal, bit for bit, multiplying the tiles that moving A and B around the ring gives each core
and adding them step by step; the ring moves and their charges are what the loop would do."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from waferllm.device import tiny
from waferllm.kernels import ring_sum
from waferllm.kernels.ring_sum import active_rows, ring_products_sum
from waferllm.mesh import Axis, Ledger, Mesh, RingKind, UnpricedLedger, matmul, rings
from waferllm.mesh.tiling import LogicalGrid, to_blocks

CASES = [
    # (rows, cols, dtype, f16_accumulate): square, logical 6x6 grids both ways, half precision
    (4, 4, torch.float32, False),
    (2, 3, torch.float32, False),
    (3, 2, torch.float32, False),
    (3, 3, torch.float16, False),
    (2, 3, torch.float16, True),
]


def blocks(grid: LogicalGrid, *tile: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(grid.size, grid.size, *tile, generator=gen).to(dtype)


def looped(mesh: Mesh, grid: LogicalGrid, a_l, b_l, kind: RingKind, acc_dtype) -> torch.Tensor:
    """The loop as the hardware runs it: multiply, add, move A and B one ring step."""
    acc = None
    for _ in range(grid.size):
        product = matmul(
            mesh, a=to_blocks(a_l, grid), b=to_blocks(b_l, grid), ledger=UnpricedLedger(), op="m"
        )
        acc = torch.zeros(product.shape, dtype=acc_dtype) if acc is None else acc
        acc.add_(product)
        for axis in (Axis.X, Axis.Y):
            moved = rings.ring_step(
                mesh,
                grid,
                a_l if axis is Axis.X else b_l,
                axis=axis,
                kind=kind,
                ledger=UnpricedLedger(),
                op="s",
            )
            a_l, b_l = (moved, b_l) if axis is Axis.X else (a_l, moved)
    assert acc is not None
    return acc


@pytest.mark.parametrize(("rows", "cols", "dtype", "f16_accumulate"), CASES)
@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
@pytest.mark.parametrize("zero_rows", [0, 2])
def test_the_batched_ring_sum_equals_the_step_by_step_loop_bit_for_bit(
    rows, cols, dtype, f16_accumulate, kind, zero_rows, monkeypatch
):
    monkeypatch.setattr(ring_sum, "STEP_BATCH_BYTES", 1)  # one step per batch as well
    mesh = Mesh(tiny(), rows, cols, compute_dtype=dtype, f16_accumulate=f16_accumulate)
    grid = LogicalGrid(rows, cols)
    a_l = blocks(grid, 2, 3, 5, seed=1, dtype=dtype)  # batch 2, [p, k] = [3, 5]
    b_l = blocks(grid, 1, 5, 4, seed=2, dtype=dtype)  # batch broadcast, [k, q] = [5, 4]
    if zero_rows:
        a_l[grid.size - zero_rows :] = 0  # a short M's zero padding
    acc_dtype = torch.float16 if f16_accumulate else torch.float32
    want = looped(mesh, grid, a_l, b_l, kind, acc_dtype)
    for batch_bytes in (1, 2**30):
        monkeypatch.setattr(ring_sum, "STEP_BATCH_BYTES", batch_bytes)
        acc = torch.zeros(grid.size, grid.size, 2, 3, 4, dtype=acc_dtype)
        got = to_blocks(
            ring_products_sum(mesh, grid=grid, a_l=a_l, b_l=b_l, acc=acc, kind=kind), grid
        )
        assert got.dtype == want.dtype
        assert torch.equal(got, want)
        assert got.view(torch.int16 if acc_dtype is torch.float16 else torch.int32).equal(
            want.view(torch.int16 if acc_dtype is torch.float16 else torch.int32)
        )  # signed zeros included


def test_active_rows_end_at_the_last_row_holding_a_nonzero():
    data = torch.zeros(5, 5, 2, 2)
    assert active_rows(data) == 0
    data[2, 4, 1, 0] = -1.0
    assert active_rows(data) == 3


def test_the_skew_moved_at_once_equals_its_rounds_one_by_one():
    for kind in (RingKind.INTERLEAVED, RingKind.PLAIN):
        for p in (1, 2, 5, 6):
            mesh, grid = Mesh(tiny(), p, p), LogicalGrid(p, p)
            data = torch.randn(p, p, 2, 3)
            for axis in (Axis.X, Axis.Y):
                moved = data
                for i in range(rings.skew_rounds(p, kind)):
                    moved = rings.skew_round(
                        mesh,
                        grid,
                        moved,
                        axis=axis,
                        kind=kind,
                        round_index=i,
                        ledger=UnpricedLedger(),
                        op="s",
                    )
                assert torch.equal(rings.skew_moved(data, axis=axis, kind=kind), moved)


def test_the_skew_rounds_composed_are_the_complete_skew_for_every_size_up_to_80():
    # skew_moved gathers once by skew_sources (no per-round index arrays are built or cached:
    # 360 of them at 720 cores held ~1.5 GB)
    for kind in (RingKind.INTERLEAVED, RingKind.PLAIN):
        for size in range(1, 81):
            src_of = np.broadcast_to(np.arange(size), (size, size))
            for i in range(rings.skew_rounds(size, kind)):
                step = rings._skew_round_sources(size, kind, i)
                src_of = np.take_along_axis(src_of, step, axis=1)
            assert np.array_equal(src_of, rings.skew_sources(size, kind)), (kind, size)


@pytest.mark.parametrize("steps", [0, 1, 2, 5, 7])
def test_ring_index_says_where_the_ring_has_taken_each_block(steps):
    size = 6
    for kind in (RingKind.INTERLEAVED, RingKind.PLAIN):
        data = torch.arange(size).reshape(size, 1, 1)
        mesh = Mesh(tiny(), size, 1)
        grid = LogicalGrid(size, 1)
        for _ in range(steps):
            data = rings.ring_step(
                mesh, grid, data, axis=Axis.Y, kind=kind, ledger=UnpricedLedger(), op="s"
            )
        home = rings.ring_index(size, kind, -steps, "cpu")
        assert data.flatten().tolist() == home.tolist()
        holder = rings.ring_index(size, kind, steps, "cpu")
        assert data.flatten()[holder].tolist() == list(range(size))


def test_charging_a_ring_step_without_moving_prices_and_routes_like_moving():
    moving_mesh, charged_mesh = Mesh(tiny(), 3, 2), Mesh(tiny(), 3, 2)
    grid = LogicalGrid(3, 2)
    data = torch.randn(grid.size, grid.size, 4, 4)
    moving, charged = Ledger(), Ledger()
    rings.ring_step(
        moving_mesh, grid, data, axis=Axis.Y, kind=RingKind.INTERLEAVED, ledger=moving, op="s"
    )
    rings.charge_ring_step(
        charged_mesh, grid, data, axis=Axis.Y, kind=RingKind.INTERLEAVED, ledger=charged, op="s"
    )
    assert charged.records == moving.records and charged.records
    assert charged_mesh.routes.sets == moving_mesh.routes.sets


@pytest.mark.parametrize(("rows", "cols"), [(2, 3), (3, 2)])
@pytest.mark.parametrize("zero_rows", [0, 2])
def test_large_tiles_are_multiplied_in_the_loops_own_layout(rows, cols, zero_rows):
    """BLAS tiles (p*q*n >= SMALL_TILE_MACS) on a rectangular mesh: products in B's row order,
    as the loop that moves B by index forms them (its rounding may depend on where each output
    lands)."""
    mesh, grid, kind = Mesh(tiny(), rows, cols), LogicalGrid(rows, cols), RingKind.INTERLEAVED
    a_l = blocks(grid, 1, 48, seed=1, dtype=torch.float32)
    a_l[grid.size - zero_rows :] = 0.0
    b_l = blocks(grid, 48, 22, seed=2, dtype=torch.float32)
    assert ring_sum.SMALL_TILE_MACS <= 48 * 22
    ledger = UnpricedLedger()
    want = matmul(mesh, a=to_blocks(a_l, grid), b=to_blocks(b_l, grid), ledger=ledger, op="m")
    moved_a = a_l
    for step in range(1, grid.size):
        moved_a = rings.ring_step(
            mesh, grid, moved_a, axis=Axis.X, kind=kind, ledger=ledger, op="s"
        )
        holder, home = (rings.ring_index(grid.size, kind, s, "cpu") for s in (step, -step))
        product = torch.matmul(moved_a.index_select(0, holder), b_l.contiguous())
        want.add_(to_blocks(product.index_select(0, home), grid))
    acc = torch.zeros(grid.size, grid.size, 1, 22)
    got = to_blocks(ring_products_sum(mesh, grid=grid, a_l=a_l, b_l=b_l, acc=acc, kind=kind), grid)
    assert got.view(torch.int32).equal(want.view(torch.int32))


@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
@pytest.mark.parametrize(
    ("size", "p", "q", "n", "zero_rows"),
    [(4, 1, 48, 22, 2), (7, 2, 3, 5, 0), (6, 1, 3, 40, 1), (5, 3, 4, 6, 0)],
)
@pytest.mark.parametrize("batch_bytes", [1, 2**30])
def test_a_square_float32_ring_multiplies_once_per_k_block_and_adds_in_step_order(
    kind, size, p, q, n, zero_rows, batch_bytes, monkeypatch
):
    """Every pair that meets on a square grid shares one K block: the products are one
    multiply per K block, added in the loop's step order, one column of cells at a time past
    `STEP_BATCH_BYTES`. In float64 (exact to rounding) the sum is the loop's; in float32 only
    the products' k-sums may round differently."""
    monkeypatch.setattr(ring_sum, "STEP_BATCH_BYTES", batch_bytes)
    mesh, grid = Mesh(tiny(), size, size), LogicalGrid(size, size)
    a_l = blocks(grid, p, q, seed=1, dtype=torch.float64)
    a_l[grid.size - zero_rows :] = 0.0
    b_l = blocks(grid, q, n, seed=2, dtype=torch.float64)
    want = looped(mesh, grid, a_l, b_l, kind, torch.float64)
    got64 = ring_sum._by_k(a_l, b_l, torch.zeros(size, size, p, n, dtype=a_l.dtype), kind)
    assert torch.allclose(to_blocks(got64, grid), want, rtol=1e-12, atol=1e-12)
    acc = torch.zeros(size, size, p, n)
    got32 = ring_products_sum(mesh, grid=grid, a_l=a_l.float(), b_l=b_l.float(), acc=acc, kind=kind)
    assert torch.allclose(to_blocks(got32, grid).double(), want, rtol=1e-5, atol=1e-4)


def test_a_square_ring_gathers_each_operand_once_from_the_tiles_as_they_lie(monkeypatch):
    """B is gathered by K block straight from its tiles (one `index_select` of B's elements,
    no transposed copy first), A once, the products once into step order."""
    size, p, q, n = 6, 1, 3, 4
    grid = LogicalGrid(size, size)
    a_l = blocks(grid, p, q, seed=3, dtype=torch.float32)
    b_l = blocks(grid, q, n, seed=4, dtype=torch.float32)
    gathered = []
    real = torch.Tensor.index_select

    def counting(self, dim, index):
        gathered.append(int(index.numel()) * math.prod(self.shape[1:]))
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", counting)
    ring_sum._by_k(a_l, b_l, torch.zeros(size, size, p, n), RingKind.INTERLEAVED)
    assert gathered == [a_l.numel(), b_l.numel(), size * size * size * p * n]
