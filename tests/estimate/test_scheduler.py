"""The serving scheduler against schedules computed by hand with constant step costs.

Each expected time below is worked out in the test's docstring from the scheduler's rules
(FCFS admission, prefill priority, re-layouts on every phase switch, recompute preemption of
the newest request) and the toy costs; nothing is read back from the code under test.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.errors import WaferError
from waferllm.estimate.requests import Request
from waferllm.estimate.scheduler import Mode, Preemption, simulate
from waferllm.estimate.serving_metrics import LatencyStats, serving_metrics
from waferllm.estimate.step_cost import BinnedStepCost, StepCost, context_bin_edges


@dataclasses.dataclass
class Toy:
    """Constant costs per iteration, whatever the batch; logs what it was asked."""

    prefill: float = 1.0
    decode: float = 0.1
    to_decode: float = 0.0
    to_prefill: float = 0.0
    kv_capacity_tokens: int = 1000
    kv_window_tokens: int | None = None
    prefill_calls: list = dataclasses.field(default_factory=list)
    decode_calls: list = dataclasses.field(default_factory=list)

    def prefill_s(self, prompt_lens):
        self.prefill_calls.append(list(prompt_lens))
        return self.prefill

    def decode_step_s(self, context_lens):
        self.decode_calls.append(list(context_lens))
        return self.decode

    def to_decode_s(self, prompt_lens):
        return self.to_decode

    def to_prefill_s(self):
        return self.to_prefill


def req(arrival_s, prompt_len, output_len):
    return Request(arrival_s=arrival_s, prompt_len=prompt_len, output_len=output_len)


def phases(schedule):
    return [
        (it.phase, it.start_s, it.end_s, it.batch_size, it.num_steps) for it in schedule.timeline
    ]


def assert_timeline(schedule, expected):
    """`expected`: (phase, start_s, end_s[, batch_size[, num_steps]]) per iteration (a decode
    iteration is a run of steps with nothing between them), times to 1e-9."""
    got = phases(schedule)
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert [g[1:3] for g in got] == [pytest.approx(e[1:3], abs=1e-9) for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[3 : len(e)] == e[3:], (g, e)


def test_toy_cost_satisfies_the_step_cost_protocol():
    assert isinstance(Toy(), StepCost)


def test_time_multiplexed_prefills_each_arrival_before_decoding_and_batches_the_decode():
    """A (t=0, O=3) prefills [0,1]; B arrived at 0.05 so it prefills [1,2] (prefill priority);
    decode [2,2.1] gives both their 2nd token (B done), [2.1,2.2] A's 3rd."""
    toy = Toy()
    s = simulate([req(0.0, 4, 3), req(0.05, 4, 2)], toy, max_batch=8)
    assert_timeline(
        s,
        [
            ("prefill", 0, 1, 1),
            ("prefill", 1, 2, 1),
            ("decode", 2, 2.1, 2),
            ("decode", 2.1, 2.2, 1),
        ],
    )
    a, b = s.records
    assert (a.first_token_s, a.finish_s, a.finish_iteration) == pytest.approx((1.0, 2.2, 3))
    assert (b.first_token_s, b.finish_s, b.finish_iteration) == pytest.approx((2.0, 2.1, 2))
    assert a.ttft_s == pytest.approx(1.0) and a.tpot_s == pytest.approx(0.6)
    assert b.ttft_s == pytest.approx(1.95) and b.tpot_s == pytest.approx(0.1)
    assert b.latency_s == pytest.approx(2.05)
    assert toy.decode_calls == [[4, 4], [5]]  # contexts: cached tokens before each step


