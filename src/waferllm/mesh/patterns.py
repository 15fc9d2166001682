"""The traffic of each communication pattern along one axis: who sends how many bytes to whom.

Patterns depend only on shapes, so they are cached (`pattern_cache`: per line length, per byte)
and cost the same in functional and estimate mode; `comm` moves the data and charges them,
`traffic` prices them (SPEC.md §10.6), `group_patterns` has closed forms for owners inside
consecutive groups. Arrays come
as hashable keys (`key`/`unkey`). `Owners` says, for every core, the core its line's data
converges to or comes from (a root per line, or the middle of each group of consecutive cores).
Legend: P cores along the axis, L lines (1 when every line is alike).
"""

from __future__ import annotations

import dataclasses
import functools
from functools import lru_cache
from typing import Any

import numpy as np

from waferllm.device import Device
from waferllm.mesh.geometry import Axis
from waferllm.mesh.group_patterns import (
    GroupRows,
    group_chain,
    group_multicast,
    one_hop_chains,
    root_chain,
    root_multicast,
)
from waferllm.mesh.ktree import TreePlan
from waferllm.mesh.loads import Load, line_rows
from waferllm.mesh.pattern_cache import per_byte, per_line
from waferllm.mesh.traffic import Traffic, line_traffic, orient

ArrayKey = tuple[tuple[int, ...], bytes]


def key(array: np.ndarray) -> ArrayKey:
    """A hashable stand-in for an int64 array (for the caches below)."""
    array = np.ascontiguousarray(array, dtype=np.int64)
    return (array.shape, array.tobytes())


def unkey(array_key: ArrayKey) -> np.ndarray:
    shape, raw = array_key
    return np.frombuffer(raw, dtype=np.int64).reshape(shape)


