"""A ring step whose lines all move alike is priced on one line and put on the grid
(`rings._priced_ring`): the same Traffic, field for field and array for array, as the step
priced on the grid itself, along both axes of square and rectangular grids, both ring kinds,
at several sizes; steps whose lines differ are priced on the grid as before."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.closed_forms import assert_same_traffic

from waferllm.device import tiny, wse2
from waferllm.mesh import Axis, rings
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
