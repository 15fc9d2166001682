"""`runs.joint` finds the same runs by marking the elements (dense steps) as by merging the
sorted starts (sparse steps), and both are the element-by-element definition."""

from __future__ import annotations

import dataclasses

import numpy as np

from waferllm.mesh import run_terms, runs
from waferllm.mesh.runs import LineShift, Steps, joint, placed, steps_of


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


def test_a_shift_of_lines_has_the_terms_of_its_runs_summed():
    """`run_terms.axis_terms` of a `LineShift` in closed form against the runs' sums
    (`_walked_terms`, its oracle): every field, arrays with their dtypes, for shifts either
    way, by less and more than their length, in place, at the side's ends; a shift past the
    side is priced from its runs."""
    for size, lines, start, to in [
        (10, 3, 0, 0),
        (10, 3, 2, 5),
        (10, 3, 5, 2),
        (10, 4, 0, 6),
        (10, 4, 6, 0),
        (1222, 611, 0, 611),
        (1222, 611, 611, 0),
        (994, 611, 0, 0),
        (7, 1, 6, 0),
        (1, 1, 0, 0),
        (12, 5, 3, 4),
    ]:
        shift = LineShift.moving(lines, start, to)
        got, want = run_terms._shift_terms(shift, size), run_terms._walked_terms(shift, size)
        for field in dataclasses.fields(want):
            a, b = getattr(got, field.name), getattr(want, field.name)
            if isinstance(b, np.ndarray):
                np.testing.assert_array_equal(a, b)
                assert a.dtype == b.dtype and a.shape == b.shape, field.name
            else:
                assert a == b and type(a) is type(b), (field.name, a, b)
        assert run_terms.axis_terms(shift, size).cuts.tolist() == want.cuts.tolist()
    past = LineShift.moving(4, 0, 8)  # past a side of 10 lines: the runs' own sums
    assert run_terms.axis_terms(past, 12).per_dst.size == 12
