"""`waferllm.serve_sim`: the SPEC.md §10.13 report, the wafer's batch-1 step costs, bad input."""

from __future__ import annotations

import dataclasses

import pytest

import waferllm
from waferllm.api.gpu import gpu_step_costs
from waferllm.api.serve_costs import GpuStepCost
from waferllm.api.serve_plots import plot_serving
from waferllm.errors import WaferError
from waferllm.estimate.requests import Request
from waferllm.model.config_sources import load_config

REPORT_KEYS = {
    "schema_version", "kind", "modelled", "model", "device", "mode", "num_requests",
    "duration_s", "throughput_tokens_per_s", "requests_per_s", "ttft_s", "tpot_s", "latency_s",
    "goodput_requests_per_s", "slo", "kv_peak_fraction", "utilization", "preemptions",
    "warnings", "provenance",
}  # fmt: skip
TINY = {"device": "tiny", "prefill_grid": 26, "decode_grid": 26}


class Flat:
    """A constant-cost StepCost (any object with these members will do)."""

    kv_capacity_tokens = 100
    kv_window_tokens = None

    def prefill_s(self, prompt_lens):
        return 1.0

    def decode_step_s(self, context_lens):
        return 0.1

    def to_decode_s(self, prompt_lens):
        return 0.0

    def to_prefill_s(self):
        return 0.0


def one(prompt_len=16, output_len=8, arrival_s=0.0):
    return Request(arrival_s=arrival_s, prompt_len=prompt_len, output_len=output_len)


def test_the_report_has_exactly_the_spec_keys_and_is_labelled_modelled():
    sim = waferllm.serve_sim(
        "tiny", requests=[one(), one(arrival_s=0.5)], step_cost=Flat(), slo_tpot_s=0.5
    )
    report = sim.to_dict()
    assert set(report) == REPORT_KEYS
    assert report["kind"] == "serve-sim" and report["modelled"] is True
    assert report["slo"] == {"ttft_s": None, "tpot_s": 0.5}
    assert set(report["latency_s"]) == {"mean", "p50", "p90", "p99"}
    assert set(report["provenance"]) == {"version", "commit", "command"}
    assert "serve-sim --model tiny" in report["provenance"]["command"]
    assert report["warnings"] == []  # a given step cost carries no wafer caveat


def test_a_lone_request_on_the_wafer_reproduces_the_batch1_estimate():
    """TTFT is the estimate's; the request then pays the prefill-to-decode re-layout (the
    estimate's round trip minus the decode-to-prefill half) and its decode steps."""
    est = waferllm.estimate("tiny", prompt_len=16, output_len=8, **TINY)
    sim = waferllm.serve_sim("tiny", requests=[one()], **TINY)
    (record,) = sim.schedule.records
    ops = est.to_dict()["breakdown"]["transition"]["ops"]
    to_decode_s = est.metrics.transition_s - ops["transition/weights_to_prefill"]
    decode_s = est.metrics.tpot_s * 7
    assert record.ttft_s == pytest.approx(est.metrics.ttft_s, rel=1e-9)
    assert record.latency_s == pytest.approx(est.metrics.ttft_s + to_decode_s + decode_s, rel=2e-3)


def test_a_batch_on_the_wafer_prefills_in_turn_and_decodes_together():
    sim = waferllm.serve_sim("tiny", requests=[one(output_len=2)] * 2, **TINY)
    single = waferllm.estimate("tiny", prompt_len=16, output_len=2, **TINY).metrics
    pair = waferllm.estimate("tiny", prompt_len=16, output_len=2, batch_size=2, **TINY).metrics
    prefill, _, first_step = sim.schedule.timeline[:3]
    assert (prefill.phase, prefill.batch_size) == ("prefill", 2)
    assert prefill.end_s - prefill.start_s == pytest.approx(2 * single.ttft_s, rel=1e-9)
    assert (first_step.phase, first_step.batch_size, first_step.num_steps) == ("decode", 2, 1)
    # the batched step: cheaper than two single steps, dearer than one
    assert first_step.end_s - first_step.start_s == pytest.approx(pair.tpot_s, rel=1e-9)
    assert single.tpot_s < pair.tpot_s < 2 * single.tpot_s
    assert sim.warnings == ()


def test_disaggregated_mode_runs_with_both_layouts_resident_and_no_weight_relayouts():
    sim = waferllm.serve_sim(
        "tiny", rate=1000.0, num_requests=6, prompt_len=16, output_len=4, mode="disaggregated",
        **TINY,
    )  # fmt: skip
    assert sim.to_dict()["mode"] == "disaggregated"
    assert {it.phase for it in sim.schedule.timeline} == {"prefill", "decode"}


def test_disaggregated_mode_is_refused_when_sram_cannot_hold_both_layouts():
    with pytest.raises(WaferError, match="disaggregated mode needs both phases' weights"):
        waferllm.serve_sim(
            "llama3-8b", device="wse2", prefill_grid=685, decode_grid=357,
            requests=[one()], mode="disaggregated",
        )  # fmt: skip