@dataclasses.dataclass(frozen=True)
class Owners:
    """Each core's root on a line of `num` cores: `roots` (a key of an (L,) array, L = 1 when
    every line is alike) or the middle core (offset g // 2) of groups of `group_sizes`."""

    num: int
    roots: ArrayKey | None = None
    group_sizes: tuple[int, ...] | None = None
    owner_map: ArrayKey | None = None  # (U, P): the distinct rows of any owner map
    row_of_line: ArrayKey | None = None  # (L,): each line's row of owner_map (or offsets)
    group_offsets: ArrayKey | None = None  # (U, G): each row's owner offset in every group

    @classmethod
    def of_roots(cls, num: int, roots: np.ndarray) -> Owners:
        return cls(num, roots=key(roots))

    @classmethod
    def of_groups(cls, sizes: tuple[int, ...]) -> Owners:
        return cls(sum(sizes), group_sizes=tuple(sizes))

    @classmethod
    def of_map(cls, owner: np.ndarray) -> Owners:
        """Each core's owner given directly, (L, P) or (P,): e.g. consecutive groups whose
        root differs per line (dist-GEMM-T's reduce within kv-groups of columns). Kept as
        its distinct rows: patterns price those and give each line its row's loads."""
        return cls.of_rows(*distinct_rows(np.atleast_2d(owner)))

    @classmethod
    def of_rows(cls, table: np.ndarray, row_of_line: np.ndarray) -> Owners:
        """The owner map given as its distinct rows (U, P) and each line's row (L,), as
        `of_map` keeps it (a kernel that knows them in closed form skips the (L, P) map)."""
        return cls(table.shape[-1], owner_map=key(table), row_of_line=key(row_of_line))

    @classmethod
    def of_group_rows(
        cls, sizes: tuple[int, ...], offsets: np.ndarray, row_of_line: np.ndarray
    ) -> Owners:
        """Consecutive groups of `sizes` whose owner differs per row: each distinct row's
        owner offset inside every group (U, G), distinct rows, and each line's row (L,)
        (dist-GEMM-T's owner columns: `group_patterns` prices them in closed form)."""
        return cls(
            sum(sizes), group_sizes=sizes, group_offsets=key(offsets), row_of_line=key(row_of_line)
        )

    def group_rows(self) -> GroupRows | None:
        """The groups and their owner offsets, when given so (`of_group_rows`); one object
        per `Owners` (its tables' offsets, cached, serve every pattern of these owners: a
        kernel's reduce and multicast of one step's owners)."""
        return self._group_rows

    @functools.cached_property
    def _group_rows(self) -> GroupRows | None:
        if self.group_offsets is None or self.group_sizes is None or self.row_of_line is None:
            return None
        sizes = np.asarray(self.group_sizes, dtype=np.int64)
        return GroupRows(sizes, unkey(self.group_offsets), unkey(self.row_of_line))

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(U, P) distinct owner rows and the (L,) row of every line."""
        if self.owner_map is not None and self.row_of_line is not None:
            return unkey(self.owner_map), unkey(self.row_of_line)
        groups = self.group_rows()
        if groups is not None:
            starts = np.cumsum(groups.sizes) - groups.sizes
            table = np.repeat(starts[None, :] + groups.offsets, groups.sizes, axis=1)
            return table, groups.index
        full = self.array()
        return full, np.arange(full.shape[0])

    def array(self) -> np.ndarray:
        """(L, P): the owner of every core."""
        if self.row_of_line is not None:
            table, index = self.rows()
            return table[index]
        if self.roots is not None:
            roots = unkey(self.roots)
            return np.broadcast_to(roots[:, None], (len(roots), self.num))
        assert self.group_sizes is not None
        sizes = np.asarray(self.group_sizes, dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        return np.repeat(starts + sizes // 2, sizes)[None, :]


def distinct_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of a 2-D int array in order of first appearance, each row's index
    among them): rows grouped by a hash (a dot product with fixed random weights), the grouping
    then checked against the array (on a collision, every row is its own)."""
    lines, num = array.shape
    weights = np.random.default_rng(num).integers(1, 1 << 31, num)
    _, first, inverse = np.unique(array @ weights, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    table, index = array[first[order]], rank[inverse.reshape(-1)]
    if len(first) < lines and not np.array_equal(table[index], array):
        return array, np.arange(lines)
    return table, index


def _one_owner_row(owners: Owners) -> bool:
    """Whether every line has the same owners (one root, groups, or a one-row map)."""
    if owners.roots is not None:
        return owners.roots[0] == (1,)
    if owners.row_of_line is not None:
        return owners.row_of_line[0] == (1,)
    return owners.group_sizes is not None


def _always(_: Any) -> bool:
    return True


# Per-line patterns hold (L, P) arrays, tens of MB at wafer scale: hence the small caches.
@per_line(maxsize=128, alike=lambda dst_key: len(dst_key[0]) == 1)
def permutation_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, dst_key: ArrayKey, nbytes: int
) -> Traffic:
    """Core i of every line sends its tile straight to dst[i]: max |dst - i| hops, no stages."""
    dst = unkey(dst_key)
    src = np.broadcast_to(np.arange(dst.shape[-1]), dst.shape)
    hops = int(np.abs(dst - src).max(initial=0))
    return line_traffic(
        device, shape, axis, src=src, dst=dst, nbytes=nbytes, critical_hops=hops, critical_stages=0
    )


@per_byte(maxsize=128, alike=_one_owner_row)
def chain_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, owners: Owners, nbytes: int
) -> Traffic:
    """Forward-while-adding chains: every core sends one hop towards its owner (pipeline reduce,
    segmented reduce). Critical path: the farthest core's d hops and d - 1 stages."""
    root = int(unkey(owners.roots)[0]) if owners.roots and owners.roots[0] == (1,) else -1
    if 0 <= root < owners.num == shape[axis.tensor_dim] and nbytes > 0 and owners.num >= 2:
        return root_chain(device, shape, axis, root, nbytes)
    groups = owners.group_rows()
    if groups is not None and nbytes > 0 and owners.num >= 2:
        return group_chain(device, shape, axis, groups, nbytes)
    table, index = owners.rows()
    num = table.shape[-1]
    small = _narrow(table)
    far = int(np.abs(small - np.arange(num, dtype=small.dtype)).max(initial=0))
    if nbytes > 0 and num >= 2:
        return _chain_closed_form(device, shape, axis, small, index, far, nbytes)
    owner = owners.array()
    pos = np.broadcast_to(np.arange(num), owner.shape)
    return line_traffic(
        device,
        shape,
        axis,
        src=pos,
        dst=pos + np.sign(owner - pos),
        nbytes=nbytes,
        critical_hops=far,
        critical_stages=max(far - 1, 0),
    )


