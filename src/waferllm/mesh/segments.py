"""XY-routed flows priced per flow instead of per core, for sets of flows much smaller than the
mesh (Ladder's tile stores: a few thousand flows on half a million cores).

A load made by segments on lines is piecewise constant along each line, so it is kept as the
sorted positions where it changes and its value from each (`StepLoads`): the same max, sums and
array as the dense per-line cumulative sum of `remote.py`, made only when asked for. Loads are
whole bytes or counts: float sums of them are exact in any order.
"""

from __future__ import annotations

import math

import numpy as np


class StepLoads:
    """A (lines, num) load array that is piecewise constant in row-major order: `values[i]` on
    the flat positions keys[i] .. keys[i+1] - 1, 0 before keys[0] (after the last key every
    segment has ended: the value there is 0)."""

    __array_ufunc__ = None  # ndarray + StepLoads comes here (`__radd__`), not to numpy

    def __init__(self, shape: tuple[int, int], keys: np.ndarray, values: np.ndarray) -> None:
        self._shape, self.keys, self.values = shape, keys, values

    @classmethod
    def of_segments(
        cls,
        shape: tuple[int, int],
        *,
        line: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        size: np.ndarray,
    ) -> StepLoads:
        """`size` on positions lo .. hi - 1 of each segment's line (hi <= num)."""
        num = shape[1]
        keys, values = steps(line * num + lo, line * num + hi, size)
        return cls(shape, keys, values)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def max(self, initial: float = -np.inf) -> float:
        if math.prod(self._shape) == 0:
            return float(initial)
        # uncovered positions hold 0 and loads are never negative: 0 never raises the max
        return max(float(initial), float(self.values.max(initial=0.0)))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        size = math.prod(self._shape)
        deltas = np.diff(self.values, prepend=0.0)
        full = np.cumsum(np.bincount(self.keys, deltas, minlength=size + 1)[:size])
        full = full.reshape(self._shape)
        return full if dtype is None else full.astype(dtype)

    def __add__(self, other: object) -> np.ndarray:
        return np.asarray(self) + np.asarray(other)

    __radd__ = __add__  # sums of whole numbers: the order does not matter


def steps(start: np.ndarray, stop: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step function of segments start .. stop - 1 on flat positions: the sorted positions
    where it changes and its value from each (the running sum of the changes, read after the
    last change at each position)."""
    where = np.concatenate([start, stop])
    order = np.argsort(where, kind="stable")  # timsort: flows come in runs of sorted ends
    where = where[order]
    running = np.cumsum(np.concatenate([size, -size])[order])
    last = np.ones(len(where), dtype=bool)  # the last change at each position
    last[:-1] = where[1:] != where[:-1]
    return where[last], running[last]


def step_at(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The step function (`steps`) at flat positions `query` (0 before the first change)."""
    if not len(keys):
        return np.zeros(query.shape)
    i = np.searchsorted(keys, query, side="right") - 1
    return np.where(i >= 0, values[np.maximum(i, 0)], 0.0)
