"""The K-tree allreduce's plan (SPEC.md §10.5): groups, roots, segments and critical path.

Pure planning on the core indices of one line; `comm.reduce`/`comm.allreduce` run and price it.
Level 1 cuts the axis into consecutive groups (sizes within one) with the root at offset g // 2;
level k+1 groups the level-k roots the same way and joins them by pass-through routes.
Legend: P cores along the axis; a "member" is a core that takes part in a level.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np

from waferllm.errors import WaferError
from waferllm.mesh.geometry import default_fanouts, group_bounds


@dataclasses.dataclass(frozen=True, eq=False)
class TreePlan:
    """Every segment of the reduce (src -> dst, physical indices) and its critical message.

    Compared and hashed by identity (plans are cached, so equal inputs give the same object).
    `levels` counts the levels that move data (level 1's chains take CHAIN_ROUTES colours,
    every further level TREE_LEVEL_ROUTES).
    """

    src: np.ndarray
    dst: np.ndarray
    root: int
    critical_hops: int
    critical_stages: int
    levels: int

    def latency_cycles(self, alpha: float, beta: float) -> float:
        return self.critical_hops * alpha + self.critical_stages * beta


@dataclasses.dataclass
class _Members:
    """The cores taking part in one level, with their partial's completion time and path."""

    index: np.ndarray  # physical core index along the line
    ready: np.ndarray  # cycles when the member's partial is complete
    hops: np.ndarray  # hops of the critical path ending there
    stages: np.ndarray  # stages of that path
    received: np.ndarray  # the member received a stream (so re-sending it is a stage)


