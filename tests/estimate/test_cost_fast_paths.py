"""The estimate layer's closed forms equal the step-by-step walks they replace."""

from __future__ import annotations

import random

import numpy as np

from waferllm.estimate import cost
from waferllm.model.kv_cache import KvPolicy, RowCounts


def test_decode_steps_grouped_in_closed_form_equal_the_stepped_groups(monkeypatch):
    rng = random.Random(0)
    checked = 0
    for _ in range(2000):
        rows, slots = rng.randrange(1, 12), rng.randrange(1, 9)
        total, output_len = rng.randrange(0, rows * slots + 1), rng.randrange(1, 40)
        counts = RowCounts.balanced(KvPolicy.SHIFT, rows, slots, total)
        if not cost._balanced_shift(counts, output_len):
            continue
        checked += 1
        widths, shifts = cost._balanced_step_shapes(counts.copy(), output_len)
        with monkeypatch.context() as patch:  # the step-by-step loop
            patch.setattr(cost, "_balanced_shift", lambda *_: False)
            want_widths, want_shifts = cost._step_shapes(counts.copy(), output_len)
        assert sorted(widths) == sorted(want_widths)
        for width, (start, seen) in widths.items():
            assert seen == want_widths[width][1]
            assert np.array_equal(start.counts, want_widths[width][0].counts)
        assert list(shifts) == list(want_shifts)  # same order: records sum alike
        for first, (append, start, seen) in shifts.items():
            want_append, want_start, want_seen = want_shifts[first]
            assert (append.target, append.senders, seen) == (
                want_append.target,
                want_append.senders,
                want_seen,
            )
            assert np.array_equal(start.counts, want_start.counts)
    assert checked > 500
