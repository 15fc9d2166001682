"""The two-level K-tree's critical message in closed form (`ktree._two_level_critical`, what
`best_fanouts` prices its candidates with), checked against the level-by-level walk."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import PRESETS
from waferllm.mesh.ktree import (
    _critical,
    _exact_units,
    _pair_latency,
    _two_level_critical,
    _two_level_walk,
    allreduce_latency_cycles,
    best_fanouts,
)

CONSTANTS = [(1.0, 8.5), (1.0, 30.0), (3.0, 8.5), (2.5, 4.0), (0.3, 0.7), (0.0, 0.0), (1.0, 0.0)]
CONSTANTS += [(d().hop_latency_cycles, d().stage_latency_cycles) for d in PRESETS.values()]


def _oracle_best(num: int, alpha: float, beta: float) -> tuple[int, ...]:
    """`best_fanouts` with every candidate priced by the walk (`allreduce_latency_cycles`)."""
    root_p = math.sqrt(num)
    low = max(2, math.floor(root_p / 2))
    high = max(low, min(math.ceil(num / 2), math.ceil(2 * root_p)))
    candidates = [(b1, -(-num // b1)) for b1 in range(low, high + 1)]
    latency = {f: allreduce_latency_cycles(num, f, alpha, beta) for f in candidates}
    return min(candidates, key=lambda f: (latency[f], abs(f[1] - root_p), f[0]))


@pytest.mark.parametrize("constants", CONSTANTS)
def test_the_closed_form_is_the_walks_critical_message_for_every_group_count(constants):
    alpha, beta = constants
    for num in [*range(2, 80), 97, 120, 361, 397, 540, 600, 661, 719]:
        for groups in range(1, num + 1):
            b1 = -(-num // groups)
            if -(-num // b1) != groups:
                continue  # no first-level fan-out cuts the axis into this many groups
            closed = _two_level_critical(num, groups, alpha, beta)
            walk = _critical(num, (b1, groups), alpha, beta)
            assert (closed.root, closed.hops, closed.stages) == (walk.root, walk.hops, walk.stages)
            latency = allreduce_latency_cycles(num, (b1, groups), alpha, beta)
            assert _pair_latency(num, groups, alpha, beta) == latency


@settings(max_examples=300, deadline=None)
@given(
    num=st.integers(4, 800),
    alpha=st.floats(0.0, 50.0, allow_nan=False),
    beta=st.floats(0.0, 50.0, allow_nan=False),
)
def test_the_closed_form_matches_the_walk_at_any_latency_constants(num, alpha, beta):
    for groups in range(2, math.isqrt(num) * 2 + 2):
        b1 = -(-num // groups)
        if -(-num // b1) != groups:
            continue
        closed = _two_level_critical(num, groups, alpha, beta)
        walk = _critical(num, (b1, groups), alpha, beta)
        assert (closed.root, closed.hops, closed.stages) == (walk.root, walk.hops, walk.stages)


@settings(max_examples=300, deadline=None)
@given(
    num=st.integers(4, 900),
    alpha=st.integers(0, 400),
    beta=st.integers(0, 400),
    halvings=st.integers(0, 12),
)
def test_the_closed_form_matches_the_walk_at_whole_latency_units(num, alpha, beta, halvings):
    """alpha and beta whole multiples of 2**-halvings (every device preset): the closed form,
    not the member walk, answers, and answers as `_critical` and the member walk do."""
    a, b = alpha / 2**halvings, beta / 2**halvings
    assert _exact_units(num, a, b) is not None
    for groups in range(2, math.isqrt(num) * 2 + 2):
        b1 = -(-num // groups)
        if -(-num // b1) != groups:
            continue
        closed = _two_level_critical(num, groups, a, b)
        walk = _critical(num, (b1, groups), a, b)
        members = _two_level_walk(num, groups, a, b)
        assert (closed.root, closed.hops, closed.stages) == (walk.root, walk.hops, walk.stages)
        assert (members.root, members.hops, members.stages) == (walk.root, walk.hops, walk.stages)


def test_every_device_preset_takes_the_closed_form():
    for preset in PRESETS.values():
        d = preset()
        assert _exact_units(720, d.hop_latency_cycles, d.stage_latency_cycles) is not None


@pytest.mark.parametrize("constants", CONSTANTS)
def test_the_default_fanouts_are_those_the_walk_picks(constants):
    alpha, beta = constants
    for num in [*range(4, 130), 361, 397, 420, 541, 600, 660, 661, 719, 720]:
        assert best_fanouts.__wrapped__(num, alpha, beta) == _oracle_best(num, alpha, beta)
