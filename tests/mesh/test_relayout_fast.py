"""Re-layout pricing's sort-free paths compute exactly what the plain definitions compute:
cut crossings of every (source, destination) pair, distinct keys with their counts."""

from __future__ import annotations

import numpy as np

from waferllm.mesh import relayout, relayout_elements


def _pair_crossings(src: np.ndarray, dst: np.ndarray, length: int) -> np.ndarray:
    """(2, length-1): for each cut i|i+1, the pairs (s, d) crossing it towards + and -."""
    out = np.zeros((2, length - 1))
    for s in src:
        for d in dst:
            out[0, s:d] += 1  # s <= cut < d
            out[1, d:s] += 1  # d <= cut < s
    return out


def test_cross_cuts_count_every_pair_crossing_each_cut():
    rng = np.random.default_rng(5)
    for _ in range(300):
        length = int(rng.integers(1, 14))
        src = rng.integers(0, length, int(rng.integers(0, 9)))
        dst = rng.integers(0, length, int(rng.integers(0, 9)))
        counts = (relayout_elements._counts(src, length), relayout_elements._counts(dst, length))
        got = relayout._cross_cuts(*counts)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, _pair_crossings(src, dst, length))


def test_distinct_counts_equal_numpy_unique_for_ordered_and_unordered_keys():
    rng = np.random.default_rng(6)
    for trial in range(400):
        keys = rng.integers(0, int(rng.integers(1, 40)), int(rng.integers(0, 60)))
        if trial % 2:
            keys = np.sort(keys)  # the ordered path (block-split axes)
        got_keys, got_counts = relayout_elements._distinct_counts(keys)
        want_keys, want_counts = np.unique(keys, return_counts=True)
        np.testing.assert_array_equal(got_keys, want_keys)
        np.testing.assert_array_equal(got_counts, want_counts)
        assert got_keys.dtype == want_keys.dtype and got_counts.dtype == want_counts.dtype


def _busiest_by_core(per_row, per_col, home_row, home_col) -> float:
    """max over the cores holding elements of (elements - those that stay), core by core."""
    held = np.outer(per_row, per_col)
    left = held - np.outer(home_row, home_col)
    return float(left[held > 0].max(initial=0.0))


def test_busiest_core_with_or_without_elements_staying_equals_the_core_by_core_max():
    rng = np.random.default_rng(7)
    for trial in range(600):
        rows, cols = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        per_row = rng.integers(0, 9, rows).astype(np.float64) * int(rng.integers(1, 10**6))
        per_col = rng.integers(0, 9, cols).astype(np.float64)
        home_row = np.floor(per_row * rng.random(rows))
        home_col = np.floor(per_col * rng.random(cols))
        if trial % 3 == 0:
            home_row[:] = 0  # nothing stays on any row: the product of the largest counts
        elif trial % 3 == 1:
            home_col[:] = 0
        got = relayout._busiest(per_row, per_col, (home_row, home_col))
        assert got == _busiest_by_core(per_row, per_col, home_row, home_col)


def test_busiest_core_with_sparse_stays_equals_the_core_by_core_max():
    rng = np.random.default_rng(8)
    for trial in range(600):
        rows, cols = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        per_row = rng.integers(0, 4, rows).astype(np.float64) * int(rng.integers(1, 10**6))
        per_col = rng.integers(0, 4, cols).astype(np.float64)
        held = np.outer(per_row, per_col)
        cores = np.flatnonzero(held > 0)
        if trial % 2:  # stays on every core of the largest product (the grouped path)
            cores = np.union1d(
                cores[rng.random(cores.size) < 0.3], np.flatnonzero(held == held.max())
            )
        else:
            cores = cores[rng.random(cores.size) < 0.3]
        cores = cores[held.reshape(-1)[cores] > 0]
        row, col = cores // cols, cores % cols
        count = np.floor(held[row, col] * rng.random(cores.size)) + 1
        home = relayout._Cells(row=row, col=col, count=count)
        stays = np.zeros_like(held)
        stays[row, col] = count
        want = float((held - stays)[held > 0].max(initial=0.0))
        assert relayout._busiest(per_row, per_col, home) == want


def test_summed_keys_equal_numpy_unique_with_summed_lengths_in_order_or_not():
    rng = np.random.default_rng(8)
    for trial in range(400):
        keys = rng.integers(0, int(rng.integers(1, 60)), int(rng.integers(0, 50)))
        if trial % 3 == 0:
            keys = np.unique(keys)  # distinct and in order: the sort-free path
        elif trial % 3 == 1:
            keys = np.sort(keys)  # in order with repeats
        length = rng.integers(1, 10**6, keys.size)
        got_keys, got_sums = relayout._summed(keys, length)
        want_keys, inverse = np.unique(keys, return_inverse=True)
        want_sums = np.bincount(inverse, weights=length, minlength=want_keys.size)
        np.testing.assert_array_equal(got_keys, want_keys)
        np.testing.assert_array_equal(got_sums, want_sums)
        assert got_keys.dtype == want_keys.dtype and got_sums.dtype == want_sums.dtype
