"""Run-length coded axes of a re-layout: the line each element of one axis of a tensor sits on
before and after, as runs of consecutive elements that move alike (`relayout.RunMove`).

A block split makes a few runs per line whatever the tensor's size, so a re-layout priced by
its runs costs the lines, not the elements (the vocabulary table's 128K rows). Index
arithmetic only: no costs (`relayout.py`), no tensors (`model/transfers.py` builds the axes).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Steps:
    """A step function over the elements 0..size-1 of one axis: element i sits on line
    `values[k]` for `starts[k] <= i < starts[k + 1]` (starts increasing from 0, the values in
    any order: a heads layout interleaves its columns). Immutable (read-only arrays), equal
    by identity: `joint` remembers the runs of the pairs it was asked."""

    starts: np.ndarray
    values: np.ndarray
    size: int

    def __post_init__(self) -> None:
        self.starts.setflags(write=False)
        self.values.setflags(write=False)

    def expand(self, by: int = 0) -> np.ndarray:
        """The line of every element, `by` lines further (`relayout.Move`'s arrays)."""
        return np.repeat(self.values + by, np.diff(np.append(self.starts, self.size)))


def steps_of(lines: np.ndarray) -> Steps:
    """The steps of `lines` (the line of every element), equal neighbours merged."""
    lines = np.asarray(lines, dtype=np.int64)
    if not lines.size:
        return Steps(_EMPTY, _EMPTY, 0)
    starts = np.concatenate(([0], np.flatnonzero(lines[1:] != lines[:-1]) + 1))
    return Steps(starts, lines[starts], lines.size)


@functools.lru_cache(maxsize=1024)  # a grid side's splits recur in every move and plan
def block_steps(size: int, parts: int) -> Steps:
    """`size` elements split over `parts` lines in blocks of ceil(size / parts), the last one
    shorter (lines past the end hold none): element i on line i // ceil(size / parts)."""
    tile = -(-size // parts)
    starts = np.arange(0, size, tile, dtype=np.int64)
    return Steps(starts, np.arange(starts.size, dtype=np.int64), size)


@dataclasses.dataclass(frozen=True, eq=False)
class Runs:
    """One axis of a move: `length[k]` elements going from line `src[k]` to line `dst[k]`
    (runs of one or more elements; neighbouring runs may share lines). The pricing reads only
    how many elements go from each line to each line, so the runs may list the elements in
    any order and a run may stand for elements that are not neighbours (`placed`'s units).
    Immutable (read-only arrays), equal by identity: the pricing remembers what it read of an
    axis (`run_terms.axis_terms`)."""

    src: np.ndarray
    dst: np.ndarray
    length: np.ndarray

    def __post_init__(self) -> None:
        for array in (self.src, self.dst, self.length):
            array.setflags(write=False)

    @property
    def total(self) -> int:
        """Elements on this axis."""
        return int(self.length.sum())

    @classmethod
    def of(cls, src: np.ndarray, dst: np.ndarray) -> Runs:
        """The runs of element arrays (`relayout.Move`'s): neighbours with equal lines merged."""
        return joint(steps_of(src), steps_of(dst))


@dataclasses.dataclass(frozen=True, eq=False)
class LineShift(Runs):
    """`lines` consecutive lines from `start` on moving to as many from `to` on, one element
    each (a region-to-region hop's axis): runs whose terms have a closed form
    (`run_terms.axis_terms`)."""

    lines: int
    start: int
    to: int

    @classmethod
    def moving(cls, lines: int, start: int, to: int) -> LineShift:
        line = np.arange(lines)
        return cls(start + line, to + line, np.ones(lines, dtype=np.int64), lines, start, to)


@functools.lru_cache(maxsize=256)  # the same axis in several moves (every matmul's K = D)
def placed(src: Steps, dst: Steps, src_by: int, dst_by: int, per_unit: int = 1) -> Runs:
    """`joint(src, dst)` between lines `src_by` and `dst_by` further (the regions' origins),
    each element standing for `per_unit` (an axis of units that move alike: `Runs`): one
    object per axis, origins and multiplicity, so the pricing reads a shared axis once (the
    steps are immutable and keyed by identity, as in `joint`)."""
    runs = joint(src, dst)
    length = runs.length if per_unit == 1 else runs.length * per_unit
    return Runs(runs.src + src_by, runs.dst + dst_by, length)


@functools.lru_cache(maxsize=1024)  # the same axis in several moves (every matmul's K = D)
def joint(src: Steps, dst: Steps) -> Runs:
    """The runs on which both step functions of one axis are constant (read only: cached by
    the steps' identity, and steps never change)."""
    assert src.size == dst.size, (src.size, dst.size)
    if src.size == 0:
        return Runs(_EMPTY, _EMPTY, _EMPTY)
    dense = _DENSE * (src.starts.size + dst.starts.size) >= src.size
    starts, at_src, at_dst = (_dense_starts if dense else _merged_starts)(src, dst)
    length = np.diff(np.append(starts, src.size))
    return Runs(src.values[at_src], dst.values[at_dst], length)


# `joint` marks the steps' starts on the elements once there are at least 1/_DENSE as many
# starts as elements (a heads layout's columns change at nearly every element); below, it
# merges the sorted starts (a block split's few steps over the vocabulary's 128K rows)
_DENSE = 8


def _merged_starts(src: Steps, dst: Steps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`joint`'s run starts (the sorted distinct starts of either) and the step each falls
    in at both ends."""
    both = np.concatenate((src.starts, dst.starts))
    both.sort()
    starts = both[np.concatenate(([True], both[1:] != both[:-1]))]
    at_src = np.searchsorted(src.starts, starts, side="right") - 1
    at_dst = np.searchsorted(dst.starts, starts, side="right") - 1
    return starts, at_src, at_dst


def _dense_starts(src: Steps, dst: Steps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_merged_starts` from marks on the elements (no sort): the starts marked by either,
    and under each the count of each side's own marks up to it, less one (the step it falls
    in: what `searchsorted(..., side="right") - 1` finds, the starts being distinct)."""
    marks = np.zeros((2, src.size), dtype=np.int64)
    marks[0, src.starts] = 1
    marks[1, dst.starts] = 1
    starts = np.flatnonzero(marks[0] | marks[1])
    at = np.cumsum(marks, axis=1)[:, starts] - 1
    return starts, at[0], at[1]


__all__ = ["LineShift", "Runs", "Steps", "block_steps", "joint", "placed", "steps_of"]
