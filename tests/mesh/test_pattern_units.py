"""`pattern_cache.per_byte` on a new line: the first size is priced, every later size is
the first one's pricing divided by its size (`_unit_of`) and scaled, never priced again;
checked field for field and array for array against the plain pattern at each size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.closed_forms import assert_same_traffic

from waferllm.device import tiny, wse2
from waferllm.mesh import Axis
from waferllm.mesh.ktree import best_fanouts, tree_plan
from waferllm.mesh.pattern_cache import _unit_of
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic, tree_traffic


def _cases(rng: np.random.Generator, num: int) -> list:  # type: ignore[type-arg]
    """Patterns whose lines are alike (priced on one line): a K-tree, one root per line,
    one owner row (groups rooted inside or cut off from their owner)."""
    owner = np.repeat(np.arange(0, num, 3), 3)[:num]
    far = owner.copy()
    far[rng.integers(0, num)] = int(rng.integers(0, num))
    for row in (owner, far):
        row.setflags(write=False)
    plan = tree_plan(num, best_fanouts(num, 1.0, 8.5), 1.0, 8.5)
    return [
        (tree_traffic, plan),
        (multicast_traffic, Owners.of_roots(num, np.array([int(rng.integers(0, num))]))),
        (multicast_traffic, Owners.of_map(owner)),
        (chain_traffic, Owners.of_map(owner)),
        (chain_traffic, Owners.of_map(far)),
    ]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_later_sizes_on_a_new_line_are_the_first_pricing_divided_and_scaled(seed, axis):
    rng = np.random.default_rng(700 + seed)
    base = (tiny, wse2)[seed % 2]()
    # latency constants no other test uses: every key below is new to the caches
    dev = dataclasses.replace(base, hop_latency_cycles=1.0 + float(rng.random()))
    num, other = int(rng.integers(4, 60)), int(rng.integers(1, 9))
    shape = (other, num) if axis is Axis.X else (num, other)
    sizes = [int(rng.integers(2, 5000)), int(rng.integers(2, 5000)), 2**20 + 7, 3, 1]
    for pattern, what in _cases(rng, num):
        for nbytes in sizes:
            got = pattern(dev, shape, axis, what, nbytes)
            want = pattern.__wrapped__(dev, shape, axis, what, nbytes)
            assert_same_traffic(got, want)
            assert got.cycles == want.cycles
            for field in ("bytes_injected", "link_byte_hops"):  # records print their types
                assert type(getattr(got, field)) is type(getattr(want, field))


@pytest.mark.parametrize("seed", range(6))
def test_the_unit_of_a_line_pricing_is_the_pattern_priced_at_one_byte(seed):
    rng = np.random.default_rng(800 + seed)
    dev, num = wse2(), int(rng.integers(4, 80))
    nbytes = int(rng.integers(2, 10**6))
    for pattern, what in _cases(rng, num):
        priced = pattern.__wrapped__(dev, (1, num), Axis.X, what, nbytes)
        unit = _unit_of(priced, nbytes)
        assert unit is not None
        assert_same_traffic(unit, pattern.__wrapped__(dev, (1, num), Axis.X, what, 1))