def test_the_same_requests_run_on_gpus_with_batched_steps_and_no_relayouts():
    trace = [one(1024, 64), one(1024, 64, arrival_s=0.01)]
    sim = waferllm.serve_sim("llama3-8b", requests=trace, gpu="h100", num_gpus=8)
    costs = gpu_step_costs("llama3-8b", gpu="h100", num_gpus=8)
    report = sim.to_dict()
    assert report["gpu"] == "8x h100" and "device" not in report
    assert "--gpu h100 --num-gpus 8" in report["provenance"]["command"]
    assert report["warnings"] == []
    assert {it.phase for it in sim.schedule.timeline} == {"prefill", "decode"}
    first = sim.schedule.records[0]
    assert first.ttft_s == pytest.approx(costs.prefill_seconds([1024]), rel=1e-9)
    assert sim.schedule.kv_capacity_tokens == costs.kv_capacity_tokens


def test_disaggregated_mode_on_gpus_is_refused():
    with pytest.raises(WaferError, match="disaggregated mode is modelled for the wafer only"):
        waferllm.serve_sim("tiny", requests=[one()], gpu="h100", mode="disaggregated")


def test_a_jsonl_trace_is_served_in_arrival_order(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(
        '{"arrival_s": 2, "prompt_len": 4, "output_len": 2}\n'
        '{"arrival_s": 0, "prompt_len": 4, "output_len": 2}\n'
    )
    sim = waferllm.serve_sim("tiny", requests=path, step_cost=Flat())
    assert [r.arrival_s for r in sim.schedule.records] == [0.0, 2.0]
    assert sim.metrics.latency_s.p50 == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requests": [one()], "rate": 1.0}, "either requests or rate"),
        ({"rate": 1.0, "num_requests": 2}, "missing prompt_len, output_len"),
        ({"requests": [one()], "slo_ttft_s": -1.0}, "slo_ttft_s=-1.0 must be a positive"),
        ({"requests": [one()], "mode": "pipelined"}, "mode='pipelined' is not one of"),
        ({"requests": [one()], "preemption": "swap"}, "preemption='swap' is not one of"),
        ({"requests": [one(80, 30)]}, r"request 1 needs 109 KV tokens .* holds 100"),
        ({"requests": []}, "empty list"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message):
    with pytest.raises(WaferError, match=message):
        waferllm.serve_sim("tiny", step_cost=Flat(), **kwargs)


def test_a_request_beyond_the_models_positions_is_refused_before_costing():
    with pytest.raises(WaferError, match="request 2 uses 520 positions .* is 512"):
        waferllm.serve_sim("tiny", requests=[one(), one(500, 21)], **TINY)


def test_plots_are_written_as_latency_cdfs_and_a_timeline(tmp_path):
    sim = waferllm.serve_sim("tiny", requests=[one(), one(arrival_s=0.3)], step_cost=Flat())
    series = sim.series()
    assert len(series["time_s"]) == len(sim.schedule.timeline)
    paths = plot_serving(sim, tmp_path)
    assert [p.name for p in paths] == ["serve_latency_cdf.png", "serve_timeline.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_gpu_adapter_passes_each_sequence_its_attended_positions():
    class Spy:
        kv_capacity_tokens = 1000
        kv_window_tokens = None
        asked: list = []

        def prefill_seconds(self, prompt_lens):
            return 0.01 * len(prompt_lens)

        def decode_step_seconds(self, context_lens):
            self.asked.append(list(context_lens))
            return 0.002

    cost = GpuStepCost(Spy())
    assert cost.decode_step_s([16, 20]) == 0.002 and Spy.asked == [[17, 21]]
    assert cost.prefill_s([4, 4]) == 0.02
    assert cost.to_decode_s([4]) == cost.to_prefill_s() == 0.0


def test_a_windowed_model_shares_the_sram_pool_and_each_sequence_holds_its_window():
    """The estimate reports an evicting cache's capacity as the trained context (512 here);
    serving counts the SRAM pool the plain model has and at most the window per sequence, so
    three requests of 399 positions (1,197 > 512) run together, holding 3 x 24 at the peak."""
    plain = load_config("tiny")
    windowed = dataclasses.replace(plain, sliding_window=24, name="tiny-w24")
    pool = waferllm.estimate(plain, prompt_len=16, output_len=8, **TINY).report
    trace = [one(300, 100)] * 3
    with pytest.warns(UserWarning, match="sliding window"):
        sim = waferllm.serve_sim(windowed, requests=trace, **TINY)
    assert sim.schedule.kv_capacity_tokens == pool.kv_capacity_tokens.shift > 512
    assert sim.schedule.kv_peak_tokens == 3 * 24 and sim.schedule.preemptions == 0
