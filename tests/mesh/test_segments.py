"""XY flows priced per flow (mesh/segments.py step functions) equal the per-core walk of
mesh/remote.py: every Traffic field, every load array and its max, the cycles and the busiest
core's transit count, on random flows and on Ladder's tile stores at full-wafer grids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferllm.device import tiny, wse2
from waferllm.kernels.ladder import LadderTiles, _store_flows
from waferllm.mesh.loads import LineRows
from waferllm.mesh.remote import (
    Flows,
    Walk,
    flows,
    walk_for,
    xy_traffic,
    xy_transit_max,
    xy_transit_per_core,
)
from waferllm.mesh.segments import StepLoads, step_at, steps
from waferllm.mesh.traffic import Traffic


def _same_traffic(dense: Traffic, per_flow: Traffic) -> None:
    for field in dataclasses.fields(dense):
        x, y = getattr(dense, field.name), getattr(per_flow, field.name)
        if field.name == "links":
            assert x.keys() == y.keys()
            pairs = [(x[k], y[k]) for k in x]
        elif field.name in ("ramp_in", "ramp_out"):
            pairs = [(x, y)]
        else:
            assert x == y, field.name
            continue
        for a, b in pairs:
            assert isinstance(b, StepLoads)
            assert a.shape == b.shape, field.name
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert a.max(initial=0.0) == b.max(initial=0.0)
            assert a.max() == b.max()
    assert dense.cycles == per_flow.cycles


def _both(shape: tuple[int, int], f: Flows) -> None:
    dev = tiny()
    dense = xy_traffic(dev, shape, f, stages=2, walk=Walk.PER_CORE)
    _same_traffic(dense, xy_traffic(dev, shape, f, stages=2, walk=Walk.PER_FLOW))
    assert xy_transit_max(shape, f) == int(xy_transit_per_core(shape, f).max(initial=0))


@pytest.mark.parametrize("seed", range(40))
def test_per_flow_walk_prices_random_flows_as_the_per_core_walk(seed):
    """Any flows: some of zero bytes or zero hops, repeated ends, one-row or one-column
    meshes, flows crowding a few rows (few busy rows) or spread everywhere."""
    rng = np.random.default_rng(seed)
    rows, cols = (int(rng.integers(1, 14)) for _ in range(2))
    count = int(rng.integers(0, 60))
    src_rows = rows if seed % 2 else min(rows, 2)
    src = (rng.integers(0, src_rows, count), rng.integers(0, cols, count))
    dst = (rng.integers(0, rows, count), rng.integers(0, cols, count))
    nbytes = rng.integers(0, 3, count) * int(rng.integers(1, 5000))
    _both((rows, cols), flows(src, dst, nbytes))


@pytest.mark.parametrize("shape", [(720, 720), (420, 420), (600, 540)])
@pytest.mark.parametrize(
    ("m", "n", "t_m", "t_n", "active"),
    [(4096, 4096, 128, 128, 1024), (4096, 14336, 128, 128, 3584), (1, 14336, 1, 64, 224)],
)
def test_per_flow_walk_prices_ladder_stores_as_the_per_core_walk(shape, m, n, t_m, t_n, active):
    """The flows reproduce prices: Ladder's prefill and decode tile stores on WSE-2 grids."""
    f = _store_flows(wse2().storage_bytes, shape, LadderTiles(t_m, t_n, 16, active), m, n)
    assert walk_for(shape, f) is Walk.PER_FLOW
    _both(shape, f)


def test_walk_is_per_core_when_every_core_sends():
    y, x = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    f = flows((y, x), (x, y), 32)  # T10's transpose
    assert walk_for((6, 6), f) is Walk.PER_CORE
    assert walk_for((60, 60), flows(([0], [0]), ([5], [5]), 32)) is Walk.PER_FLOW


def test_step_loads_are_the_running_sum_of_segments_and_add_like_arrays():
    """Line 0: 3 bytes on 1..3, 5 on 2..4; line 1: 7 on 0; nothing on line 2."""
    loads = StepLoads.of_segments(
        (3, 5),
        line=np.array([0, 0, 1]),
        lo=np.array([1, 2, 0]),
        hi=np.array([4, 5, 1]),
        size=np.array([3.0, 5.0, 7.0]),
    )
    full = np.array([[0, 3, 8, 8, 5], [7, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float64)
    np.testing.assert_array_equal(np.asarray(loads), full)
    assert loads.max() == 8.0 and loads.max(initial=9.0) == 9.0
    other = np.arange(15, dtype=np.float64).reshape(3, 5)
    np.testing.assert_array_equal(other + loads, full + other)
    np.testing.assert_array_equal(loads + other, full + other)
    rows = LineRows(np.array([[1.0, 1, 1, 1, 1]]), np.array([0, 0, 0]), 0)
    np.testing.assert_array_equal(np.asarray(rows + loads), full + 1)
    keys, values = steps(np.array([1, 2]), np.array([4, 5]), np.array([3.0, 5.0]))
    np.testing.assert_array_equal(step_at(keys, values, np.arange(7)), [0, 3, 8, 8, 5, 0, 0])
