"""The estimate layer's closed forms equal the step-by-step walks they replace."""

from __future__ import annotations

import functools
import random

import numpy as np

from waferllm.estimate import decode_walks as cost
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
        assert shifts.firsts == want_shifts.firsts  # same order: records sum alike
        want_shifts = dict(want_shifts.items())
        for first, (begin, seen) in shifts.items():
            (want_append, want_start), want_seen = want_shifts[first][0](), want_shifts[first][1]
            append, start = begin()
            assert (append.target, append.senders, seen) == (
                want_append.target,
                want_append.senders,
                want_seen,
            )
            # the append of the group's first step, in closed form
            stepped = start.plan_append()
            assert (append.target, append.senders) == (stepped.target, stepped.senders)
            assert np.array_equal(append.counts_after, stepped.counts_after)
            assert np.array_equal(start.counts, want_start.counts)
    assert checked > 500


def test_kv_shifts_scaled_from_one_walk_equal_a_walk_per_first_row():
    from waferllm.device import tiny
    from waferllm.mesh.cost import Ledger
    from waferllm.model.config_sources import load_config
    from waferllm.model.quant import Storage
    from waferllm.model.transformer import MeshTransformer

    for grid, storage in (((9, 4), "float16"), ((7, 3), "int8")):
        model = MeshTransformer(
            load_config("tiny"),
            None,
            device=tiny(),
            prefill_grid=(3, 3),
            decode_grid=grid,
            storage=Storage.of("float16", storage),
        )
        walks = cost.DecodeWalks(model)
        rows = grid[0]
        for first in (3, 1, *range(2, rows)):  # the walked template is not row 1
            slots = model.kv_slots_per_row
            counts = RowCounts.balanced(KvPolicy.SHIFT, rows, slots, rows + first - 1)
            append = counts.plan_append()
            assert append.senders[0] == first
            scaled = walks.shift(append, counts)
            walked = model.kv_shift_records(append, counts)
            assert [repr(r) for r in scaled.records] == [repr(r) for r in walked.records]
            assert isinstance(walked, Ledger) and len(walked.records) == 1


def test_a_step_under_a_narrower_window_than_one_walked_equals_its_own_full_walk():
    from waferllm.device import tiny
    from waferllm.model.config_sources import load_config
    from waferllm.model.transformer import MeshTransformer

    def model(policy: KvPolicy) -> MeshTransformer:
        kwargs = {"device": tiny(), "prefill_grid": (3, 3), "decode_grid": (3, 4)}
        return MeshTransformer(load_config("tiny"), None, kv_policy=policy, **kwargs)

    for policy in KvPolicy:
        walks = cost.DecodeWalks(model(policy))
        for context in (40, 30, 21, 22, 5, 41, 13):  # narrower windows re-walk attention alone
            reused = walks.decode_step(context, prompt_len=4)
            walked = cost.DecodeWalks(model(policy)).decode_step(context, prompt_len=4)
            assert [repr(r) for r in reused.records] == [repr(r) for r in walked.records]
        assert len(walks._widths) >= len(walks._walked) + 3  # widths priced without a walk


def test_a_requests_kv_shifts_built_in_one_pass_equal_a_walk_per_shift_group():
    from waferllm.device import tiny
    from waferllm.model.config_sources import load_config
    from waferllm.model.quant import Storage
    from waferllm.model.transformer import MeshTransformer

    checked = 0
    for grid, storage, batch in (
        ((9, 4), "float16", 1),
        ((7, 3), "int8", 2),
        ((12, 5), "float16", 3),
    ):
        model = MeshTransformer(
            load_config("tiny"),
            None,
            device=tiny(),
            prefill_grid=(3, 3),
            decode_grid=grid,
            storage=Storage.of("float16", storage),
        )
        walks = cost.DecodeWalks(model, batch=batch)
        for prompt_len, output_len in ((3, 2 * grid[0] + 5), (grid[0] + 2, 3 * grid[0])):
            handoff = model.handoff_counts(prompt_len, slots=walks.share)
            for balanced in (True, False):  # the closed-form groups and the stepped ones
                shapes = cost._balanced_step_shapes if balanced else cost._step_shapes
                _, shifts = shapes(handoff.copy(), output_len)
                times = [7 * n for n in shifts.steps]
                begin = functools.partial(shifts.start, shifts.firsts[0])
                built = walks._shifts(shifts.firsts, times, begin)
                for rec, row, t in zip(built, shifts.firsts, times, strict=True):
                    (want,) = model.kv_shift_records(*shifts.start(row)).records
                    assert repr(rec) == repr(want.with_fields(count=want.count * t))
                    checked += 1
    assert checked > 40
