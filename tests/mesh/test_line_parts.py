"""Patterns whose lines are all alike are priced once per line length (`pattern_cache.per_line`)
and put on each grid by `traffic.on_grid`: the same Traffic, field for field and array for
array, as the pattern priced on that grid, along both axes of square and rectangular grids,
whatever grid the line was first priced on."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.closed_forms import assert_same_traffic

from waferllm.device import tiny, wse2
from waferllm.mesh import Axis
from waferllm.mesh.ktree import best_fanouts, tree_plan
from waferllm.mesh.patterns import (
    Owners,
    chain_traffic,
    key,
    multicast_traffic,
    permutation_traffic,
    tree_traffic,
)


def _cases(rng: np.random.Generator, num: int) -> list:  # type: ignore[type-arg]
    """(pattern, what) for every kind of line-alike pattern on lines of `num` cores."""
    plan = tree_plan(num, best_fanouts(num, 1.0, 30.0), 1.0, 30.0)
    sizes = [int(g) for g in rng.integers(1, 5, num)]
    groups = Owners.of_groups(_fill(sizes, num))
    one_row = Owners.of_map(rng.integers(0, num, (1, num)))
    return [
        (chain_traffic, Owners.of_roots(num, np.array([int(rng.integers(0, num))]))),
        (chain_traffic, groups),
        (chain_traffic, one_row),
        (multicast_traffic, Owners.of_roots(num, np.array([int(rng.integers(0, num))]))),
        (multicast_traffic, groups),
        (multicast_traffic, one_row),
        (tree_traffic, plan),
        (permutation_traffic, key(rng.permutation(num))),
    ]


def _fill(sizes: list[int], num: int) -> tuple[int, ...]:
    """Group sizes covering exactly `num` cores."""
    out, left = [], num
    for size in sizes:
        if left == 0:
            break
        out.append(min(size, left))
        left -= out[-1]
    return tuple(out)


@pytest.mark.parametrize("seed", range(16))
def test_a_pattern_put_on_a_grid_from_its_line_equals_the_pattern_priced_on_the_grid(seed):
    rng = np.random.default_rng(seed)
    dev = (tiny(), wse2())[seed % 2]
    num = int(rng.integers(2, 13))
    others = [num, int(rng.integers(1, 9)), int(rng.integers(1, 9))]  # square, rectangular
    for pattern, what in _cases(rng, num):
        sizes = [int(rng.integers(2, 5000)), 1, 0, int(rng.integers(2, 5000))]
        for nbytes in sizes if pattern is not permutation_traffic else sizes[:1]:
            for other in others:
                for axis in (Axis.X, Axis.Y):
                    shape = (other, num) if axis is Axis.X else (num, other)
                    got = pattern(dev, shape, axis, what, nbytes)
                    want = pattern.__wrapped__(dev, shape, axis, what, nbytes)
                    assert_same_traffic(got, want)
                    for name in ("links", "ramp_in", "ramp_out"):
                        a, b = getattr(got, name), getattr(want, name)
                        if name == "links":
                            assert list(a) == list(b)
                        else:
                            assert type(a) is type(b) and a.shape == b.shape


def test_a_square_grids_x_and_y_patterns_and_a_grid_sharing_a_side_are_one_pricing():
    dev = tiny()
    owners = Owners.of_roots(11, np.array([5]))
    x = multicast_traffic(dev, (11, 11), Axis.X, owners, 77)
    y = multicast_traffic(dev, (11, 11), Axis.Y, owners, 77)
    other = multicast_traffic(dev, (11, 3), Axis.Y, owners, 77)
    assert x is not y
    assert y.ramp_in.base is x.ramp_in or y.ramp_in is x.ramp_in.T
    assert other.links[(Axis.Y, 1)] is x.links[(Axis.X, 1)]