def _chain_closed_form(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    table: np.ndarray,
    index: np.ndarray,
    far: int,
    nbytes: int,
) -> Traffic:
    """`chain_traffic` without `line_traffic`'s segment arrays (what it computes for one-hop
    chains, `traffic._one_hop_loads`, from two comparisons), per distinct owner row: link i
    carries core i's partial forward when its owner lies beyond it and core i+1's backward
    when its owner lies before; a core's ramp sends its partial unless it is the owner and
    takes in its neighbours'. Every segment is one hop: the byte-hops are the bytes."""
    size, pos = float(nbytes), np.arange(table.shape[-1], dtype=table.dtype)
    beyond, before = table > pos, table < pos
    forward = np.where(beyond, size, 0.0)
    back = np.where(before, size, 0.0)
    links: dict[tuple[Axis, int], Load] = {}
    if beyond.any():
        links[(axis, +1)] = line_rows(forward[:, :-1], index)
    if before.any():
        links[(axis, -1)] = line_rows(back[:, 1:], index)
    ramp_in = np.zeros(table.shape)
    ramp_in[:, 1:] += forward[:, :-1]
    ramp_in[:, :-1] += back[:, 1:]
    lines = len(index)
    scale = shape[axis.other.tensor_dim] if lines == 1 else 1
    senders = int(np.count_nonzero(beyond | before, axis=1)[index].sum())
    injected = senders * nbytes * scale
    ramp_out = line_rows(forward + back, index)
    return one_hop_chains(
        device, shape, axis, far, injected, links, line_rows(ramp_in, index), ramp_out
    )


@per_byte(maxsize=128, alike=_one_owner_row)
def multicast_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, owners: Owners, nbytes: int
) -> Traffic:
    """Every owner sends one multicast stream to each side of the cores it owns (the two sends
    share its ramp, one after the other); every core the stream passes takes it in through its
    ramp (tx = {RAMP, next}). Critical path: the farthest core's hops, no stages."""
    if owners.roots is not None and owners.roots[0] == (1,) and nbytes > 0:
        return root_multicast(device, shape, axis, int(unkey(owners.roots)[0]), nbytes)
    groups = owners.group_rows()
    if groups is not None and nbytes > 0:
        return group_multicast(device, shape, axis, groups, nbytes)
    table, index = owners.rows()
    num = table.shape[-1]
    small = _narrow(table)
    pos = np.arange(num, dtype=small.dtype)
    dist, is_end = _multicast_ends(small, pos)
    hops = int(dist.max(initial=0))
    lines = len(index)
    # the mean over every core of the lines (whole numbers: the sums are exact, in int64)
    behind = int((hops * num - dist.sum(axis=1, dtype=np.int64))[index].sum())
    slack = device.hop_latency_cycles * float(behind / (lines * num))
    loads = _run_loads(axis, small, pos, is_end, float(nbytes))
    if loads is None:  # some run cut off from its owner: every line's segments summed
        owner = owners.array()
        pos = np.broadcast_to(np.arange(owner.shape[-1]), owner.shape)
        dist, is_end = _multicast_ends(owner, pos)
        return line_traffic(
            device,
            shape,
            axis,
            src=np.where(is_end, owner, pos),
            dst=pos,
            nbytes=nbytes,
            critical_hops=hops,
            critical_stages=0,
            ramp_in_extra=np.where((dist > 0) & ~is_end, float(nbytes), 0.0),
            mean_slack_cycles=slack,
        )
    # what `line_traffic` makes of these loads, without its arrays: each run's end receives a
    # segment of dist hops; every core past an owner takes the stream in (the run's end as
    # the segment's end, the others passed)
    links, ramp_out = loads
    scale = shape[axis.other.tensor_dim] if lines == 1 else 1
    ends = int(np.count_nonzero(is_end, axis=1)[index].sum())
    end_hops = int(dist.sum(axis=1, where=is_end, dtype=np.int64)[index].sum())
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=hops,
        critical_stages=0,
        bytes_injected=ends * nbytes * scale,
        link_byte_hops=end_hops * nbytes * scale,
        links={k: line_rows(v, index) for k, v in links.items()},
        ramp_in=orient(axis, line_rows(np.where(dist > 0, float(nbytes), 0.0), index)),
        ramp_out=orient(axis, line_rows(ramp_out, index)),
        mean_slack_cycles=slack,
    )


def _narrow(table: np.ndarray) -> np.ndarray:
    """An owner table (core indices along a line of P) as int16 when P allows (the same
    comparisons and differences on a quarter of the bytes; sums are taken in int64)."""
    return table.astype(np.int16) if table.shape[-1] < 2**14 else table


