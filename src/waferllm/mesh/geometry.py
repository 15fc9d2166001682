"""Mesh geometry: axes, ring orders (interleaved and plain), hop distances, K-tree groups.

Pure index arithmetic on numpy arrays; no tensors, no costs. Imports nothing of ours.
Legend: P cores along one axis; "position" is a place in a ring, "index" a physical core.
"""

from __future__ import annotations

import enum
import math
from functools import lru_cache

import numpy as np

from waferllm.errors import WaferError


class Axis(enum.StrEnum):
    """A mesh axis: Y runs along a column (rows change), X along a row (columns change)."""

    Y = "y"
    X = "x"

    @property
    def tensor_dim(self) -> int:
        """Which leading dimension of a distributed tensor's data indexes this axis."""
        return 0 if self is Axis.Y else 1

    @property
    def other(self) -> Axis:
        return Axis.X if self is Axis.Y else Axis.Y


class RingKind(enum.StrEnum):
    INTERLEAVED = "interleaved"  # 0, 2, 4, ..., 5, 3, 1: neighbours at most 2 hops apart
    PLAIN = "plain"  # 0, 1, ..., P-1 with the wrap-around link: P-1 hops back


@lru_cache(maxsize=4096)
def ring_order(num: int, kind: RingKind = RingKind.INTERLEAVED) -> np.ndarray:
    """Physical core indices in ring order (position -> index); paper Algorithm 1 INTERLEAVE."""
    kind = RingKind(kind)  # a plain "plain" must not read as interleaved (nor poison the cache)
    if num < 1:
        raise WaferError(f"a ring needs at least one core, got {num}")
    if kind is RingKind.PLAIN:
        order = np.arange(num)
    else:
        order = np.concatenate([np.arange(0, num, 2), np.arange(1, num, 2)[::-1]])
    order.setflags(write=False)
    return order


@lru_cache(maxsize=4096)
def ring_position(num: int, kind: RingKind = RingKind.INTERLEAVED) -> np.ndarray:
    """Inverse of `ring_order`: index -> position."""
    pos = np.empty(num, dtype=np.int64)
    pos[ring_order(num, kind)] = np.arange(num)
    pos.setflags(write=False)
    return pos


@lru_cache(maxsize=4096)
def ring_successor(num: int, kind: RingKind = RingKind.INTERLEAVED, steps: int = 1) -> np.ndarray:
    """dst[i]: the core that index i sends to when the ring advances `steps` positions
    (cached, read-only: ring kernels ask for it every step)."""
    order, pos = ring_order(num, kind), ring_position(num, kind)
    dst = order[(pos + steps) % num]
    dst.setflags(write=False)
    return dst


def shorter_way(steps: np.ndarray, num: int) -> np.ndarray:
    """Signed ring steps in (-num/2, num/2] equivalent to `steps` modulo `num`."""
    s = np.mod(steps, num)
    return np.where(s > num // 2, s - num, s)


def split_sizes(total: int, parts: int) -> np.ndarray:
    """Sizes of `parts` consecutive groups covering `total`, differing by at most one."""
    base, extra = divmod(total, parts)
    sizes = np.empty(parts, dtype=np.int64)  # filled by slices: hundreds of calls per estimate
    sizes[:extra] = base + 1
    sizes[extra:] = base
    return sizes


@lru_cache(maxsize=4096)
def group_bounds(total: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, sizes) of consecutive groups (SPEC.md §10.5)."""
    sizes = split_sizes(total, parts)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return starts, sizes


def default_fanouts(num: int) -> tuple[int, ...]:
    """K = 2 with G near sqrt(P): fan-outs (ceil(P/G), G)."""
    if num <= 3:
        return (num,)
    groups = max(2, round(math.sqrt(num)))
    return (math.ceil(num / groups), groups)


def fanouts_from_groups(num: int, groups: int) -> tuple[int, ...]:
    """`--groups G` means `--fanouts ceil(P/G),G`."""
    if groups < 1:
        raise WaferError(f"--groups must be >= 1, got {groups}")
    return (math.ceil(num / groups), groups)