def test_time_multiplexed_pays_a_relayout_at_every_phase_switch():
    """to_decode 0.01, to_prefill 0.02. A (O=4): prefill [0,1], to_decode [1,1.01], decode
    [1.01,1.11]; B arrived at 1.05: to_prefill [1.11,1.13], prefill [1.13,2.13], to_decode
    [2.13,2.14], decode [2.14,2.24] (B done), decode [2.24,2.34] (A done)."""
    s = simulate(
        [req(0.0, 4, 4), req(1.05, 4, 2)], Toy(to_decode=0.01, to_prefill=0.02), max_batch=8
    )
    assert_timeline(
        s,
        [
            ("prefill", 0, 1),
            ("to_decode", 1, 1.01),
            ("decode", 1.01, 1.11),
            ("to_prefill", 1.11, 1.13),
            ("prefill", 1.13, 2.13),
            ("to_decode", 2.13, 2.14),
            ("decode", 2.14, 2.24),
            ("decode", 2.24, 2.34),
        ],
    )
    a, b = s.records
    assert (a.finish_s, a.finish_iteration, a.tpot_s) == pytest.approx((2.34, 7, 1.34 / 3))
    assert (b.ttft_s, b.finish_s, b.finish_iteration) == pytest.approx((1.08, 2.24, 6))
    metrics = serving_metrics(s)
    assert metrics.utilization == pytest.approx(2.3 / 2.34)  # re-layouts are not work


def test_fcfs_admission_waits_for_kv_capacity_and_never_skips_the_head():
    """Reserve policy, capacity 10: A needs 6 (4 + 3 - 1), B needs 6: B waits until A ends at
    1.2 (a run of two decode steps: nothing can be admitted before); C (needs 1) arrived with B
    but may not pass it; B and C prefill together [1.2,2.2]; B decodes two steps."""
    toy = Toy(kv_capacity_tokens=10)
    trace = [req(0.0, 4, 3), req(0.0, 4, 3), req(0.0, 1, 1)]
    s = simulate(trace, toy, max_batch=8, preemption=Preemption.RESERVE)
    assert_timeline(
        s,
        [
            ("prefill", 0, 1, 1),
            ("decode", 1, 1.2, 1, 2),
            ("prefill", 1.2, 2.2, 2),
            ("decode", 2.2, 2.4, 1, 2),
        ],
    )
    a, b, c = s.records
    assert [r.finish_s for r in s.records] == pytest.approx([1.2, 2.4, 2.2])
    assert (b.first_token_s, c.first_token_s, c.tpot_s) == pytest.approx((2.2, 2.2, None))
    assert toy.prefill_calls == [[4], [4, 1]]
    assert s.kv_peak_tokens == 7 and s.preemptions == 0


def test_max_batch_one_serves_requests_one_after_another():
    s = simulate([req(0.0, 4, 2), req(0.0, 4, 2)], Toy(), max_batch=1)
    assert [r.finish_s for r in s.records] == pytest.approx([1.1, 2.2])
    assert max(it.batch_size for it in s.timeline) == 1


def test_recompute_preempts_the_newest_request_and_reprefills_its_generated_tokens():
    """Capacity 10. A (O=5) and B (O=3) prefill together [0,1] (8 tokens), one decode step
    [1,1.1] fills the cache (10). The next step needs 2 more: B (newest) is preempted, A
    decodes its last 3 steps [1.1,1.4] (done, frees 8). B re-prefills its 4 + 2 tokens
    [1.4,2.4] and that prefill emits its 3rd and last token."""
    toy = Toy(kv_capacity_tokens=10)
    s = simulate([req(0.0, 4, 5), req(0.0, 4, 3)], toy, max_batch=8)
    assert_timeline(
        s,
        [
            ("prefill", 0, 1, 2),
            ("decode", 1, 1.1, 2, 1),
            ("decode", 1.1, 1.4, 1, 3),
            ("prefill", 1.4, 2.4, 1),
        ],
    )
    a, b = s.records
    assert (a.finish_s, a.finish_iteration, a.preemptions) == pytest.approx((1.4, 2, 0))
    assert (b.first_token_s, b.finish_s, b.finish_iteration) == pytest.approx((1.0, 2.4, 3))
    assert b.preemptions == 1 and s.preemptions == 1
    assert b.tpot_s == pytest.approx(0.7)
    assert toy.prefill_calls == [[4, 4], [6]]
    assert toy.decode_calls == [[4, 4], [5], [6], [7]]
    assert s.kv_peak_tokens == 10


