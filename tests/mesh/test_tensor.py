"""Distributed tensors: layouts, padding, and host scatter/gather."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import tiny
from waferllm.mesh import Layout, Ledger, Mesh, Mode
from waferllm.mesh.tensor import join_tiles, split_host

FEW = settings(max_examples=25, deadline=None)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Layout, int, int]:
    """A logical shape of 1-3 dims, a split per axis (or replication), and a grid."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    dims = [None, *range(ndim)]
    y_dim = draw(st.sampled_from(dims))
    x_dim = draw(st.sampled_from([d for d in dims if d is None or d != y_dim]))
    return Layout(shape, y_dim=y_dim, x_dim=x_dim), draw(st.integers(1, 5)), draw(st.integers(1, 5))


@FEW
@given(layouts())
def test_scatter_then_gather_is_the_identity_for_every_layout(case):
    layout, rows, cols = case
    mesh = Mesh(tiny(), rows, cols)
    host = torch.randn(layout.shape)
    tensor = mesh.scatter(host, layout, "t")
    assert tensor.data.shape == (rows, cols, *layout.tile_shape(rows, cols))
    assert torch.equal(mesh.gather(tensor), host)


@FEW
@given(layouts())
def test_every_core_holds_its_block_of_the_zero_padded_tensor_or_a_replica(case):
    layout, rows, cols = case
    host = torch.randn(layout.shape)
    data = split_host(host, layout, rows, cols)
    padded = torch.zeros(layout.padded_shape(rows, cols))
    padded[tuple(slice(0, s) for s in layout.shape)] = host
    tile = layout.tile_shape(rows, cols)
    for y in range(rows):
        for x in range(cols):
            index = [slice(None)] * len(tile)
            for dim, part in ((layout.y_dim, y), (layout.x_dim, x)):
                if dim is not None:
                    index[dim] = slice(part * tile[dim], (part + 1) * tile[dim])
            assert torch.equal(data[y, x], padded[tuple(index)]), (y, x)


def test_sizes_not_divisible_by_the_grid_are_padded_with_zeros_at_the_end():
    layout = Layout((5, 3), y_dim=0, x_dim=1)
    data = split_host(torch.ones(5, 3), layout, 2, 2)
    assert layout.tile_shape(2, 2) == (3, 2)
    assert data[1, 1].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    assert torch.equal(join_tiles(data, layout), torch.ones(5, 3))


def test_a_layout_cannot_split_one_dim_over_both_axes_or_name_a_missing_dim():
    with pytest.raises(ValueError, match="both axes"):
        Layout((4, 4), y_dim=0, x_dim=0)
    with pytest.raises(ValueError, match="out of range"):
        Layout((4,), y_dim=1)


def test_scatter_rejects_a_host_tensor_of_another_shape_in_both_modes():
    for mode in Mode:
        mesh = Mesh(tiny(), 2, 2, mode=mode)
        with pytest.raises(ValueError, match="does not match"):
            mesh.scatter(torch.zeros(3, 4), Layout((4, 4), y_dim=0), "w")


def test_scatter_charges_sram_for_the_padded_tile_in_the_storage_dtype():
    mesh = Mesh(tiny(), 2, 3, compute_dtype=torch.float32)
    tensor = mesh.scatter(torch.zeros(5, 7), Layout((5, 7), y_dim=0, x_dim=1), "w")
    # tile (3, 3) of float16 storage: 18 bytes per core, whatever the float32 host numerics
    assert mesh.sram.live_bytes_max == 3 * 3 * 2 == tensor.tile_bytes
    tensor.free()
    assert mesh.sram.live_bytes_max == 0


def test_scatter_and_gather_charge_host_io_for_the_logical_bytes_only():
    device = tiny()
    mesh = Mesh(device, 2, 2)
    ledger = Ledger()
    tensor = mesh.scatter(torch.zeros(3, 5), Layout((3, 5), y_dim=0, x_dim=1), "x", ledger=ledger)
    mesh.gather(tensor, ledger=ledger)
    nbytes = 15 * device.storage_bytes  # unpadded: 3 x 5 elements
    for record in ledger.records:
        assert record.host_bytes == nbytes
        assert record.host_io_cycles == pytest.approx(
            nbytes / device.host_io_bytes_per_s * device.clock_hz
        )
        assert record.latency_cycles == 0  # host I/O is never on the modelled critical path
    assert [r.op for r in ledger.records] == ["scatter.x", "gather.x"]


@pytest.mark.parametrize(("k", "n"), [(6, 10), (5, 9)])  # dividing the 3x5 grid, padded
def test_a_matrix_keeps_its_host_order_in_a_copy_of_its_own(k, n):
    """Split both ways, a matrix's tiles are views of one (padded) host-ordered copy: each
    row's tiles side by side, k-major (what a GEMV's one product per line reads); writing the
    tiles never writes the caller's tensor."""
    host = torch.randn(k, n)
    data = split_host(host, Layout((k, n), y_dim=0, x_dim=1), 3, 5)
    assert data.permute(0, 2, 1, 3).is_contiguous()
    assert torch.equal(join_tiles(data, Layout((k, n), y_dim=0, x_dim=1)), host)
    before = host.clone()
    data.add_(1.0)
    assert torch.equal(host, before)
