"""The K-tree plan (SPEC.md §10.5), checked against an independent walk of its segments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.mesh import best_fanouts, fanouts_from_groups, tree_plan
from waferllm.mesh.geometry import group_bounds
from waferllm.mesh.ktree import allreduce_latency_cycles, resolve_fanouts


@st.composite
def trees(draw: st.DrawFn) -> tuple[int, tuple[int, ...]]:
    num = draw(st.integers(2, 70))
    fanouts = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    if math.prod(fanouts) < num:
        fanouts = (*fanouts, -(-num // math.prod(fanouts)))
    return num, resolve_fanouts(num, fanouts)


def _paths(num: int, src: np.ndarray, dst: np.ndarray) -> dict[int, list[int]]:
    """Each core's route of segments to the root: the list of cores it passes through."""
    nxt = dict(zip(src.tolist(), dst.tolist(), strict=True))
    assert len(nxt) == len(src), "a core sends twice"
    paths = {}
    for core in range(num):
        path = [core]
        while path[-1] in nxt:
            path.append(nxt[path[-1]])
            assert len(path) <= num, "the segments have a cycle"
        paths[core] = path
    return paths


@settings(max_examples=60, deadline=None)
@given(trees())
def test_every_core_sends_once_and_every_partial_reaches_the_root(case):
    num, fanouts = case
    plan = tree_plan(num, fanouts, 1.0, 1.0)
    paths = _paths(num, plan.src, plan.dst)
    assert {p[-1] for p in paths.values()} == {plan.root}
    assert len(plan.src) == num - 1
    # summing partials along the segments, children first, leaves the total at the root
    value = {core: float(2**core) for core in range(num)}
    pending = {core: int((plan.dst == core).sum()) for core in range(num)}
    queue = [core for core in range(num) if pending[core] == 0 and core != plan.root]
    nxt = dict(zip(plan.src.tolist(), plan.dst.tolist(), strict=True))
    while queue:
        core = queue.pop()
        value[nxt[core]] += value[core]
        pending[nxt[core]] -= 1
        if pending[nxt[core]] == 0 and nxt[core] != plan.root:
            queue.append(nxt[core])
    assert value[plan.root] == float(2**num - 1)


@settings(max_examples=60, deadline=None)
@given(trees(), st.sampled_from([(1.0, 0.0), (0.0, 1.0), (1.0, 30.0), (2.5, 4.0)]))
def test_the_critical_message_is_the_longest_leaf_to_root_path(case, constants):
    """Forward-while-adding chains: a core sends when its last input has arrived, so the
    reduce ends at the max over paths of (hops * alpha + intermediate cores * beta)."""
    num, fanouts = case
    alpha, beta = constants
    plan = tree_plan(num, fanouts, alpha, beta)
    longest = 0.0
    for path in _paths(num, plan.src, plan.dst).values():
        hops = sum(abs(a - b) for a, b in zip(path, path[1:], strict=False))
        longest = max(longest, hops * alpha + max(len(path) - 2, 0) * beta)
    assert plan.critical_hops * alpha + plan.critical_stages * beta == pytest.approx(longest)
    if beta == 0.0:
        assert plan.critical_hops == max(
            sum(abs(a - b) for a, b in zip(p, p[1:], strict=False))
            for p in _paths(num, plan.src, plan.dst).values()
        )


@pytest.mark.parametrize("num", range(4, 40))
@pytest.mark.parametrize("groups", [2, 3, 4, 5])
def test_a_two_level_trees_root_is_the_root_of_its_middle_group(num, groups):
    fanouts = fanouts_from_groups(num, groups)
    starts, sizes = group_bounds(num, -(-num // fanouts[0]))
    middle = len(sizes) // 2
    assert tree_plan(num, fanouts, 1.0, 30.0).root == starts[middle] + sizes[middle] // 2


@pytest.mark.parametrize("num", [2, 3])
@pytest.mark.parametrize("fanouts", [None, (2, 2), (1, 1, 3), (3,)])
def test_axes_of_two_or_three_cores_use_one_chain_to_the_middle(num, fanouts):
    plan = tree_plan(num, resolve_fanouts(num, fanouts), 1.0, 30.0)
    assert plan.root == 1
    assert (
        sorted(zip(plan.src.tolist(), plan.dst.tolist(), strict=True))
        == [(0, 1), (2, 1)][: num - 1]
    )
    assert (plan.critical_hops, plan.critical_stages, plan.levels) == (1, 0, 1)


def test_fanouts_must_be_positive_and_cover_the_axis():
    with pytest.raises(ValueError, match="product"):
        resolve_fanouts(10, (3, 3))
    with pytest.raises(ValueError, match="positive"):
        resolve_fanouts(10, (0, 20))
    with pytest.raises(ValueError, match="positive"):
        resolve_fanouts(10, ())


def test_levels_that_move_nothing_cost_no_routes():
    assert tree_plan(4, (4, 2, 2), 1.0, 1.0).levels == 1  # one group already covers the axis
    assert tree_plan(16, (4, 4), 1.0, 1.0).levels == 2
    assert tree_plan(27, (3, 3, 3), 1.0, 1.0).levels == 3


@pytest.mark.parametrize("num", [4, 9, 16, 33, 100, 240])
def test_the_default_tree_is_two_levels_no_slower_than_any_nearby_group_count(num):
    alpha, beta = 1.0, 30.0
    fanouts = best_fanouts(num, alpha, beta)
    assert len(fanouts) == 2 and math.prod(fanouts) >= num
    chosen = allreduce_latency_cycles(num, fanouts, alpha, beta)
    for groups in range(2, num + 1):
        other = fanouts_from_groups(num, groups)
        if abs(groups - math.sqrt(num)) <= math.sqrt(num) / 2:
            assert chosen <= allreduce_latency_cycles(num, other, alpha, beta)
    assert resolve_fanouts(num, None, alpha=alpha, beta=beta) == fanouts


@pytest.mark.parametrize("num", [4, 17, 100, 361, 600, 661])
@pytest.mark.parametrize("constants", [(1.0, 8.5), (1.0, 30.0), (2.5, 4.0), (0.3, 0.7)])
def test_the_default_tree_is_the_first_least_latency_candidate_of_the_full_plans(num, constants):
    """best_fanouts prices each group count once (the tree depends on G only) on the critical
    path alone: the same choice as pricing every candidate's full plan."""
    alpha, beta = constants
    root_p = math.sqrt(num)
    low = max(2, math.floor(root_p / 2))
    high = max(low, min(math.ceil(num / 2), math.ceil(2 * root_p)))

    def latency(fanouts: tuple[int, ...]) -> float:
        plan = tree_plan(num, fanouts, alpha, beta)
        return plan.latency_cycles(alpha, beta) + max(plan.root, num - 1 - plan.root) * alpha

    candidates = [(b1, -(-num // b1)) for b1 in range(low, high + 1)]
    for fanouts in candidates:
        assert allreduce_latency_cycles(num, fanouts, alpha, beta) == latency(fanouts)
    best = min(candidates, key=lambda f: (latency(f), abs(f[1] - root_p), f[0]))
    assert best_fanouts(num, alpha, beta) == best
