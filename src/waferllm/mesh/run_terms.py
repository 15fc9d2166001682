"""What a re-layout's pricing reads of one axis of a move (`runs.Runs`): elements per line,
the cuts they cross, the lines they start and end on, remembered per axis (a weights re-layout
reads every matmul's K axis, and both FFN inputs' moves, again). Counts only: the message
model's pricing is `relayout.py`'s.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from waferllm.mesh.runs import LineShift, Runs


@functools.lru_cache(maxsize=256)
def run_ends(runs: Runs) -> tuple[int, int, int, int]:
    """The lowest and highest source lines, then destination lines, of an axis's runs
    (immutable, keyed by identity)."""
    src, dst = runs.src, runs.dst
    return int(src.min()), int(src.max()), int(dst.min()), int(dst.max())


@dataclasses.dataclass(frozen=True, kw_only=True)
class AxisTerms:
    """What a direct move reads of one axis's runs on a mesh side of `size` lines."""

    total: int  # elements
    per_src: np.ndarray  # elements per source line (float64, whole numbers)
    per_dst: np.ndarray  # per destination line
    home: np.ndarray  # per line, those that stay on it
    stayed: int  # elements that stay
    dist: int  # element hops along the axis
    hops: int  # the farthest element's hops
    cuts: np.ndarray  # `run_cuts`


@functools.lru_cache(maxsize=256)
def axis_terms(runs: Runs, size: int) -> AxisTerms:
    """One axis's share of `relayout._pair_terms` (a function of the runs, immutable and keyed by
    identity, and the side's lines only); a shift of lines within the side in closed form."""
    if isinstance(runs, LineShift) and _within(runs, size):
        terms = _shift_terms(runs, size)
    else:
        terms = _walked_terms(runs, size)
    for array in (terms.per_src, terms.per_dst, terms.home, terms.cuts):
        array.setflags(write=False)  # shared by every move that reads the axis
    return terms


def _within(shift: LineShift, size: int) -> bool:
    """Whether both blocks of a shift lie on the side's `size` lines (and hold some)."""
    ends = (shift.start, shift.to)
    return shift.lines > 0 and min(ends) >= 0 and max(ends) + shift.lines <= size


def _shift_terms(runs: LineShift, size: int) -> AxisTerms:
    """`_walked_terms` of `lines` lines from `start` on to as many from `to` on, one element
    each: every line between the two blocks' ends crossed by the elements on either side,
    in whole numbers (the same float64 values the runs' sums give)."""
    lines, start, to = runs.lines, runs.start, runs.to
    distance = abs(to - start)
    line = np.arange(size)
    per_src = ((line >= start) & (line < start + lines)).astype(np.float64)
    per_dst = ((line >= to) & (line < to + lines)).astype(np.float64)
    cuts = np.zeros((2, max(size - 1, 0)))
    if distance:  # element i crosses the cuts min(..) + i .. max(..) + i - 1
        cut = line[: size - 1]
        low, high = min(start, to), max(start, to)
        first, last = np.maximum(cut - high + 1, 0), np.minimum(cut - low, lines - 1)
        cuts[0 if to > start else 1] = np.maximum(last - first + 1, 0)
    return AxisTerms(
        total=lines,
        per_src=per_src,
        per_dst=per_dst,
        # nothing stays: bincount of no elements, int64 zeros (as `_walked_terms` has them)
        home=np.zeros(size, dtype=np.int64) if distance else per_src.copy(),
        stayed=0 if distance else lines,
        dist=lines * distance,
        hops=distance,
        cuts=cuts,
    )


def _walked_terms(runs: Runs, size: int) -> AxisTerms:
    """`axis_terms` from the runs' sums (every axis; the oracle of `_shift_terms`)."""
    src, dst, length = runs.src, runs.dst, runs.length
    stay = src == dst
    terms = AxisTerms(
        total=runs.total,
        per_src=line_counts(src, length, size),
        per_dst=line_counts(dst, length, size),
        home=line_counts(src[stay], length[stay], size),
        stayed=int(length[stay].sum()),
        dist=int((length * np.abs(src - dst)).sum()),
        hops=int(np.abs(src - dst).max()),
        cuts=run_cuts(runs, size),
    )
    return terms


def line_counts(lines: np.ndarray, length: np.ndarray, size: int) -> np.ndarray:
    """Elements per line (float64, whole numbers) of runs on `lines` of `length` each."""
    return np.bincount(lines, weights=length, minlength=size)


def run_cuts(runs: Runs, size: int) -> np.ndarray:
    """(2, size-1): elements of `runs` crossing each cut i|i+1 towards + and towards -."""
    src, dst, length = runs.src, runs.dst, runs.length
    # +length where a run of crossed cuts starts (the nearer end), -length where it ends
    # (the farther), on row 0 going + and row 1 going - of a (2, size+1) array, then a running
    # sum; runs that stay put add nothing (whole numbers below 2**53: exact in float64, in
    # any order of addition)
    down = (dst < src).astype(np.int64) * (size + 1)
    moving = np.where(src != dst, length, 0)
    starts = line_counts(np.minimum(src, dst) + down, moving, 2 * (size + 1))
    ends = line_counts(np.maximum(src, dst) + down, moving, 2 * (size + 1))
    return np.cumsum((starts - ends).reshape(2, size + 1), axis=1)[:, : size - 1]


__all__ = ["AxisTerms", "axis_terms", "line_counts", "run_cuts", "run_ends"]
