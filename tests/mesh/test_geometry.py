"""Ring orders, hop distances and K-tree groups (pure index arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from waferllm.mesh.geometry import (
    Axis,
    RingKind,
    default_fanouts,
    fanouts_from_groups,
    group_bounds,
    ring_order,
    ring_position,
    ring_successor,
    shorter_way,
)

SIZES = [*range(1, 20), 31, 64, 97]


def test_axis_y_indexes_rows_and_x_indexes_columns():
    assert Axis.Y.tensor_dim == 0 and Axis.X.tensor_dim == 1
    assert Axis.X.other is Axis.Y and Axis.Y.other is Axis.X


@pytest.mark.parametrize(
    ("num", "expected"),
    [(8, [0, 2, 4, 6, 7, 5, 3, 1]), (7, [0, 2, 4, 6, 5, 3, 1]), (2, [0, 1]), (1, [0])],
)
def test_interleaved_ring_is_the_papers_order_for_even_and_odd_sizes(num, expected):
    assert ring_order(num, RingKind.INTERLEAVED).tolist() == expected


@pytest.mark.parametrize("num", [n for n in SIZES if n >= 3])
def test_interleaved_ring_neighbours_are_at_most_two_hops_apart(num):
    order = ring_order(num, RingKind.INTERLEAVED)
    hops = np.abs(order - np.roll(order, -1))
    assert sorted(order.tolist()) == list(range(num))
    assert hops.max() == 2
    # exactly the two turn-arounds (1 -> 0 and the far end) are single hops
    assert (hops == 1).sum() == 2


@pytest.mark.parametrize("num", [n for n in SIZES if n >= 2])
def test_plain_ring_wraps_around_in_p_minus_one_hops(num):
    order = ring_order(num, RingKind.PLAIN)
    hops = np.abs(order - np.roll(order, -1))
    assert order.tolist() == list(range(num))
    assert hops.max() == num - 1
    assert (hops == 1).sum() == (num - 1 if num > 2 else 2)


@pytest.mark.parametrize("kind", list(RingKind))
@pytest.mark.parametrize("num", SIZES)
def test_ring_successor_composes_to_the_identity_around_the_ring(kind, num):
    step = ring_successor(num, kind)
    assert sorted(step.tolist()) == list(range(num))
    at = np.arange(num)
    for _ in range(num):
        at = step[at]
    assert at.tolist() == list(range(num))
    # every core is visited once before returning: a single cycle, not several
    seen, core = set(), 0
    for _ in range(num):
        seen.add(core)
        core = int(step[core])
    assert len(seen) == num
    assert ring_successor(num, kind, steps=-1)[step].tolist() == list(range(num))


@pytest.mark.parametrize("kind", list(RingKind))
@pytest.mark.parametrize("num", SIZES)
def test_ring_position_inverts_ring_order(kind, num):
    assert ring_position(num, kind)[ring_order(num, kind)].tolist() == list(range(num))


def test_ring_orders_are_read_only_so_a_cached_order_cannot_be_corrupted():
    with pytest.raises(ValueError):
        ring_order(6)[0] = 3


def test_shorter_way_picks_the_signed_step_of_least_magnitude():
    assert shorter_way(np.arange(8), 8).tolist() == [0, 1, 2, 3, 4, -3, -2, -1]
    assert shorter_way(np.array([-1, 9]), 7).tolist() == [-1, 2]


@pytest.mark.parametrize("total", [1, 2, 7, 10, 16, 33])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_groups_are_consecutive_cover_the_axis_and_differ_by_at_most_one(total, parts):
    if parts > total:
        return
    starts, sizes = group_bounds(total, parts)
    assert sizes.sum() == total and len(sizes) == parts
    assert sizes.max() - sizes.min() <= 1
    assert (starts == np.concatenate([[0], np.cumsum(sizes)[:-1]])).all()


@pytest.mark.parametrize("num", [4, 10, 16, 17, 100, 994])
def test_default_fanouts_are_a_two_level_tree_with_about_sqrt_p_groups(num):
    b1, groups = default_fanouts(num)
    assert b1 * groups >= num
    assert abs(groups - math.sqrt(num)) <= 1


@pytest.mark.parametrize(("num", "groups", "fanouts"), [(16, 4, (4, 4)), (10, 4, (3, 4))])
def test_groups_option_means_fanouts_ceil_p_over_g_then_g(num, groups, fanouts):
    assert fanouts_from_groups(num, groups) == fanouts


def test_groups_option_rejects_zero_groups():
    with pytest.raises(ValueError, match="--groups"):
        fanouts_from_groups(8, 0)