def _first_level(num: int, fanout: int, alpha: float, beta: float) -> tuple[_Members, np.ndarray]:
    """Level 1 in closed form: a side of d cores reaches its root after d hops, d - 1 stages."""
    starts, sizes = group_bounds(num, -(-num // fanout))
    roots = starts + sizes // 2
    far = np.maximum(sizes // 2, sizes - 1 - sizes // 2)
    stages = np.maximum(far - 1, 0)
    members = _Members(roots, far * alpha + stages * beta, far, stages, far > 0)
    owner = np.repeat(roots, sizes)
    return members, owner


def _chain_segments(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every core not its own owner sends one hop towards it (forward-while-adding chains)."""
    pos = np.arange(len(owner))
    senders = pos[owner != pos]
    return senders, senders + np.sign(owner[senders] - senders)


def _upper_level(level: _Members, fanout: int, alpha: float, beta: float) -> _Members:
    """Group the members and chain each group into its middle member: the next level."""
    starts, sizes = group_bounds(len(level.index), -(-len(level.index) // fanout))
    picked = starts + sizes // 2
    nxt = _Members(
        level.index[picked].copy(),
        level.ready[picked].copy(),
        level.hops[picked].copy(),
        level.stages[picked].copy(),
        level.received[picked].copy(),
    )
    for g, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=True)):
        r = size // 2
        for side in (range(start, start + r), range(start + size - 1, start + r, -1)):
            _join_side(level, list(side), start + r, nxt, g, alpha, beta)
    return nxt


def _join_side(
    level: _Members, side: list[int], root: int, nxt: _Members, g: int, alpha: float, beta: float
) -> None:
    """Walk one side's chain from its far end to the root and keep the later arrival."""
    if not side:
        return
    first = side[0]
    t = level.ready[first] + (beta if level.received[first] else 0.0)
    h = int(level.hops[first])
    s = int(level.stages[first]) + int(level.received[first])
    for prev, m in zip(side, side[1:], strict=False):
        arrive = t + abs(int(level.index[m]) - int(level.index[prev])) * alpha
        if level.ready[m] > arrive:  # the member's own partial is the later one
            t, h, s = level.ready[m], int(level.hops[m]), int(level.stages[m])
        else:
            t, h = arrive, h + abs(int(level.index[m]) - int(level.index[prev]))
        t, s = t + beta, s + 1
    hop = abs(int(level.index[root]) - int(level.index[side[-1]]))
    arrival = (t + hop * alpha, h + hop, s)
    # ties (alpha = beta = 0 included) keep the longer path, so hops stay structural
    if arrival > (nxt.ready[g], int(nxt.hops[g]), int(nxt.stages[g])):
        nxt.ready[g], nxt.hops[g], nxt.stages[g] = arrival
    nxt.received[g] = True


@lru_cache(maxsize=4096)
def tree_plan(num: int, fanouts: tuple[int, ...], alpha: float, beta: float) -> TreePlan:
    """The K-tree over `num` cores with fan-outs `fanouts` (bottom level first).

    The critical message is found level by level: a member departs at max(its own ready time,
    the upstream arrival) + beta, and a chain end pays beta if it had received a stream.
    """
    if num == 1:
        empty = np.zeros(0, dtype=np.int64)
        return TreePlan(empty, empty, 0, 0, 0, 0)
    level, owner = _first_level(num, fanouts[0], alpha, beta)
    srcs, dsts = _chain_segments(owner)
    src_parts, dst_parts = [srcs], [dsts]
    levels = int(len(srcs) > 0)
    for fanout in fanouts[1:]:
        if len(level.index) == 1:
            break
        nxt = _upper_level(level, fanout, alpha, beta)
        s, d = _upper_segments(level.index, fanout)
        src_parts.append(s)
        dst_parts.append(d)
        levels += int(len(s) > 0)
        level = nxt
    if len(level.index) != 1:
        raise WaferError(
            f"fan-outs {','.join(map(str, fanouts))} leave {len(level.index)} roots on an axis "
            f"of {num} cores: their product must be at least {num}"
        )
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    src.setflags(write=False)
    dst.setflags(write=False)
    return TreePlan(src, dst, int(level.index[0]), int(level.hops[0]), int(level.stages[0]), levels)


def _upper_segments(index: np.ndarray, fanout: int) -> tuple[np.ndarray, np.ndarray]:
    """Pass-through segments of one upper level: each member to its chain neighbour."""
    starts, sizes = group_bounds(len(index), -(-len(index) // fanout))
    owner = np.repeat(starts + sizes // 2, sizes)
    senders, receivers = _chain_segments(owner)
    return index[senders], index[receivers]


def resolve_fanouts(
    num: int,
    fanouts: tuple[int, ...] | None,
    *,
    alpha: float | None = None,
    beta: float | None = None,
) -> tuple[int, ...]:
    """The fan-outs to use: validated `fanouts`, or the default of SPEC.md §10.5.

    Axes of 2-3 cores use a single chain to the middle whatever was asked. Without fan-outs,
    K = 2 with the group count minimising the modelled latency when alpha and beta are given
    (`best_fanouts`), else G near sqrt(P).
    """
    if fanouts is not None:
        if not fanouts or any(isinstance(b, bool) or int(b) != b or b < 1 for b in fanouts):
            raise WaferError(f"fan-outs must be positive integers, got {fanouts!r}")
        fanouts = tuple(int(b) for b in fanouts)
        if math.prod(fanouts) < num:
            raise WaferError(
                f"fan-outs {','.join(map(str, fanouts))} cover {math.prod(fanouts)} cores, "
                f"fewer than the {num} of the axis: their product must be at least {num}"
            )
    if num <= 3:
        return (num,)
    if fanouts is not None:
        return fanouts
    if alpha is None or beta is None:
        return default_fanouts(num)
    return best_fanouts(num, alpha, beta)


def allreduce_latency_cycles(
    num: int, fanouts: tuple[int, ...], alpha: float, beta: float
) -> float:
    """Latency term of a K-tree allreduce: the reduce's critical message plus the broadcast's
    farthest hop from the root."""
    plan = tree_plan(num, fanouts, alpha, beta)
    return plan.latency_cycles(alpha, beta) + max(plan.root, num - 1 - plan.root) * alpha


@lru_cache(maxsize=4096)
def best_fanouts(num: int, alpha: float, beta: float) -> tuple[int, ...]:
    """K = 2 fan-outs (b1, G = ceil(P/b1)), b1 from sqrt(P)/2 to 2 sqrt(P), minimising
    `allreduce_latency_cycles` (the size terms hardly depend on the tree); ties go to G nearest
    sqrt(P), then the smaller b1. The same rule as `kernels.gemv.best_ktree_fanouts`."""
    if num <= 3:
        return (num,)
    root_p = math.sqrt(num)
    low = max(2, math.floor(root_p / 2))
    high = max(low, min(math.ceil(num / 2), math.ceil(2 * root_p)))
    candidates = {(b1, -(-num // b1)) for b1 in range(low, high + 1)}
    return min(
        candidates,
        key=lambda f: (allreduce_latency_cycles(num, f, alpha, beta), abs(f[1] - root_p), f[0]),
    )