def _multicast_ends(owner: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each core's distance to its owner, whether it ends its run: the core farthest from
    the owner on its side, where the multicast segment stops); `pos` (P,) or like `owner`."""
    dist = np.abs(owner - pos)
    changes = owner[:, 1:] != owner[:, :-1]
    last = np.concatenate([changes, np.ones_like(owner[:, :1], bool)], 1)
    first = np.concatenate([np.ones_like(owner[:, :1], bool), changes], 1)
    return dist, (dist > 0) & np.where(pos > owner, last, first)


def _run_loads(
    axis: Axis, owner: np.ndarray, pos: np.ndarray, is_end: np.ndarray, nbytes: float
) -> tuple[dict[tuple[Axis, int], np.ndarray], np.ndarray] | None:
    """A multicast's loads in closed form when every run of cores sharing an owner reaches
    it (the owner inside or next to its run): the stream from owner o to the run's far end
    crosses every link between, so link i carries a forward stream exactly when core i+1
    lies past its owner (o < i+1) and a backward one when core i lies before it; the owner
    sends one stream per side it has cores on: (links, ramp out). None when some run is cut
    off from its owner (`line_traffic` sums per line then)."""
    if nbytes <= 0:
        return None
    right, left = owner < pos, owner > pos
    # a core past its owner follows a core with the same owner, or the owner itself
    same = owner[:, 1:] == owner[:, :-1]
    after_owner, before_owner = owner[:, 1:] == pos[..., :-1], owner[:, :-1] == pos[..., 1:]
    prev_ok, next_ok = same | after_owner, same | before_owner
    if (right[:, 0].any() or left[:, -1].any() or (right[:, 1:] & ~prev_ok).any()
            or (left[:, :-1] & ~next_ok).any()):  # fmt: skip
        return None
    links: dict[tuple[Axis, int], np.ndarray] = {}
    if right.any():
        links[(axis, +1)] = np.where(right[:, 1:], nbytes, 0.0)
    if left.any():
        links[(axis, -1)] = np.where(left[:, :-1], nbytes, 0.0)
    sends = np.zeros(owner.shape)
    sends[:, :-1] += after_owner  # the owner of the run on its right
    sends[:, 1:] += before_owner  # ... on its left
    return links, sends * nbytes


@lru_cache(maxsize=1024)
def tail_shift_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, first: int, nbytes: int
) -> Traffic:
    """Cores first..P-1 of every line each send one tile one hop towards index 0, all at once
    (the shift-based KV cache, SPEC.md §10.9): 1 hop, no stages.

    Built in closed form (what `line_traffic` computes for these segments: links first-1..P-2
    towards 0 and the ramps they leave and enter carry `nbytes` each, every line alike): a
    decode estimate prices one shift per first shifting row, hundreds per new grid."""
    num = shape[axis.tensor_dim]
    senders = num - first
    if nbytes <= 0 or senders <= 0 or first < 1:
        src = np.arange(first, num)
        return line_traffic(
            device,
            shape,
            axis,
            src=src,
            dst=src - 1,
            nbytes=nbytes,
            critical_hops=1,
            critical_stages=0,
        )
    link = np.zeros((1, num - 1))
    link[0, first - 1 :] = float(nbytes)
    ramp_out, ramp_in = np.zeros((1, num)), np.zeros((1, num))
    ramp_out[0, first:] = float(nbytes)
    ramp_in[0, first - 1 : num - 1] = float(nbytes)
    injected = senders * nbytes * shape[axis.other.tensor_dim]
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=1,
        critical_stages=0,
        bytes_injected=injected,
        link_byte_hops=injected,  # every segment crosses one link
        links={(axis, -1): link},
        ramp_in=ramp_in if axis is Axis.X else ramp_in.T,
        ramp_out=ramp_out if axis is Axis.X else ramp_out.T,
    )


@per_byte(maxsize=4096, alike=_always)
def tree_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, plan: TreePlan, nbytes: int
) -> Traffic:
    """Every level of a K-tree reduce as one step: loads add up where levels share a link or
    a ramp (a root takes in its streams one after the other)."""
    return line_traffic(
        device,
        shape,
        axis,
        src=plan.src[None, :],
        dst=plan.dst[None, :],
        nbytes=nbytes,
        critical_hops=plan.critical_hops,
        critical_stages=plan.critical_stages,
    )
