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
    """The cores taking part in one level, with their partial's completion time and path
    (plain lists: the join walks them member by member)."""

    index: list[int]  # physical core index along the line
    ready: list[float]  # cycles when the member's partial is complete
    hops: list[int]  # hops of the critical path ending there
    stages: list[int]  # stages of that path
    received: list[bool]  # the member received a stream (so re-sending it is a stage)

    def picked(self, chosen: list[int]) -> _Members:
        return _Members(
            [self.index[i] for i in chosen],
            [self.ready[i] for i in chosen],
            [self.hops[i] for i in chosen],
            [self.stages[i] for i in chosen],
            [self.received[i] for i in chosen],
        )


def _first_level(num: int, fanout: int, alpha: float, beta: float) -> _Members:
    """Level 1 in closed form: a side of d cores reaches its root after d hops, d - 1 stages.
    The groups (`geometry.group_bounds`: the first num mod G one core longer) have two sizes."""
    groups = -(-num // fanout)
    base, extra = divmod(num, groups)
    members = _Members([], [], [], [], [])
    for size, count, first in ((base + 1, extra, 0), (base, groups - extra, extra * (base + 1))):
        far = max(size // 2, size - 1 - size // 2)
        stages = max(far - 1, 0)
        members.index += range(first + size // 2, first + count * size, size)
        members.ready += [far * alpha + stages * beta] * count
        members.hops += [far] * count
        members.stages += [stages] * count
        members.received += [far > 0] * count
    return members


def _chain_segments(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every core not its own owner sends one hop towards it (forward-while-adding chains)."""
    pos = np.arange(len(owner))
    senders = pos[owner != pos]
    return senders, senders + np.sign(owner[senders] - senders)


def _upper_level(level: _Members, fanout: int, alpha: float, beta: float) -> _Members:
    """Group the members and chain each group into its middle member: the next level."""
    starts, sizes = group_bounds(len(level.index), -(-len(level.index) // fanout))
    bounds = list(zip(starts.tolist(), sizes.tolist(), strict=True))  # a few groups
    nxt = level.picked([start + size // 2 for start, size in bounds])
    for g, (start, size) in enumerate(bounds):
        r = size // 2
        for side in (range(start, start + r), range(start + size - 1, start + r, -1)):
            _join_side(level, side, start + r, nxt, g, alpha, beta)
    return nxt


def _join_side(
    level: _Members, side: range, root: int, nxt: _Members, g: int, alpha: float, beta: float
) -> None:
    """Walk one side's chain from its far end to the root and keep the later arrival."""
    if not side:
        return
    index, ready = level.index, level.ready
    first = side[0]
    t = ready[first] + (beta if level.received[first] else 0.0)
    h = level.hops[first]
    s = level.stages[first] + int(level.received[first])
    prev = first
    for m in side[1:]:
        arrive = t + abs(index[m] - index[prev]) * alpha
        if ready[m] > arrive:  # the member's own partial is the later one
            t, h, s = ready[m], level.hops[m], level.stages[m]
        else:
            t, h = arrive, h + abs(index[m] - index[prev])
        t, s = t + beta, s + 1
        prev = m
    hop = abs(index[root] - index[side[-1]])
    arrival = (t + hop * alpha, h + hop, s)
    # ties (alpha = beta = 0 included) keep the longer path, so hops stay structural
    if arrival > (nxt.ready[g], nxt.hops[g], nxt.stages[g]):
        nxt.ready[g], nxt.hops[g], nxt.stages[g] = arrival
    nxt.received[g] = True


@dataclasses.dataclass(frozen=True)
class _Critical:
    """The tree's root and its reduce's critical message (no segments)."""

    root: int
    hops: int
    stages: int


@lru_cache(maxsize=4096)
def _critical(num: int, fanouts: tuple[int, ...], alpha: float, beta: float) -> _Critical:
    """The critical message of the K-tree over `num` (>= 2) cores with fan-outs `fanouts`,
    found level by level: a member departs at max(its own ready time, the upstream arrival)
    + beta, and a chain end pays beta if it had received a stream. Pure in its key (the
    plan reads nothing else); `tree_plan` and `allreduce_latency_cycles` share it."""
    level = _first_level(num, fanouts[0], alpha, beta)
    for fanout in fanouts[1:]:
        if len(level.index) == 1:
            break
        level = _upper_level(level, fanout, alpha, beta)
    if len(level.index) != 1:
        raise WaferError(
            f"fan-outs {','.join(map(str, fanouts))} leave {len(level.index)} roots on an axis "
            f"of {num} cores: their product must be at least {num}"
        )
    return _Critical(level.index[0], level.hops[0], level.stages[0])


def _two_level_critical(num: int, groups: int, alpha: float, beta: float) -> _Critical:
    """`_critical(num, (b1, groups))` of a tree whose level 1 cuts the axis into `groups`
    (>= 2) groups and whose level 2 joins them all (b1 = any fan-out with ceil(num/b1) =
    groups), as `best_fanouts` prices dozens per new axis size: in closed form where every
    time the join adds up is exact (`_exact_units`), else by `_two_level_walk`.
    tests/mesh/test_ktree_closed.py compares both with `_critical`."""
    units = _exact_units(num, alpha, beta)
    if units is None:
        return _two_level_walk(num, groups, alpha, beta)
    a, b = units
    base, extra = divmod(num, groups)

    def at(m: int) -> tuple[int, int, int]:
        """Level-1 root m: (index, far side's hops, stages), as `_first_level`."""
        size = base + 1 if m < extra else base
        far = max(size // 2, size - 1 - size // 2)
        index = m * (base + 1) if m < extra else extra * (base + 1) + (m - extra) * base
        return index + size // 2, far, max(far - 1, 0)

    r = groups // 2
    root, far, stages = at(r)
    best = (far * a + stages * b, far, stages)
    for first, members in ((0, r), (groups - 1, groups - 1 - r)):
        if not members:
            continue
        index, far, stages = at(first)
        received = int(far > 0)
        hops = abs(root - index)
        # `_join_side`: no member's own partial is ever later than the stream passing it (a
        # member is at most alpha + beta later than the far end, which starts beta late and
        # is a hop away), so the stream's time, hops and stages add up along the chain
        ready = far * a + stages * b + received * b + hops * a + (members - 1) * b
        arrival = (ready, far + hops, stages + received + members - 1)
        best = max(best, arrival)
    return _Critical(root, best[1], best[2])


def _exact_units(num: int, alpha: float, beta: float) -> tuple[int, int] | None:
    """alpha and beta as whole numbers of a common unit 2**-k, where then every time a
    two-level join over `num` cores adds up stays a whole number of units below 2**53 (at
    most (alpha + beta)(2 num + 1)): each float sum, product and comparison of
    `_two_level_walk` is exact, and equals the same sums in integers. None where not (or
    alpha, beta not finite and >= 0)."""
    if not (math.isfinite(alpha) and math.isfinite(beta) and alpha >= 0 and beta >= 0):
        return None
    (a, a_unit), (b, b_unit) = float(alpha).as_integer_ratio(), float(beta).as_integer_ratio()
    unit = max(a_unit, b_unit)  # powers of two: each divides the larger
    a, b = a * (unit // a_unit), b * (unit // b_unit)
    if (a + b) * 4 * (num + 1) >= 2**53:
        return None
    return a, b


def _two_level_walk(num: int, groups: int, alpha: float, beta: float) -> _Critical:
    """`_two_level_critical` member by member: the same members, the same comparisons on the
    same floats in the same order as `_first_level` then `_join_side` on both sides of the
    middle group root, without the member lists."""
    base, extra = divmod(num, groups)
    kinds = []  # (ready, hops, stages, received) of a level-1 root of each group size
    for size in (base + 1, base):
        far = max(size // 2, size - 1 - size // 2)
        stages = max(far - 1, 0)
        kinds.append((far * alpha + stages * beta, far, stages, far > 0))
    big, small = kinds
    tail = extra * (base + 1) + base // 2
    index = [m * (base + 1) + (base + 1) // 2 for m in range(extra)]
    index += range(tail, tail + (groups - extra) * base, base)
    kind = [big] * extra + [small] * (groups - extra)
    r = groups // 2
    best = kind[r][:3]
    for side in (range(0, r), range(groups - 1, r, -1)):
        if not side:
            continue
        first = side[0]
        t, h, s, received = kind[first]
        t += beta if received else 0.0
        s += int(received)
        prev = index[first]
        for m in side[1:]:
            hop = abs(index[m] - prev)
            arrive = t + hop * alpha
            ready, hops, stages, _ = kind[m]
            if ready > arrive:
                t, h, s = ready, hops, stages
            else:
                t, h = arrive, h + hop
            t, s = t + beta, s + 1
            prev = index[m]
        hop = abs(index[r] - prev)
        arrival = (t + hop * alpha, h + hop, s)
        if arrival > best:
            best = arrival
    return _Critical(index[r], best[1], best[2])


@lru_cache(maxsize=4096)
def tree_plan(num: int, fanouts: tuple[int, ...], alpha: float, beta: float) -> TreePlan:
    """The K-tree over `num` cores with fan-outs `fanouts` (bottom level first): its segments
    level by level and its critical message (`_critical`)."""
    if num == 1:
        empty = np.zeros(0, dtype=np.int64)
        return TreePlan(empty, empty, 0, 0, 0, 0)
    critical = _critical(num, fanouts, alpha, beta)
    starts, sizes = group_bounds(num, -(-num // fanouts[0]))
    srcs, dsts = _chain_segments(np.repeat(starts + sizes // 2, sizes))
    src_parts, dst_parts = [srcs], [dsts]
    levels = int(len(srcs) > 0)
    index = starts + sizes // 2
    for fanout in fanouts[1:]:
        if len(index) == 1:
            break
        s, d = _upper_segments(index, fanout)
        src_parts.append(s)
        dst_parts.append(d)
        levels += int(len(s) > 0)
        starts, sizes = group_bounds(len(index), -(-len(index) // fanout))
        index = index[starts + sizes // 2]
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    src.setflags(write=False)
    dst.setflags(write=False)
    return TreePlan(src, dst, critical.root, critical.hops, critical.stages, levels)


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
    if num == 1:
        return tree_plan(num, fanouts, alpha, beta).latency_cycles(alpha, beta)
    plan = _critical(num, fanouts, alpha, beta)
    latency = plan.hops * alpha + plan.stages * beta  # as TreePlan.latency_cycles
    return latency + max(plan.root, num - 1 - plan.root) * alpha


def _pair_latency(num: int, groups: int, alpha: float, beta: float) -> float:
    """`allreduce_latency_cycles(num, (b1, groups))` for a `best_fanouts` candidate (level 2
    joins all `groups`), from `_two_level_critical`: the same floats."""
    plan = _two_level_critical(num, groups, alpha, beta)
    latency = plan.hops * alpha + plan.stages * beta  # as TreePlan.latency_cycles
    return latency + max(plan.root, num - 1 - plan.root) * alpha


@lru_cache(maxsize=4096)
def best_fanouts(num: int, alpha: float, beta: float) -> tuple[int, ...]:
    """K = 2 fan-outs (b1, G = ceil(P/b1)), b1 from sqrt(P)/2 to 2 sqrt(P), minimising
    `allreduce_latency_cycles` (the size terms hardly depend on the tree); ties go to G nearest
    sqrt(P), then the smaller b1. The same rule as `kernels.gemv.best_ktree_fanouts`.
    The tree of (b1, G) depends on G only (level 1 cuts the axis into ceil(P/b1) = G groups,
    level 2 joins them all), so each G's latency is computed once."""
    if num <= 3:
        return (num,)
    root_p = math.sqrt(num)
    low = max(2, math.floor(root_p / 2))
    high = max(low, min(math.ceil(num / 2), math.ceil(2 * root_p)))
    candidates = {(b1, -(-num // b1)) for b1 in range(low, high + 1)}
    latency = {
        groups: _pair_latency(num, groups, alpha, beta) for groups in {g for _, g in candidates}
    }
    return min(candidates, key=lambda f: (latency[f[1]], abs(f[1] - root_p), f[0]))
