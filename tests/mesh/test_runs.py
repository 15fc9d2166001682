"""`runs.joint` finds the same runs by marking the elements (dense steps) as by merging the
sorted starts (sparse steps), and both are the element-by-element definition."""

from __future__ import annotations

import numpy as np

from waferllm.mesh import runs
from waferllm.mesh.runs import Steps, joint, placed, steps_of


def _random_steps(rng: np.random.Generator, size: int, changes: int) -> Steps:
    lines = np.cumsum(rng.random(size) < changes / size) + rng.integers(0, 3)
    if rng.random() < 0.5:  # values in any order, as a heads layout's columns
        lines = rng.permutation(int(lines.max()) + 1)[lines]
    return steps_of(lines)


def test_marked_and_merged_starts_agree_with_the_elements_on_dense_and_sparse_steps():
    rng = np.random.default_rng(14)
    for _ in range(400):
        size = int(rng.integers(1, 3000))
        src = _random_steps(rng, size, int(rng.integers(1, size + 1)))
        dst = _random_steps(rng, size, int(rng.integers(1, size + 1)))
        marked, merged = runs._dense_starts(src, dst), runs._merged_starts(src, dst)
        for got, want in zip(marked, merged, strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
        got_runs = joint(src, dst)
        np.testing.assert_array_equal(np.repeat(got_runs.src, got_runs.length), src.expand())
        np.testing.assert_array_equal(np.repeat(got_runs.dst, got_runs.length), dst.expand())
        both = np.stack([got_runs.src, got_runs.dst])
        assert (both[:, 1:] != both[:, :-1]).any(axis=0).all()  # neighbours merged


def test_placed_runs_shift_both_ends_and_scale_every_run_by_its_units():
    src, dst = steps_of(np.array([0, 0, 1, 1, 1, 3])), steps_of(np.array([2, 2, 2, 0, 0, 0]))
    base = joint(src, dst)
    got = placed(src, dst, 10, 20, 3)
    np.testing.assert_array_equal(got.src, base.src + 10)
    np.testing.assert_array_equal(got.dst, base.dst + 20)
    np.testing.assert_array_equal(got.length, base.length * 3)
    assert got.total == 18
    assert placed(src, dst, 10, 20, 3) is got  # one object per axis, origins and units
