"""Every communication primitive matches its dense meaning on many mesh shapes.

Shapes include 1xN, Nx1, odd and non-square meshes; tiles carry a distinct value per core so a
misrouted tile cannot go unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import tiny
from waferllm.mesh import (
    Axis,
    Ledger,
    Mesh,
    Mode,
    ReduceAlgorithm,
    ReduceOp,
    RingKind,
    allreduce,
    broadcast,
    fanouts_from_groups,
    reduce,
    ring_shift,
    ring_successor,
    segmented_allreduce,
    shift,
)
from waferllm.mesh.comm import charge_allreduce

FEW = settings(max_examples=20, deadline=None)
grids = st.tuples(st.integers(1, 7), st.integers(1, 7))
axes = st.sampled_from(list(Axis))


def tiles(rows: int, cols: int, *tile: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, *tile, generator=torch.Generator().manual_seed(seed))


def lines_of(data: torch.Tensor, axis: Axis) -> torch.Tensor:
    """(lines, P, *tile): every line of the axis as a row."""
    return data if axis is Axis.X else data.transpose(0, 1)


def dense(data: torch.Tensor, axis: Axis, reduce_op: ReduceOp) -> torch.Tensor:
    if reduce_op is ReduceOp.SUM:
        return data.sum(axis.tensor_dim, keepdim=True).expand_as(data)
    return data.amax(axis.tensor_dim, keepdim=True).expand_as(data)


# ---- shifts ------------------------------------------------------------------------------------
@FEW
@given(grids, axes, st.sampled_from(list(RingKind)), st.sampled_from([1, -1]))
def test_a_ring_shift_moves_every_tile_to_its_ring_neighbour(grid, axis, kind, steps):
    mesh = Mesh(tiny(), *grid)
    data = tiles(*grid, 3)
    out = ring_shift(mesh, data, axis=axis, ledger=Ledger(), op="s", kind=kind, steps=steps)
    dst = ring_successor(mesh.size(axis), kind, steps)
    for i, j in enumerate(dst):
        assert torch.equal(lines_of(out, axis)[:, j], lines_of(data, axis)[:, i])


@FEW
@given(grids, axes, st.sampled_from(list(RingKind)))
def test_p_ring_shifts_compose_to_the_identity_and_a_reverse_shift_undoes_one(grid, axis, kind):
    mesh = Mesh(tiny(), *grid)
    data = tiles(*grid, 2)
    out = data
    for _ in range(mesh.size(axis)):
        out = ring_shift(mesh, out, axis=axis, ledger=Ledger(), op="s", kind=kind)
        if mesh.size(axis) > 1 and _ < mesh.size(axis) - 1:
            assert not torch.equal(out, data)
    assert torch.equal(out, data)
    there = ring_shift(mesh, data, axis=axis, ledger=Ledger(), op="s", kind=kind)
    back = ring_shift(mesh, there, axis=axis, ledger=Ledger(), op="s", kind=kind, steps=-1)
    assert torch.equal(back, data)


@FEW
@given(grids, axes, st.integers(0, 2**31 - 1))
def test_a_shift_by_a_different_permutation_per_line_moves_each_tile_where_told(grid, axis, seed):
    mesh = Mesh(tiny(), *grid)
    num, lines = mesh.size(axis), mesh.size(axis.other)
    rng = np.random.default_rng(seed)
    dst = np.stack([rng.permutation(num) for _ in range(lines)])
    data = tiles(*grid, 2)
    out = shift(mesh, data, axis=axis, dst=dst, ledger=Ledger(), op="s")
    for line in range(lines):
        for i in range(num):
            assert torch.equal(
                lines_of(out, axis)[line, dst[line, i]], lines_of(data, axis)[line, i]
            )


def test_a_shift_rejects_destinations_that_are_not_a_permutation_of_the_line():
    mesh = Mesh(tiny(), 2, 4)
    data = tiles(2, 4)
    for bad in ([0, 1, 1, 2], [0, 1, 2], [[0, 1, 2, 3]] * 3, [0.0, 1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="shift"):
            shift(mesh, data, axis=Axis.X, dst=np.array(bad), ledger=Ledger(), op="s")


# ---- broadcast and reduce ----------------------------------------------------------------------
@FEW
@given(grids, axes, st.integers(0, 2**31 - 1))
def test_broadcast_from_per_line_roots_gives_every_core_its_lines_root_tile(grid, axis, seed):
    mesh = Mesh(tiny(), *grid)
    rng = np.random.default_rng(seed)
    roots = rng.integers(0, mesh.size(axis), mesh.size(axis.other))
    data = tiles(*grid, 3)
    out = broadcast(mesh, data, axis=axis, root=roots, ledger=Ledger(), op="b")
    for line, root in enumerate(roots):
        expected = lines_of(data, axis)[line, root]
        assert all(torch.equal(t, expected) for t in lines_of(out, axis)[line])


@FEW
@given(grids, axes, st.integers(0, 2**31 - 1), st.sampled_from(list(ReduceOp)))
def test_pipeline_reduce_onto_per_line_roots_combines_each_line(grid, axis, seed, reduce_op):
    mesh = Mesh(tiny(), *grid)
    roots = np.random.default_rng(seed).integers(0, mesh.size(axis), mesh.size(axis.other))
    data = tiles(*grid, 2)
    line, root = reduce(
        mesh,
        data,
        axis=axis,
        ledger=Ledger(),
        op="r",
        algorithm=ReduceAlgorithm.PIPELINE,
        root=roots,
        reduce_op=reduce_op,
    )
    assert torch.allclose(line.expand_as(data), dense(data, axis, reduce_op), atol=1e-6)
    assert np.array_equal(root, roots)


def test_reduce_rejects_roots_out_of_range_or_one_per_line_of_the_wrong_count():
    mesh = Mesh(tiny(), 3, 4)
    data = tiles(3, 4)
    for root, match in ((4, "out of range"), (np.array([0, 1]), "one root"), (1.5, "int")):
        with pytest.raises(ValueError, match=match):
            reduce(
                mesh, data, axis=Axis.X, ledger=Ledger(), op="r", algorithm="pipeline", root=root
            )


# ---- allreduce ---------------------------------------------------------------------------------
@st.composite
def allreduce_cases(draw: st.DrawFn) -> tuple:
    rows, cols = draw(grids)
    axis = draw(axes)
    num = rows if axis is Axis.Y else cols
    algorithm = draw(st.sampled_from(list(ReduceAlgorithm)))
    fanouts = None
    if algorithm is ReduceAlgorithm.KTREE:
        fanouts = draw(
            st.one_of(
                st.none(),
                st.just(fanouts_from_groups(num, draw(st.integers(1, max(num, 1))))),
                st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
            )
        )
        if fanouts is not None and np.prod(fanouts) < num:
            fanouts = (*fanouts, num)
    return rows, cols, axis, algorithm, fanouts, draw(st.sampled_from(list(ReduceOp)))


@settings(max_examples=60, deadline=None)
@given(allreduce_cases())
def test_every_allreduce_leaves_the_sum_or_max_on_every_core(case):
    rows, cols, axis, algorithm, fanouts, reduce_op = case
    mesh = Mesh(tiny(), rows, cols)
    data = tiles(rows, cols, 2, 3)
    out = allreduce(
        mesh,
        data,
        axis=axis,
        ledger=Ledger(),
        op="a",
        algorithm=algorithm,
        fanouts=fanouts,
        reduce_op=reduce_op,
    )
    assert out.shape == data.shape
    assert torch.allclose(out, dense(data, axis, reduce_op), atol=1e-5)


@pytest.mark.parametrize("algorithm", list(ReduceAlgorithm))
def test_an_allreduce_result_is_one_tile_per_line_apart_from_its_input(algorithm):
    mesh = Mesh(tiny(), 2, 5)
    data = tiles(2, 5, 4)
    out = allreduce(mesh, data, axis=Axis.X, ledger=Ledger(), op="a", algorithm=algorithm)
    expected = out.clone()
    assert out.stride(Axis.X.tensor_dim) == 0  # every core of a row reads the row's one tile
    data += 1.0  # the input's buffer is not the result's
    assert torch.equal(out, expected)


@pytest.mark.parametrize("algorithm", list(ReduceAlgorithm))
@pytest.mark.parametrize("broadcast_result", [True, False])
@pytest.mark.parametrize(("rows", "cols", "axis"), [(3, 7, Axis.X), (6, 2, Axis.Y), (2, 1, Axis.X)])
def test_charge_allreduce_charges_and_routes_what_allreduce_does_without_data(
    algorithm, broadcast_result, rows, cols, axis
):
    seen = []
    for charge_only in (False, True):
        mesh = Mesh(tiny(), rows, cols)
        ledger = Ledger()
        kw = {"axis": axis, "ledger": ledger, "op": "a", "algorithm": algorithm}
        kw |= {"broadcast_result": broadcast_result}
        if charge_only:
            charge_allreduce(mesh, numel=2 * 5, **kw)
        else:
            allreduce(mesh, tiles(rows, cols, 2, 5), **kw)
        seen.append((ledger.expanded(), mesh.routes.routes_per_core))
    assert seen[0] == seen[1]


def test_allreduce_on_an_axis_of_one_core_is_a_free_no_op():
    mesh = Mesh(tiny(), 4, 1)
    ledger = Ledger()
    data = tiles(4, 1, 3)
    for algorithm in ReduceAlgorithm:
        out = allreduce(mesh, data, axis=Axis.X, ledger=ledger, op="a", algorithm=algorithm)
        assert torch.equal(out, data)
    assert ledger.records == [] and mesh.routes.routes_per_core == 0


# ---- segmented reduce --------------------------------------------------------------------------
@st.composite
def segment_cases(draw: st.DrawFn) -> tuple:
    rows, cols = draw(grids)
    axis = draw(axes)
    num = rows if axis is Axis.Y else cols
    cuts = sorted(draw(st.sets(st.integers(1, num - 1), max_size=num - 1))) if num > 1 else []
    bounds = [0, *cuts, num]
    sizes = tuple(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    return rows, cols, axis, sizes, draw(st.sampled_from(list(ReduceOp)))


@settings(max_examples=40, deadline=None)
@given(segment_cases())
def test_segmented_allreduce_equals_the_per_group_sums_or_maxima(case):
    rows, cols, axis, sizes, reduce_op = case
    mesh = Mesh(tiny(), rows, cols)
    data = tiles(rows, cols, 3)
    out = segmented_allreduce(
        mesh, data, axis=axis, group_sizes=sizes, ledger=Ledger(), op="g", reduce_op=reduce_op
    )
    start = 0
    for size in sizes:
        part = data.narrow(axis.tensor_dim, start, size)
        got = out.narrow(axis.tensor_dim, start, size)
        assert torch.allclose(got, dense(part, axis, reduce_op), atol=1e-5)
        start += size


@settings(max_examples=40, deadline=None)
@given(segment_cases(), st.sampled_from([torch.float32, torch.float16, torch.int32, torch.bool]))
def test_segmented_allreduce_on_meta_tensors_gives_the_functional_shape_dtype_and_ledger(
    case, dtype
):
    """Estimate mode's shortcut (one output instead of the per-group ops) against the same
    call on real tiles: shape, dtype (a sum promotes integers) and every record."""
    rows, cols, axis, sizes, reduce_op = case
    outs, ledgers = [], []
    for mode, device in ((Mode.FUNCTIONAL, "cpu"), (Mode.ESTIMATE, "meta")):
        mesh, ledger = Mesh(tiny(), rows, cols, mode=mode), Ledger()
        data = torch.ones(rows, cols, 2, 3, dtype=dtype, device=device)
        outs.append(
            segmented_allreduce(
                mesh,
                data,
                axis=axis,
                group_sizes=sizes,
                ledger=ledger,
                op="g",
                reduce_op=reduce_op,
            )
        )
        ledgers.append(ledger.records)
    (want, got), (want_records, got_records) = outs, ledgers
    assert (got.device.type, tuple(got.shape), got.dtype) == ("meta", tuple(want.shape), want.dtype)
    assert got_records == want_records


def test_segmented_allreduce_rejects_groups_that_do_not_cover_the_axis():
    mesh = Mesh(tiny(), 1, 6)
    for sizes in ((2, 3), (3, 3, 1), (6, 0)):
        with pytest.raises(ValueError, match="group sizes"):
            segmented_allreduce(
                mesh, tiles(1, 6), axis=Axis.X, group_sizes=sizes, ledger=Ledger(), op="g"
            )


def test_primitives_reject_data_that_does_not_match_the_mesh():
    mesh = Mesh(tiny(), 2, 3)
    with pytest.raises(ValueError, match="2x3"):
        broadcast(mesh, tiles(3, 2), axis=Axis.X, root=0, ledger=Ledger(), op="b")


def test_algorithms_ops_and_ring_kinds_given_by_name_behave_like_the_enums():
    mesh = Mesh(tiny(), 1, 5)
    data = tiles(1, 5, 2)
    for name in ("pipeline", "ring", "ktree"):
        out = allreduce(mesh, data, axis=Axis.X, ledger=Ledger(), op="a", algorithm=name)
        assert torch.allclose(out, dense(data, Axis.X, ReduceOp.SUM), atol=1e-6), name
    by_name = allreduce(mesh, data, axis=Axis.X, ledger=Ledger(), op="a", reduce_op="max")
    assert torch.equal(by_name, dense(data, Axis.X, ReduceOp.MAX))
    plain = ring_shift(mesh, data, axis=Axis.X, ledger=Ledger(), op="s", kind="plain")
    assert torch.equal(plain, data.roll(1, dims=1))
    assert ring_successor(5, "plain").tolist() == [1, 2, 3, 4, 0]
    assert mesh.size("y") == 1 and mesh.size("x") == 5
    with pytest.raises(ValueError):
        allreduce(mesh, data, axis=Axis.X, ledger=Ledger(), op="a", algorithm="tree")
