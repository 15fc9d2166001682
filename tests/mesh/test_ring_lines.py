"""A ring step whose lines all move alike is priced on one line and put on the grid
(`rings._priced_ring`): the same Traffic, field for field and array for array, as the step
priced on the grid itself, along both axes of square and rectangular grids, both ring kinds,
at several sizes; steps whose lines differ are priced on the grid as before."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers.closed_forms import assert_same_traffic

from waferllm.device import tiny, wse2
from waferllm.mesh import Axis, ring_traffic, rings
from waferllm.mesh.geometry import RingKind
from waferllm.mesh.tiling import logical_grid

GRIDS = [(2, 2), (5, 5), (7, 7), (6, 4), (4, 6), (9, 6), (12, 8), (13, 13)]


def _counts(across: int, fwd: np.ndarray) -> bytes:
    """`rings._directions`' key: each line's logical lines moving forward, and backward."""
    return np.stack([fwd, across - fwd]).astype(np.int64).tobytes()


@pytest.mark.parametrize("shape", GRIDS)
@pytest.mark.parametrize("kind", list(RingKind))
@pytest.mark.parametrize("dev", [wse2(), tiny()])
def test_a_uniform_ring_step_prices_as_on_the_grid(shape, kind, dev):
    size = logical_grid(*shape, algo="meshgemm", max_rows=64, max_cols=64).size
    for axis in (Axis.X, Axis.Y):
        lines = shape[axis.other.tensor_dim]
        across = size // lines  # logical lines per physical line
        for fwd in (across, 0, across // 2):
            key = _counts(across, np.full(lines, fwd, dtype=np.int64))
            for nbytes in (1, 6, 4099):
                got = rings._priced_ring(dev, shape, axis, size, kind, key, nbytes)
                want = rings._ring_traffic.__wrapped__(dev, shape, axis, size, kind, key, nbytes)
                assert_same_traffic(got, want)
                assert got.cycles == want.cycles


def test_a_step_whose_lines_differ_is_priced_on_the_grid():
    shape, dev = (6, 6), wse2()
    fwd = np.array([6, 0, 6, 3, 6, 0], dtype=np.int64)
    key = _counts(6, fwd)
    got = rings._priced_ring(dev, shape, Axis.X, 6, RingKind.INTERLEAVED, key, 40)
    want = rings._ring_traffic.__wrapped__(dev, shape, Axis.X, 6, RingKind.INTERLEAVED, key, 40)
    assert_same_traffic(got, want)


@pytest.mark.parametrize("kind", list(RingKind))
@pytest.mark.parametrize("dev", [wse2(), tiny()])
def test_a_ring_unit_priced_on_one_line_is_the_unit_walked_on_the_grid(kind, dev):
    """`ring_traffic.unit_traffic` (one line, on the grid; the interleaved ring of one logical core
    per core in closed form) against its segments walked on the grid (`walked_unit`)."""
    closed = 0
    for shape in [*GRIDS, (1, 2), (3, 1), (2, 8), (16, 16), (40, 40), (41, 41)]:
        for axis in (Axis.X, Axis.Y):
            num = shape[axis.tensor_dim]
            sizes = {num, logical_grid(*shape, algo="meshgemm", max_rows=64, max_cols=64).size}
            for size, steps, nbytes in itertools.product(sizes, (1, -1, 2), (0, 1, 7, 4099)):
                ring_traffic._line_unit.cache_clear()
                got = ring_traffic.unit_traffic(dev, shape, axis, size, kind, steps, nbytes)
                want = ring_traffic.walked_unit(dev, shape, axis, size, kind, steps, nbytes)
                assert_same_traffic(got, want)
                closed += ring_traffic._line_unit.cache_info().misses and size == num and nbytes > 0
    assert closed  # the closed form was compared, not only the walk


@pytest.mark.parametrize("num", range(2, 70))
def test_the_interleaved_ring_unit_in_closed_form_is_its_walk(num):
    for steps, nbytes in itertools.product((1, -1), (1, 3, 2**20 + 1)):
        got = ring_traffic.interleaved_ring_line(tiny(), num, nbytes)
        want = ring_traffic.walked_unit(
            tiny(), (1, num), Axis.X, num, RingKind.INTERLEAVED, steps, nbytes
        )
        assert_same_traffic(got, want)


@pytest.mark.parametrize("dev", [wse2(), tiny()])
def test_a_ring_collectives_step_is_its_segments_walked(dev):
    """`ring_traffic.ring_step_traffic` (the line's closed form on the grid, the collective's
    stages) against `walked_ring_step`: every field, array and the cycles."""
    for shape in [(1, 1), (1, 2), (2, 1), (3, 3), (5, 8), (13, 2), (40, 41)]:
        for axis, nbytes, stages in itertools.product((Axis.X, Axis.Y), (0, 1, 9, 6000), (0, 3)):
            got = ring_traffic.ring_step_traffic.__wrapped__(dev, shape, axis, nbytes, stages)
            want = ring_traffic.walked_ring_step(dev, shape, axis, nbytes, stages)
            assert_same_traffic(got, want)


def test_a_ring_steps_unit_is_put_on_the_grid_once_for_every_block_size():
    """`_ring_step_traffic` at new sizes scales one cached 1-byte step (`_priced_ring`), the
    same floats as the step priced at that size."""
    shape, dev = (9, 9), wse2()
    key = _counts(1, np.ones(9, dtype=np.int64))
    rings._priced_ring.cache_clear()
    for nbytes in (6, 7, 4099):
        got = rings._ring_step_traffic.__wrapped__(
            dev, shape, Axis.X, 9, RingKind.INTERLEAVED, key, nbytes
        )
        want = rings._ring_traffic.__wrapped__(
            dev, shape, Axis.X, 9, RingKind.INTERLEAVED, key, nbytes
        )
        assert_same_traffic(got, want)
    assert rings._priced_ring.cache_info().misses == 1


@pytest.mark.parametrize("kind", list(RingKind))
def test_step_directions_are_those_of_the_step_and_skew_round_forward_arrays(kind):
    """`rings._step_directions` (cached per grid and axis) against `_directions` of the arrays
    the charges used to build on every call: all lines forward, and the skew's offsets > 0."""
    for size in (1, 2, 3, 4, 5, 8, 12, 13, 24, 36, 660):
        for lines in sorted({d for d in (1, 2, 3, 4, 6, size // 2, size) if d and size % d == 0}):
            across = size // lines
            skew_fwd = rings.skew_offsets(size, kind) > 0
            for skew, forward in ((False, np.ones(size, dtype=bool)), (True, skew_fwd)):
                got = rings._step_directions(skew, size, kind, lines, across)
                assert got == rings._directions(forward.tobytes(), lines, across)
