"""An overlap block's concurrent traffics priced without building their merge
(`phases.merged_cost`): the cycles, critical hops and stages of `traffic.merge_all`, with the
size term remembered by the loads' identities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferllm.device import tiny
from waferllm.mesh import phases
from waferllm.mesh.geometry import Axis
from waferllm.mesh.loads import OuterRamp
from waferllm.mesh.traffic import Traffic, line_traffic, merge_all


def _traffics(seed: int):
    rng = np.random.default_rng(seed)
    device, shape = tiny(), (5, 7)
    out = []
    for _ in range(int(rng.integers(2, 6))):
        axis = Axis.X if rng.integers(2) else Axis.Y
        num, lines = shape[axis.tensor_dim], shape[axis.other.tensor_dim]
        per_line = bool(rng.integers(2))
        size = (lines, num) if per_line else (num,)
        src, dst = rng.integers(0, num, size), rng.integers(0, num, size)
        nbytes = rng.integers(0, 3, size) * int(rng.integers(0, 2))  # some carry nothing
        out.append(
            line_traffic(
                device,
                shape,
                axis,
                src=src,
                dst=dst,
                nbytes=nbytes,
                # ties of the latency term: 17 hops or 2 stages (tiny: 1 and 8.5 cycles)
                critical_hops=int(rng.choice([0, 3, 17])),
                critical_stages=int(rng.choice([0, 2])) if rng.integers(2) else 0,
            )
        )
    if rng.integers(2):
        out.append(out[0].streamed())  # its loads shared
    return out


@pytest.mark.parametrize("seed", range(40))
def test_merged_cost_is_the_merged_traffics_cycles_hops_and_stages(seed):
    traffics = _traffics(seed)
    merged = merge_all(traffics)
    want = (merged.cycles, merged.critical_hops, merged.critical_stages)
    assert phases.merged_cost(traffics) == want
    assert phases.merged_cost(traffics) == want  # the remembered size term


def test_a_step_streamed_behind_another_reuses_its_size_term_and_pays_its_own_latency():
    (first, *rest) = _traffics(3)
    streamed = [first.streamed(), *rest]
    phases._size_term.cache_clear()
    phases.merged_cost([first, *rest])
    phases.merged_cost(streamed)
    assert phases._size_term.cache_info().hits == 1
    merged = merge_all(streamed)
    assert phases.merged_cost(streamed) == (
        merged.cycles,
        merged.critical_hops,
        merged.critical_stages,
    )


def _crossing_pair(seed: int):
    """Two steps along different axes whose lines are alike (a row of ramp loads and a
    column), at random sizes: whole bytes, or fractions whose sums round (the dense merge)."""
    rng = np.random.default_rng(seed)
    device = tiny()
    rows, cols = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    fractions = bool(rng.integers(2))

    def loads(n):
        values = rng.integers(0, 9, n) * float(rng.integers(1, 1 << 20))
        return values * (1.0 + rng.random(n) / 3) if fractions else values

    def step(axis: Axis) -> Traffic:
        num = (cols, rows)[axis is Axis.Y]
        ramp = [loads(num)[None, :] for _ in range(2)]
        links = {(axis, d): loads(max(num - 1, 0))[None, :] for d in (1, -1) if rng.integers(2)}
        return Traffic(
            device=device,
            shape=(rows, cols),
            critical_hops=int(rng.integers(0, 5)),
            critical_stages=int(rng.integers(0, 3)),
            bytes_injected=int(rng.integers(1, 100)),
            links=links,
            ramp_in=ramp[0] if axis is Axis.X else ramp[0].T,
            ramp_out=ramp[1] if axis is Axis.X else ramp[1].T,
        )

    pair = [step(Axis.X), step(Axis.Y)]
    if rng.integers(2):
        pair.reverse()
    factor = int(rng.integers(1, 1000))
    return [t.scaled(factor) if rng.integers(2) else t for t in pair]


@pytest.mark.parametrize("seed", range(60))
def test_two_crossing_steps_cost_their_merge_without_merging(seed):
    pair = _crossing_pair(seed)
    assert phases._crossing_size_term(pair) is not None  # priced from the peaks
    merged = merge_all(pair)
    want = (merged.cycles, merged.critical_hops, merged.critical_stages)
    phases._size_term.cache_clear()
    assert phases.merged_cost(pair) == want
    assert phases._size_term.cache_info().misses == 0


@pytest.mark.parametrize("seed", range(30))
def test_a_scaled_steps_peaks_are_those_of_its_scaled_loads(seed):
    for t in _crossing_pair(seed):
        factor = int(np.random.default_rng(seed).integers(1, 5000))
        scaled = t.scaled(factor)
        assert "peaks" in scaled.__dict__  # carried over, not found again
        fresh = dataclasses.replace(scaled)
        assert scaled.peaks == fresh.peaks
        assert scaled.cycles == fresh.cycles


def test_a_scaled_outer_sum_finds_its_peak_again():
    """An `OuterRamp` scales as its row and column, whose maxima then add with another
    rounding than the sum scaled: its peaks are found again (fractions show the difference)."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        ramp = OuterRamp(rng.random((1, 4)) * 1e3, rng.random((3, 1)) * 1e3)
        t = Traffic(device=tiny(), shape=(3, 4), bytes_injected=1, ramp_in=ramp, ramp_out=ramp)
        factor = int(rng.integers(3, 10**6))
        scaled = t.scaled(factor)
        assert scaled.peaks == dataclasses.replace(scaled).peaks


def test_steps_along_one_axis_or_sharing_a_link_are_merged():
    x, y = _crossing_pair(1)
    loaded = np.full((1, 6), 1000.0)  # the links' term is the size term
    row = Traffic(device=x.device, shape=(7, 7), bytes_injected=1, links={(Axis.X, 1): loaded})
    # a column of ramps, yet a link of the row's: their link loads add up
    shared = dataclasses.replace(row, links={(Axis.X, 1): loaded * 2}, ramp_in=np.ones((7, 1)))
    for pair in ([x, x], [y, y], [x, y, x], [row, shared]):
        assert phases._crossing_size_term(pair) is None
        merged = merge_all(pair)
        assert phases.merged_cost(pair)[0] == merged.cycles