def test_disaggregated_prefills_while_decoding_and_joins_the_batch_at_a_step_boundary():
    """Prefill 1, decode step 0.375, KV transfer 0.0625 (exact in binary). A prefills [0,1]
    and joins decode at 1.0625; B (t=0.5) prefills [1,2] meanwhile. A's run of steps stops at
    the first boundary after B's prefill ends: [1.0625,2.1875], 3 steps. B, ready at 2.0625
    (mid-step), joins at 2.1875: [2.1875,2.5625] ends B; A's last step [2.5625,2.9375]."""
    toy = Toy(decode=0.375, to_decode=0.0625)
    s = simulate([req(0.0, 4, 6), req(0.5, 4, 2)], toy, mode=Mode.DISAGGREGATED, max_batch=8)
    assert_timeline(
        s,
        [
            ("prefill", 0, 1, 1),
            ("prefill", 1, 2, 1),
            ("decode", 1.0625, 2.1875, 1, 3),
            ("decode", 2.1875, 2.5625, 2, 1),
            ("decode", 2.5625, 2.9375, 1, 1),
        ],
    )
    a, b = s.records
    assert (a.ttft_s, a.finish_s, a.finish_iteration) == (1.0, 2.9375, 4)
    assert (b.ttft_s, b.finish_s, b.finish_iteration) == (1.5, 2.5625, 3)
    assert (a.tpot_s, b.tpot_s) == pytest.approx((1.9375 / 5, 0.5625))
    assert serving_metrics(s).utilization == pytest.approx((2.0 + 1.875) / (2 * 2.9375))


def test_time_multiplexed_serialises_what_disaggregated_overlaps():
    trace = [req(0.0, 4, 6), req(0.5, 4, 2)]
    tm = simulate(trace, Toy(decode=0.3, to_decode=0.1), max_batch=8)
    # A prefill [0,1], B prefill [1,2], to_decode [2,2.1], steps of 0.3: B ends 2.4, A 3.6
    assert [r.finish_s for r in tm.records] == pytest.approx([3.6, 2.4])


def test_a_request_larger_than_the_kv_cache_is_refused_naming_it():
    with pytest.raises(WaferError, match=r"request 2 needs 12 KV tokens.*holds 10"):
        simulate([req(0.0, 4, 2), req(0.0, 8, 5)], Toy(kv_capacity_tokens=10))


def test_an_empty_trace_and_a_zero_batch_are_refused():
    with pytest.raises(WaferError, match="no requests"):
        simulate([], Toy())
    with pytest.raises(WaferError, match="max_batch=0"):
        simulate([req(0.0, 1, 1)], Toy(), max_batch=0)


def test_metrics_of_a_hand_computed_schedule_with_slos():
    """From the first schedule: TTFTs 1.0 and 1.95, TPOTs 0.6 and 0.1, duration 2.2 s, 5
    tokens; only A meets TTFT <= 1.5 s, only B meets TPOT <= 0.2 s."""
    s = simulate([req(0.0, 4, 3), req(0.05, 4, 2)], Toy(), max_batch=8)
    m = serving_metrics(s, slo_ttft_s=1.5)
    assert m.duration_s == pytest.approx(2.2)
    assert m.throughput_tokens_per_s == pytest.approx(5 / 2.2)
    assert m.requests_per_s == pytest.approx(2 / 2.2)
    assert m.goodput_requests_per_s == pytest.approx(1 / 2.2)
    assert serving_metrics(s, slo_tpot_s=0.2).goodput_requests_per_s == pytest.approx(1 / 2.2)
    both = serving_metrics(s, slo_ttft_s=1.5, slo_tpot_s=0.2)
    assert both.goodput_requests_per_s == 0.0
    assert m.ttft_s.mean == pytest.approx(1.475)
    assert m.kv_peak_fraction == pytest.approx(10 / 1000)  # 4 + 4 cached, +2 for the step
    assert m.to_dict()["slo"] == {"ttft_s": 1.5, "tpot_s": None}


def test_percentiles_match_numpy():
    values = np.random.default_rng(3).exponential(0.2, size=101)
    stats = LatencyStats.of(list(values))
    assert [stats.p50, stats.p90, stats.p99] == pytest.approx(
        list(np.percentile(values, [50, 90, 99]))
    )
    assert stats.mean == pytest.approx(values.mean())
    assert LatencyStats.of([]).p99 is None


