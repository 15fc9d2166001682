"""Chains and multicasts within consecutive groups of cores whose owner sits inside the group,
in closed form: the loads of `patterns.chain_traffic` and `patterns.multicast_traffic` for an
owner map given as group sizes and each distinct row's owner offsets (dist-GEMM-T's reduces
and prefill attention's probability multicasts, `Owners.of_group_rows`).

Every load of a core depends only on its group's size s, its owner's offset o and its own
offset j: the arrays are gathered from small (o, j) tables of message counts per group size
(`unit_table`, cached: any grid with groups of that size shares them) times the message's
bytes, the sums are per-group sums.
The patterns' generic paths stay the oracle (tests/mesh/test_group_patterns.py).
Legend: U distinct rows, L lines, G groups, C cores along the axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from waferllm.device import Device
from waferllm.mesh.geometry import Axis
from waferllm.mesh.loads import LineRows, Load
from waferllm.mesh.traffic import Traffic, orient

Table = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # counts(o, j, s): (n, s)


@dataclasses.dataclass(frozen=True, eq=False)
class GroupRows:
    """Group sizes (G,), each distinct row's owner offsets in every group (U, G), each line's
    row (L,); every offset lies inside its group."""

    sizes: np.ndarray
    offsets: np.ndarray
    index: np.ndarray

    @functools.cached_property
    def distinct(self) -> list[int]:
        return [int(s) for s in np.unique(self.sizes)]

    @functools.cached_property
    def _used(self) -> tuple[list[np.ndarray], np.ndarray]:
        """(for each distinct size, the owner offsets its groups use, sorted; (U, G): each
        row's offset in every group as its rank among its size's)."""
        used, rank = [], np.empty(self.offsets.shape, dtype=np.int64)
        for s in self.distinct:
            mine = self.sizes == s
            used.append(np.unique(self.offsets[:, mine]))
            rank[:, mine] = np.searchsorted(used[-1], self.offsets[:, mine])
        return used, rank

    @functools.cached_property
    def place(self) -> np.ndarray:
        """(U, C): every core's place in the flattened tables of `tables`, one (n, s) table
        per distinct size s (its n used offsets by its s cores), in order."""
        sizes, (used, rank) = self.sizes, self._used
        base = np.cumsum([0] + [len(u) * s for u, s in zip(used, self.distinct, strict=True)])
        group_of = np.repeat(np.arange(len(sizes)), sizes)
        size_of = sizes[group_of]
        local = np.arange(len(group_of)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        base_of = base[:-1][np.searchsorted(self.distinct, size_of)]
        return (base_of + local)[None, :] + rank[:, group_of] * size_of[None, :]

    @functools.cached_property
    def peak_place(self) -> np.ndarray:
        """(U, G): each row's owner offset in every group as a place among the tables' rows,
        stacked in order."""
        used, rank = self._used
        base = np.cumsum([0] + [len(u) for u in used])[:-1]
        return base[np.searchsorted(self.distinct, self.sizes)][None, :] + rank

    @functools.cached_property
    def _used_keys(self) -> list[bytes]:
        """Each distinct size's used owner offsets as `unit_table`'s key."""
        return [np.ascontiguousarray(u, dtype=np.int64).tobytes() for u in self._used[0]]

    def count_peaks(self, tables: tuple[UnitTable, ...]) -> np.ndarray:
        """(U,): each distinct row's largest count in these tables (`tables`), found once per
        tables: every size and orientation of one pattern's loads (`TableRows.scaled`, `.T`)
        scales the same counts."""
        peaks = self._count_peaks.get(tables)
        if peaks is None:
            flat = np.concatenate([t.peaks for t in tables])
            peaks = self._count_peaks[tables] = flat[self.peak_place].max(axis=1)
        return peaks

    @functools.cached_property
    def _count_peaks(self) -> dict[tuple[UnitTable, ...], np.ndarray]:
        return {}  # a few kinds of table per owners: `UNIT`'s

    def tables(self, kind: str) -> tuple[UnitTable, ...]:
        """The `UNIT[kind]` table of each distinct size s over the n owner offsets its groups
        use and every core offset j (`unit_table`, shared by every grid with such groups)."""
        return tuple(
            unit_table(kind, s, key) for s, key in zip(self.distinct, self._used_keys, strict=True)
        )

    @functools.cached_property
    def in_order(self) -> bool:
        """Whether every line has its own row, in order (the rows are then the loads)."""
        return len(self.index) == len(self.offsets) and np.array_equal(
            self.index, np.arange(len(self.index))
        )

    def loads(self, kind: str, nbytes: int, cut: slice = slice(None)) -> np.ndarray | TableRows:
        """Every line's loads, `UNIT[kind](o, j, s)` messages of `nbytes` at each core (the
        columns `cut`): the (U, C) rows themselves when every line has its own row in order
        (as `loads.line_rows`), else kept as tables (`TableRows`)."""
        tables = self.tables(kind)
        cores = range(int(self.sizes.sum()))
        for group, j in ((0, 0), (-1, -1)):  # a link array's first or last core carries 0
            if cores[j] not in cores[cut]:
                assert not tables[self.distinct.index(int(self.sizes[group]))].counts[:, j].any()
        rows = TableRows(self, tables, cut, 0, float(nbytes))
        return rows.rows if self.in_order else rows

    def per_row(self, values: np.ndarray) -> int:
        """The sum over every line of a per-(row, group) count (U, G)."""
        return int(values.sum(axis=1, dtype=np.int64)[self.index].sum())

    @property
    def far(self) -> int:
        """The farthest core from its owner: max(o, s - 1 - o) over rows and groups."""
        return int(np.maximum(self.offsets, self.sizes - 1 - self.offsets).max(initial=0))


class TableRows(LineRows):
    """`LineRows` whose distinct rows are gathered from per-group-size unit tables (the
    (n, s) message counts of a core by its owner's offset o and its own offset j) times the
    message bytes `scale`; `cut` keeps some columns: a link array drops the first or the
    last core. The max and each row's max come from the tables' row maxima times `scale`
    (exact: counts of 0, 1 or 2 times whole bytes, and a product keeps the floats' order,
    so the largest product is the largest count's), so a step priced alone or beside a step
    along the other axis (`LinePlus`) never gathers the (U, C) rows; anything else does."""

    def __init__(
        self,
        groups: GroupRows,
        tables: tuple[UnitTable, ...],
        cut: slice,
        axis: int,
        scale: float,
    ) -> None:
        self.groups, self.tables, self.cut, self.scale = groups, tables, cut, scale
        self.index, self.axis = groups.index, axis

    @functools.cached_property
    def rows(self) -> np.ndarray:  # type: ignore[override]
        flat = np.concatenate([t.counts.ravel() for t in self.tables])
        full = flat[self.groups.place[:, self.cut]] * self.scale
        return full if self.axis == 0 else full.T

    @property
    def shape(self) -> tuple[int, ...]:
        width = len(range(int(self.groups.sizes.sum()))[self.cut])
        lines = len(self.index)
        return (lines, width) if self.axis == 0 else (width, lines)

    @property
    def T(self) -> TableRows:  # noqa: N802 (numpy's name)
        return TableRows(self.groups, self.tables, self.cut, 1 - self.axis, self.scale)

    def row_peaks(self) -> np.ndarray:
        """(U,): each distinct row's max, the largest of its groups' table row maxima (a cut
        core's load is 0 and every load >= 0: `unit_table` checks, so the whole tables'
        maxima are the kept columns'); computed once (read-only)."""
        return self._peaks

    @functools.cached_property
    def _peaks(self) -> np.ndarray:
        peaks = self.groups.count_peaks(self.tables) * self.scale
        peaks.setflags(write=False)
        return peaks

    def max(self, initial: float = -np.inf) -> float:
        return float(self.row_peaks().max(initial=initial))

    def scaled(self, factor: int) -> TableRows:
        """Every load times `factor`: the same counts, the bytes times `factor` (whole
        numbers below 2**53: the same floats as scaling each load)."""
        return TableRows(self.groups, self.tables, self.cut, self.axis, self.scale * factor)


# What a core's load counts, in messages, by its owner's offset o and its own offset j in a
# group of s cores (o: (n, 1), j: (1, s)); a load is its count times the message bytes.
UNIT: dict[str, Table] = {
    "past": lambda o, j, s: j > o,  # a core past its owner
    "before": lambda o, j, s: j < o,  # a core before its owner
    "other": lambda o, j, s: j != o,  # every core but the owner
    # a chain core takes in j-1's forward (j-1 < o) and j+1's backward (j+1 > o)
    "chain_in": lambda o, j, s: ((j >= 1) & (j - 1 < o)) * 1 + ((j <= s - 2) & (j + 1 > o)),
    # a multicast owner sends one stream per side it has cores on
    "sends": lambda o, j, s: (j == o) * ((o > 0) * 1 + (o < s - 1)),
}


@dataclasses.dataclass(frozen=True, eq=False)
class UnitTable:
    """A (n, s) table of message counts (float64, read-only) and each row's max (n,)."""

    counts: np.ndarray
    peaks: np.ndarray


@functools.lru_cache(maxsize=512)
def unit_table(kind: str, size: int, used: bytes) -> UnitTable:
    """`UNIT[kind]` over the owner offsets `used` (an int64 array's bytes) and the `size`
    cores of a group. Pure in its key (the table reads o, j and s only), so a group size
    seen on any grid before is not tabled again."""
    o = np.frombuffer(used, dtype=np.int64)[:, None]
    counts = np.broadcast_to(UNIT[kind](o, np.arange(size)[None, :], size), (len(o), size))
    counts = counts.astype(np.float64)
    assert (counts >= 0).all()  # loads: `TableRows.row_peaks` relies on it
    peaks = counts.max(axis=1)
    for array in (counts, peaks):
        array.setflags(write=False)
    return UnitTable(counts=counts, peaks=peaks)


def group_multicast(
    device: Device, shape: tuple[int, int], axis: Axis, rows: GroupRows, nbytes: int
) -> Traffic:
    """`multicast_traffic` of these owners (nbytes > 0): each owner streams to both ends of
    its group; a core past its owner loads the link behind it, one before it the link ahead;
    every core but the owner takes the stream in; the owner sends one stream per side it has
    cores on. Run ends: the group's first core when o > 0, its last when o < s - 1, each
    d hops away (d = o, s - 1 - o: s - 1 byte-hops per group). Slack: the mean over every
    core of the farthest hops minus its own, sum(d) per group = o(o+1)/2 + (s-1-o)(s-o)/2."""
    sizes, offs = rows.sizes, rows.offsets
    hops, lines, num = rows.far, len(rows.index), int(sizes.sum())
    left_hops, right_hops = offs, sizes - 1 - offs
    dist_sum = left_hops * (left_hops + 1) // 2 + right_hops * (right_hops + 1) // 2
    behind = hops * num * lines - rows.per_row(dist_sum)
    ends = rows.per_row((left_hops > 0).astype(np.int64) + (right_hops > 0))
    end_hops = rows.per_row(np.broadcast_to(sizes - 1, offs.shape))
    scale = shape[axis.other.tensor_dim] if lines == 1 else 1
    links: dict[tuple[Axis, int], Load] = {}
    if (right_hops > 0).any():  # some core past its owner: link i carries core i+1's
        links[(axis, +1)] = rows.loads("past", nbytes, slice(1, None))
    if (left_hops > 0).any():
        links[(axis, -1)] = rows.loads("before", nbytes, slice(-1))
    ramp_in = rows.loads("other", nbytes)
    sends = rows.loads("sends", nbytes)
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=hops,
        critical_stages=0,
        bytes_injected=ends * nbytes * scale,
        link_byte_hops=end_hops * nbytes * scale,
        links=links,
        ramp_in=orient(axis, ramp_in),
        ramp_out=orient(axis, sends),
        mean_slack_cycles=device.hop_latency_cycles * float(behind / (lines * num)),
    )


def group_chain(
    device: Device, shape: tuple[int, int], axis: Axis, rows: GroupRows, nbytes: int
) -> Traffic:
    """`chain_traffic` of these owners (nbytes > 0, 2+ cores): every core but the owner sends
    its partial one hop towards it (forward before it, backward past it); a core takes in its
    neighbours' partials that move towards it: the one before it when that lies before its
    owner, the one past it likewise. d hops and d - 1 stages for the farthest core."""
    far = rows.far
    sizes, offs, lines = rows.sizes, rows.offsets, len(rows.index)
    links: dict[tuple[Axis, int], Load] = {}
    if (offs > 0).any():  # some core before its owner: link i carries core i's forward
        links[(axis, +1)] = rows.loads("before", nbytes, slice(-1))
    if (offs < sizes - 1).any():
        links[(axis, -1)] = rows.loads("past", nbytes, slice(1, None))
    # core j takes in j-1's forward (j-1 < o) and j+1's backward (j+1 > o), within the group
    ramp_in = rows.loads("chain_in", nbytes)
    senders = rows.per_row(np.broadcast_to(sizes - 1, offs.shape))
    scale = shape[axis.other.tensor_dim] if lines == 1 else 1
    injected = senders * nbytes * scale
    ramp_out = rows.loads("other", nbytes)
    return one_hop_chains(device, shape, axis, far, injected, links, ramp_in, ramp_out)


def one_hop_chains(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    far: int,
    injected: int,
    links: dict[tuple[Axis, int], Load],
    ramp_in: np.ndarray | LineRows,
    ramp_out: np.ndarray | LineRows,
) -> Traffic:
    """A chain pattern's Traffic from its per-line loads: every segment is one hop (the
    byte-hops are the bytes injected); the farthest core's `far` hops and far - 1 stages."""
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=far,
        critical_stages=max(far - 1, 0),
        bytes_injected=injected,
        link_byte_hops=injected,
        links=links,
        ramp_in=orient(axis, ramp_in),
        ramp_out=orient(axis, ramp_out),
    )


def root_chain(
    device: Device, shape: tuple[int, int], axis: Axis, root: int, nbytes: int
) -> Traffic:
    """`chain_traffic` to one `root` on every line (nbytes > 0, a root on the line): the
    cores before it send forward, those after it back, one hop each, as the owner rows' closed
    form computes it but from the root's place ((1, P) loads, no owner table: a new grid's
    pipeline allreduces price several): link i carries core i's partial forward when i is
    before the root, core i+1's back when i+1 is after it; the root takes in both."""
    num, size = shape[axis.tensor_dim], float(nbytes)
    left, right = root, num - 1 - root
    pos = np.arange(num - 1)
    links: dict[tuple[Axis, int], Load] = {}
    if left > 0:
        links[(axis, +1)] = np.where(pos[None, :] < root, size, 0.0)
    if right > 0:
        links[(axis, -1)] = np.where(pos[None, :] >= root, size, 0.0)
    ramp_in = np.zeros((1, num))
    ramp_in[0, 1 : root + 1] += size
    ramp_in[0, root : num - 1] += size
    ramp_out = np.full((1, num), size)
    ramp_out[0, root] = 0.0
    injected = (num - 1) * nbytes * shape[axis.other.tensor_dim]
    return one_hop_chains(device, shape, axis, max(left, right), injected, links, ramp_in, ramp_out)


def root_multicast(
    device: Device, shape: tuple[int, int], axis: Axis, root: int, nbytes: int
) -> Traffic:
    """`multicast_traffic` from one `root` on every line (nbytes > 0): `group_multicast` of
    one group of the whole line, written for that one row ((1, P) loads, a few array ops: a
    new grid's broadcasts and allreduces price many)."""
    num, size = shape[axis.tensor_dim], float(nbytes)
    left, right = root, num - 1 - root
    pos = np.arange(num)
    hops = max(left, right)
    behind = hops * num - (left * (left + 1) // 2 + right * (right + 1) // 2)
    lines = shape[axis.other.tensor_dim]
    links: dict[tuple[Axis, int], Load] = {}
    if right > 0:  # link i carries the stream to core i+1 past the root
        links[(axis, +1)] = np.where(pos[None, 1:] > root, size, 0.0)
    if left > 0:
        links[(axis, -1)] = np.where(pos[None, :-1] < root, size, 0.0)
    sends = np.zeros((1, num))
    sends[0, root] = float((left > 0) + (right > 0))
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=hops,
        critical_stages=0,
        bytes_injected=((left > 0) + (right > 0)) * nbytes * lines,
        link_byte_hops=(left + right) * nbytes * lines,
        links=links,
        ramp_in=orient(axis, np.where(pos[None, :] != root, size, 0.0)),
        ramp_out=orient(axis, sends * size),
        mean_slack_cycles=device.hop_latency_cycles * float(behind / num),
    )
