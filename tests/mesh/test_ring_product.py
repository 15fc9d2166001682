"""The ring GEMMs move B's blocks by index (`gemm._ring_product`): every step must multiply, bit
for bit, the tiles that copying B around the ring would give each core, and charge the same."""

from __future__ import annotations

import pytest
import torch

from waferllm.device import tiny
from waferllm.kernels.gemm import _ring_product
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


@pytest.mark.parametrize(("rows", "cols", "dtype", "f16_accumulate"), CASES)
@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
def test_every_step_multiplies_exactly_the_tiles_a_moving_b_would_bring(
    rows, cols, dtype, f16_accumulate, kind
):
    mesh = Mesh(tiny(), rows, cols, compute_dtype=dtype, f16_accumulate=f16_accumulate)
    grid = LogicalGrid(rows, cols)
    a_l = blocks(grid, 2, 3, 5, seed=1, dtype=dtype)  # batch 2, [p, k] = [3, 5]
    b_l = blocks(grid, 1, 5, 4, seed=2, dtype=dtype)  # batch broadcast, [k, q] = [5, 4]
    moved = b_l
    for step in range(grid.size + 1):
        want_ledger, got_ledger = Ledger(), Ledger()
        want = matmul(
            mesh, a=to_blocks(a_l, grid), b=to_blocks(moved, grid), ledger=want_ledger, op="mac"
        )
        got = _ring_product(mesh, grid, a_l, b_l, b_l.contiguous(), step, kind, got_ledger)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(got, want), step
        assert got_ledger.records == want_ledger.records
        moved = rings.ring_step(
            mesh, grid, moved, axis=Axis.Y, kind=kind, ledger=UnpricedLedger(), op="shift_b"
        )
        # A moves for real between steps; the pairing must follow it as well
        a_l = rings.ring_step(
            mesh, grid, a_l, axis=Axis.X, kind=kind, ledger=UnpricedLedger(), op="shift_a"
        )


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
