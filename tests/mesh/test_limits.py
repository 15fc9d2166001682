"""M and R enforced: SRAM and route overflows name the core, the amount and the limit; the
phase budgets of SPEC.md §10.7; regions (sub-meshes) and grids."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from waferllm.device import tiny, with_overrides, wse2
from waferllm.errors import GridError, RouteOverflowError, SramOverflowError
from waferllm.mesh import Axis, Layout, Ledger, Mesh, allreduce, parse_grid, ring_shift


def small_sram(num_bytes: int, dtype: torch.dtype = torch.float32) -> Mesh:
    device = with_overrides(tiny(), {"sram_bytes_per_core": num_bytes})
    return Mesh(device, 2, 3, compute_dtype=dtype)


# ---- SRAM ----------------------------------------------------------------------------------
def test_sram_overflow_names_the_tensor_the_core_the_bytes_needed_and_the_limit():
    mesh = small_sram(100)
    mesh.scatter(torch.zeros(2, 3, 20), Layout((2, 3, 20), y_dim=0, x_dim=1), "weights")
    with pytest.raises(SramOverflowError) as info:
        mesh.empty(Layout((2, 3, 40), y_dim=0, x_dim=1), "kv_cache")  # 40 + 80 > 100 bytes
    err = info.value
    assert (err.tensor, err.needed_bytes, err.available_bytes) == ("kv_cache", 120, 100)
    message = str(err)
    assert "kv_cache" in message and "120" in message and "100" in message
    assert re.search(r"core \(y=\d, x=\d\)", message)
    assert isinstance(err, ValueError)


def test_sram_overflow_points_at_the_fullest_core_in_wafer_coordinates():
    mesh = Mesh(with_overrides(tiny(), {"sram_bytes_per_core": 100}), 3, 4, origin=(10, 20))
    per_core = np.zeros((3, 4), dtype=np.int64)
    per_core[2, 1] = 150
    with pytest.raises(SramOverflowError) as info:
        mesh.sram.alloc("ragged", per_core)
    assert info.value.core == (12, 21)
    assert "(y=12, x=21)" in str(info.value)


def test_sram_counts_the_storage_dtype_whatever_the_compute_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        mesh = small_sram(1000, dtype)
        mesh.empty(Layout((4, 6, 10), y_dim=0, x_dim=1), "x").free()
        mesh.empty(Layout((4, 6, 10), y_dim=0, x_dim=1), "y")
        # tile (2, 2, 10) of float16: 80 bytes, wherever the host computes
        assert mesh.sram.live_bytes_max == 80 and mesh.sram.peak_bytes == 80
        assert mesh.empty(Layout((2, 3), y_dim=0, x_dim=1), "z").data.dtype == dtype


def test_an_sram_scope_frees_its_temporaries_and_keeps_the_peak():
    mesh = small_sram(1000)
    mesh.empty(Layout((2, 3, 10), y_dim=0, x_dim=1), "weights")
    with mesh.sram.scope():
        mesh.empty(Layout((2, 3, 100), y_dim=0, x_dim=1), "scratch")
        mesh.empty(Layout((2, 3, 100), y_dim=0, x_dim=1), "scratch")  # a second, uniquified
        assert mesh.sram.live_bytes_max == 20 + 400
    assert mesh.sram.live_bytes_max == 20 and mesh.sram.peak_bytes == 420


# ---- routes --------------------------------------------------------------------------------
def test_route_overflow_names_the_route_set_the_core_the_need_and_the_limit():
    mesh = Mesh(with_overrides(tiny(), {"routes_per_core": 6}), 2, 5, origin=(3, 4))
    data = torch.ones(2, 5, 4)
    ring_shift(mesh, data, axis=Axis.X, ledger=Ledger(), op="s")  # 3 routes
    ring_shift(mesh, data, axis=Axis.X, ledger=Ledger(), op="s")  # the same set: still 3
    assert mesh.routes.routes_per_core == 3
    with pytest.raises(RouteOverflowError) as info:
        allreduce(mesh, data, axis=Axis.X, ledger=Ledger(), op="a", algorithm="pipeline")
    err = info.value
    assert (err.routes, err.needed, err.limit) == ("x_chain", 7, 6)
    assert err.core == (3, 4)
    assert "x_chain" in str(err) and "7" in str(err) and "6" in str(err)
    assert isinstance(err, ValueError)


def test_the_decode_and_prefill_route_sets_meet_their_budgets_on_wse2():
    """Decode: a K = 2 tree per axis, 10 each (chain 4, second level 4, broadcast 2): 20.
    Prefill: interleaved rings forward and reverse on both axes (12), the X chain (4) and its
    broadcast (2): 18. Both within wse2's 21."""
    decode = Mesh(wse2(), 16, 16)
    data = torch.ones(16, 16, 2)
    for axis in Axis:
        allreduce(decode, data, axis=axis, ledger=Ledger(), op="a", algorithm="ktree")
    assert decode.routes.routes_per_core == 20

    prefill = Mesh(wse2(), 16, 16)
    for axis in Axis:
        for steps in (1, -1):
            ring_shift(prefill, data, axis=axis, ledger=Ledger(), op="s", steps=steps)
    allreduce(prefill, data, axis=Axis.X, ledger=Ledger(), op="a", algorithm="pipeline", root=8)
    assert prefill.routes.routes_per_core == 18
    assert max(18, 20) <= wse2().routes_per_core


def test_a_third_tree_level_costs_four_more_routes_per_axis():
    mesh = Mesh(tiny(), 1, 27)
    allreduce(mesh, torch.ones(1, 27, 2), axis=Axis.X, ledger=Ledger(), op="a", fanouts=(3, 3, 3))
    assert mesh.routes.routes_per_core == 4 + 4 + 4 + 2


# ---- regions and grids ---------------------------------------------------------------------
def test_a_submesh_is_a_region_with_its_own_accounting_at_an_offset_origin():
    mesh = Mesh(tiny(), 8, 8, origin=(1, 2))
    region = mesh.submesh(3, 5, origin=(4, 2))
    assert region.shape == (3, 5) and region.origin == (5, 4)
    assert region.mode is mesh.mode and region.device is mesh.device
    region.empty(Layout((3, 5, 8), y_dim=0, x_dim=1), "x")
    assert mesh.sram.live_bytes_max == 0 and region.sram.live_bytes_max == 16
    for rows, cols, origin in ((3, 5, (6, 0)), (1, 9, (0, 0)), (1, 1, (-1, 0))):
        with pytest.raises(GridError, match="inside"):
            mesh.submesh(rows, cols, origin)


def test_a_mesh_must_fit_the_device_from_its_origin():
    with pytest.raises(GridError, match="does not fit"):
        Mesh(tiny(), 60, 10, origin=(5, 0))
    with pytest.raises(GridError):
        Mesh(tiny(), 0, 4)
    with pytest.raises(GridError, match="origin"):
        Mesh(tiny(), 2, 2, origin=(-1, 0))


@pytest.mark.parametrize(("text", "grid"), [("8", (8, 8)), ("4x6", (4, 6)), (" 3X5 ", (3, 5))])
def test_grids_are_p_or_rows_x_cols(text, grid):
    assert parse_grid(text) == grid


@pytest.mark.parametrize("text", ["", "x", "4x", "4x5x6", "-3", "0", "0x4", "a", "4.5"])
def test_malformed_grids_raise_a_grid_error(text):
    with pytest.raises(GridError):
        parse_grid(text)