def test_binned_cost_is_exact_at_edges_and_linear_between_them():
    class Linear(Toy):
        def decode_step_s(self, context_lens):
            self.decode_calls.append(list(context_lens))
            return 0.5 + 0.001 * sum(context_lens)

    inner = Linear()
    binned = BinnedStepCost(inner, max_tokens=100)
    assert binned.decode_step_s([5, 7, 100]) == pytest.approx(0.5 + 0.112)
    assert binned.decode_step_s([6, 6, 100]) == pytest.approx(0.5 + 0.112)  # same key: cached
    assert binned.num_inner_calls == 2
    assert all(len(set(call)) == 1 for call in inner.decode_calls)  # asked at bin edges only


def test_a_sliding_window_caps_each_sequences_kv_so_nothing_is_preempted():
    """Capacity 10, two requests of 4 + 5 tokens: without a window the second decode step
    needs 12 tokens and the newest request is preempted (as above); with a window of 5 each
    sequence holds at most 5 cached tokens, so both decode to the end together."""
    trace = [req(0.0, 4, 5), req(0.0, 4, 5)]
    plain = simulate(trace, Toy(kv_capacity_tokens=10), max_batch=8)
    assert plain.preemptions == 1
    windowed = simulate(trace, Toy(kv_capacity_tokens=10, kv_window_tokens=5), max_batch=8)
    assert windowed.preemptions == 0 and windowed.kv_peak_tokens == 10
    assert_timeline(windowed, [("prefill", 0, 1, 2), ("decode", 1, 1.4, 2, 4)])


def test_a_request_longer_than_the_cache_is_accepted_when_its_window_fits():
    long = [req(0.0, 30, 10)]  # 39 cached positions, 6 of them held under a window of 6
    with pytest.raises(WaferError, match="needs 39 KV tokens"):
        simulate(long, Toy(kv_capacity_tokens=10))
    s = simulate(long, Toy(kv_capacity_tokens=10, kv_window_tokens=6))
    assert s.kv_peak_tokens == 6 and s.records[0].output_len == 10


def test_bin_edges_grow_by_a_quarter_octave_and_end_at_the_cap():
    edges = context_bin_edges(100)
    assert edges[:5] == [1, 2, 3, 4, 5] and edges[-1] == 100
    assert all(b / a <= 1.5 for a, b in zip(edges[4:], edges[5:], strict=False))


@settings(max_examples=60, deadline=None)
@given(
    trace=st.lists(
        st.tuples(
            st.floats(0, 5, allow_nan=False),
            st.integers(1, 12),
            st.integers(1, 9),
        ),
        min_size=1,
        max_size=25,
    ),
    capacity=st.integers(20, 60),
    max_batch=st.integers(1, 6),
    mode=st.sampled_from(list(Mode)),
    policy=st.sampled_from(list(Preemption)),
    window=st.one_of(st.none(), st.integers(2, 12)),
)
def test_every_token_is_produced_once_and_the_kv_cache_never_overflows(
    trace, capacity, max_batch, mode, policy, window
):
    """Each prefill emits one token per request and each decode step one per running
    request; with preemptions (recompute) nothing generated is lost or produced twice; with a
    sliding window too (each sequence holding at most its window)."""
    requests = [req(*r) for r in trace]
    toy = Toy(prefill=0.5, decode=0.125, to_decode=0.0625, to_prefill=0.25)
    toy.kv_capacity_tokens, toy.kv_window_tokens = capacity, window
    s = simulate(requests, toy, mode=mode, max_batch=max_batch, preemption=policy)
    produced = sum(
        it.batch_size * (it.num_steps if it.phase == "decode" else 1)
        for it in s.timeline
        if it.phase in ("prefill", "decode")
    )
    assert produced == sum(r.output_len for r in requests)
    assert s.kv_peak_tokens <= capacity
    assert max(it.batch_size for it in s.timeline) <= max_batch
    for r, record in zip(requests, s.records, strict=True):  # records in trace order
        assert (record.arrival_s, record.output_len) == (r.arrival_s, r.output_len)
        assert record.first_token_s >= record.arrival_s + 0.5
        assert record.finish_s >= record.first_token_s + 0.125 * (record.output_len - 1)
    assert policy is Preemption.RECOMPUTE or s.preemptions == 0
