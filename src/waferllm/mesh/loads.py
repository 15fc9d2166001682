"""Byte loads of links and ramps kept in a factored form until someone needs the full array.

A step's price needs only the largest load (`traffic.Traffic.size_term_cycles`), and a new
grid prices hundreds of whole-mesh steps: `LineRows` keeps per-line loads as their distinct
rows and each line's row (a ring step whose lines carry a few distinct counts, an owner map
whose lines repeat a few rows), `LinePlus` those plus one value per line, `OuterRamp` a row
plus a column vector (two concurrent steps along different axes). All give the same max, sums
and `np.asarray` as the full arrays.
Loads are whole bytes (checked where a sum is kept apart): float sums of them are exact.
"""

from __future__ import annotations

import functools
from typing import TypeGuard

import numpy as np

from waferllm.mesh.segments import StepLoads


class LineRows:
    """Per-line loads given by `rows` (distinct rows, stacked along `axis`) and `index` (each
    line's row): what `np.take(rows, index, axis)` is, made only when asked for. Every row is
    some line's, so the max is the rows' max."""

    __array_ufunc__ = None  # ndarray + LineRows comes here (`__radd__`), not to numpy

    def __init__(self, rows: np.ndarray, index: np.ndarray, axis: int) -> None:
        self.rows, self.index, self.axis = rows, index, axis

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.rows.shape)
        shape[self.axis] = len(self.index)
        return tuple(shape)

    @property
    def T(self) -> LineRows:  # noqa: N802 (numpy's name)
        return LineRows(self.rows.T, self.index, 1 - self.axis)

    def max(self, initial: float = -np.inf) -> float:
        return float(self.rows.max(initial=initial))

    def row_peaks(self) -> np.ndarray:
        """Each distinct row's max."""
        return self.rows.max(axis=1 - self.axis)

    def scaled(self, factor: int) -> LineRows:
        """Every load times `factor` (`scale_load`)."""
        return LineRows(self.rows * float(factor), self.index, self.axis)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        full = np.take(self.rows, self.index, axis=self.axis)
        return full if dtype is None else full.astype(dtype)

    def __add__(self, other: object) -> Load:
        if self._alike(other):
            return LineRows(self.rows + other.rows, self.index, self.axis)
        if isinstance(other, np.ndarray) and other.ndim == 2:
            if other.shape[self.axis] == 1:  # the same along the lines: add to every row
                return LineRows(self.rows + other, self.index, self.axis)
            if other.shape == _per_line_shape(self):
                return LinePlus(self, other.reshape(-1))
        return np.asarray(self) + np.asarray(other)

    @functools.cached_property
    def whole(self) -> bool:
        """Whether every load is a whole number of bytes below 2**53 (checked once: a
        cached step's loads are added to many others')."""
        return _whole(self.rows)

    def _alike(self, other: object) -> TypeGuard[LineRows]:
        """Whether `other` is a `LineRows` with the same lines: each line the same row of
        rows of the same shape (two steps of one owner map: their rows add as rows)."""
        if not isinstance(other, LineRows) or other.axis != self.axis:
            return False
        if other.index is self.index:
            return True
        same_rows = other.rows.shape == self.rows.shape
        return same_rows and np.array_equal(other.index, self.index)

    def _plus_per_line(self, values: np.ndarray) -> LineRows:
        """Plus one value per line (a step along the other axis, every line alike): the
        distinct rows become the distinct (row, value) pairs."""
        # the distinct (row, value) pairs in lexicographic order, as np.unique(axis=1) gives
        # them, from one 1-D key: the row times the number of distinct values plus the
        # value's rank among them (ranks keep the values' order)
        levels, rank = np.unique(values, return_inverse=True)
        keys, index = np.unique(
            self.index.astype(np.int64) * len(levels) + rank.reshape(-1), return_inverse=True
        )
        rows = np.take(self.rows, keys // len(levels), axis=self.axis)
        added = levels[keys % len(levels)]
        add = added[:, None] if self.axis == 0 else added[None, :]
        return LineRows(rows + add, index.reshape(-1), self.axis)

    __radd__ = __add__  # elementwise float addition commutes


class LinePlus:
    """A `LineRows` plus one value per line (a step along the other axis, every line alike),
    kept unsummed until something other than its max is asked: the max is each line's row
    max plus its value, exact (adding a number to floats keeps their order, so the largest
    sum is the largest load's), and everything else goes through the sum that
    `LineRows._plus_per_line` makes (the same arrays as adding at once)."""

    __array_ufunc__ = None  # ndarray + LinePlus comes here (`__radd__`), not to numpy

    def __init__(self, rows: LineRows, values: np.ndarray) -> None:
        self.rows, self.values = rows, values  # values: (L,), one per line

    @functools.cached_property
    def summed(self) -> LineRows:
        return self.rows._plus_per_line(self.values)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.rows.shape

    @property
    def T(self) -> LineRows:  # noqa: N802 (numpy's name)
        return self.summed.T

    def max(self, initial: float = -np.inf) -> float:
        rows = self.rows
        if 0 in rows.shape:
            return self.summed.max(initial=initial)
        line_peaks = rows.row_peaks()[rows.index] + self.values
        return float(line_peaks.max(initial=initial))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return self.summed.__array__(dtype)

    def __add__(self, other: object) -> Load:
        """Another step with the same lines' rows (`LineRows._alike`), or one more value per
        line: kept apart, in another order than adding at once (exact: whole bytes)."""
        rows = self.rows
        if rows._alike(other) and other.whole and rows.whole and _whole(self.values):
            return LinePlus(LineRows(rows.rows + other.rows, rows.index, rows.axis), self.values)
        if isinstance(other, np.ndarray) and other.shape == _per_line_shape(rows):
            values = other.reshape(-1)
            if rows.whole and _whole(values) and _whole(self.values):
                return LinePlus(rows, self.values + values)
        return self.summed + other

    __radd__ = __add__  # sums of whole numbers: the order does not matter


class OuterRamp:
    """A load that is a row vector plus a column vector, (1, C) + (R, 1), kept unsummed: its
    max is the two maxima added (exact: whole bytes), the (R, C) array made when asked for."""

    __array_ufunc__ = None  # ndarray + OuterRamp comes here (`__radd__`), not to numpy

    def __init__(self, row: np.ndarray, col: np.ndarray) -> None:
        self.row, self.col = row, col  # (1, C), (R, 1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.col.shape[0], self.row.shape[1])

    def max(self, initial: float = -np.inf) -> float:
        return max(initial, float(self.row.max()) + float(self.col.max()))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        summed = self.row + self.col
        return summed if dtype is None else summed.astype(dtype)

    def __add__(self, other: object) -> Load:
        if isinstance(other, OuterRamp):
            return OuterRamp(self.row + other.row, self.col + other.col)
        if isinstance(other, np.ndarray) and other.ndim == 2 and _whole(other):
            if other.shape[0] == 1:
                return OuterRamp(self.row + other, self.col)
            if other.shape[1] == 1:
                return OuterRamp(self.row, self.col + other)
        return np.asarray(self) + np.asarray(other)

    __radd__ = __add__  # sums of whole numbers: the order does not matter


# (rows, cols)-broadcastable, or (L, P-1) for links
Load = np.ndarray | LineRows | LinePlus | OuterRamp | StepLoads


def line_rows(rows: np.ndarray, index: np.ndarray, axis: int = 0) -> np.ndarray | LineRows:
    """Per-line loads from distinct rows (all used) and each line's row; the rows themselves
    when every line has its own row in order."""
    if len(index) == rows.shape[axis] and np.array_equal(index, np.arange(len(index))):
        return rows
    return LineRows(rows, index, axis)


def scale_load(load: Load, factor: int) -> Load:
    """`load` with every message `factor` times as large, in the same form (whole bytes below
    2**53 times a whole factor: the products are exact)."""
    if isinstance(load, LineRows):
        return load.scaled(factor)
    if isinstance(load, OuterRamp):
        return OuterRamp(load.row * float(factor), load.col * float(factor))
    if isinstance(load, np.ndarray):
        return load * float(factor)
    raise TypeError(
        f"{type(load).__name__} loads are not scaled (no pattern cached per byte has them)"
    )


def _per_line_shape(rows: LineRows) -> tuple[int, int]:
    """The shape of an array holding one value per line of `rows`."""
    lines = len(rows.index)
    return (lines, 1) if rows.axis == 0 else (1, lines)


def _whole(load: np.ndarray) -> bool:
    """Whether every load is a whole number of bytes below 2**53 (float sums exact)."""
    return bool(np.all(np.floor(load) == load) and np.all(np.abs(load) < 2.0**53))


def add_loads(a: Load, b: Load) -> Load:
    """The loads of two concurrent steps added: a row and a column vector (steps along
    different axes, every line alike) stay an `OuterRamp`; factored loads add as such where
    they can; anything else is summed."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        for row, col in ((a, b), (b, a)):
            vectors = row.shape[0] == 1 < row.shape[1] and col.shape[1] == 1 < col.shape[0]
            if vectors and _whole(row) and _whole(col):
                return OuterRamp(row, col)
        return a + b
    return a + b
