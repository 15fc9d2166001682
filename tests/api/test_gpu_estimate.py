"""`waferllm.gpu_estimate`: the GPU baseline through the public API and the shared report."""

from __future__ import annotations

import pytest

import waferllm
import waferllm.api.gpu
from waferllm.baselines.gpu import decode_cost, prefill_cost
from waferllm.baselines.gpu_specs import a100, h100
from waferllm.model.config_sources import load_config


def test_gpu_estimate_is_exported_and_fills_the_request_report():
    est = waferllm.gpu_estimate("llama3-8b", gpu="a100", num_gpus=8, prompt_len=512, output_len=33)
    assert est.fits and est.needed_gpus == 8 and est.message == ""
    assert est.report is not None
    report = est.report.to_dict()
    assert report["kind"] == "gpu" and report["modelled"] is True
    assert report["prefill_grid"] is None and report["decode_grid"] is None
    assert report["device"] == "8x a100"
    assert report["host_wall_s"] > 0
    assert set(report["breakdown"]) >= {"prefill", "decode", "memory", "energy", "stack"}
    assert report["breakdown"]["decode"]["steps"] == 32
    assert est.stack == "paper" and est.batch_size == 1 and est.warnings == ()


def test_the_metrics_follow_the_request_report_definitions():
    config = load_config("llama3-8b")
    est = waferllm.gpu_estimate(config, gpu="h100", num_gpus=1, prompt_len=100, output_len=11)
    assert est.report is not None
    m = est.report.metrics
    prefill = prefill_cost(config, h100(), 1, 100)
    decode = decode_cost(config, h100(), 1, [101.0 + j for j in range(10)])
    assert m.ttft_s == pytest.approx(prefill.time_s)
    assert m.tpot_s == pytest.approx(decode.time_s / 10)
    assert m.prefill_tpr == pytest.approx(100 / prefill.time_s)
    assert m.e2e_tpr == pytest.approx(11 / (prefill.time_s + decode.time_s))
    assert m.transition_s == 0.0
    assert m.energy_j == pytest.approx(700.0 * (prefill.time_s + decode.time_s))
    assert 0 < m.utilization < 1


def test_stack_ideal_drops_the_software_term_and_unknown_stacks_are_refused():
    paper = waferllm.gpu_estimate("llama3-8b", num_gpus=8, prompt_len=4096, output_len=2)
    ideal = waferllm.gpu_estimate(
        "llama3-8b", num_gpus=8, prompt_len=4096, output_len=2, stack="ideal"
    )
    assert paper.report is not None and ideal.report is not None
    assert ideal.stack == "ideal"
    assert ideal.report.breakdown["prefill"]["stack_s"] == 0.0
    assert ideal.report.metrics.ttft_s == pytest.approx(
        paper.report.metrics.ttft_s - paper.report.breakdown["prefill"]["stack_s"]
    )
    with pytest.raises(ValueError, match="unknown stack 'sglang'; choose one of: paper, ideal"):
        waferllm.gpu_estimate("tiny", prompt_len=8, output_len=8, stack="sglang")


def test_a_batch_shares_each_step_and_reports_per_request_metrics():
    config = load_config("llama3-8b")
    est = waferllm.gpu_estimate(config, num_gpus=8, prompt_len=512, output_len=9, batch_size=4)
    assert est.report is not None and est.batch_size == 4
    m = est.report.metrics
    decode = decode_cost(config, a100(), 8, [[513.0 + j] * 4 for j in range(8)])
    assert m.ttft_s == pytest.approx(prefill_cost(config, a100(), 8, [512] * 4).time_s)
    assert m.tpot_s == pytest.approx(decode.time_s / 8)
    assert m.energy_j == pytest.approx(400.0 * 8 * (m.ttft_s + decode.time_s) / 4)
    assert est.report.breakdown["batch_size"] == 4


def test_a_context_past_the_models_limit_is_a_result_with_a_warning():
    est = waferllm.gpu_estimate("llama2-13b", num_gpus=8, prompt_len=4096, output_len=4096)
    assert est.fits and est.report is not None
    assert est.warnings and "max_position_embeddings (4096)" in est.warnings[0]


def test_the_step_cost_api_is_exported_for_serving_simulators():
    costs = waferllm.api.gpu.gpu_step_costs("llama3-8b", gpu="b200", num_gpus=8, stack="ideal")
    assert costs.gpu.name == "b200" and costs.stack.stack == "ideal"
    assert 0 < costs.decode_step_seconds([100, 200]) < costs.prefill_seconds([4096])


def test_energy_is_tdp_times_gpus_times_modelled_time():
    est = waferllm.gpu_estimate("llama3-8b", gpu="a100", num_gpus=16, prompt_len=64, output_len=4)
    assert est.report is not None
    m = est.report.metrics
    total_s = m.ttft_s + 3 * m.tpot_s
    assert m.energy_j == pytest.approx(a100().tdp_w * 16 * total_s)


def test_a_single_output_token_has_no_tpot():
    est = waferllm.gpu_estimate("tiny", prompt_len=8, output_len=1)
    assert est.report is not None
    assert est.report.metrics.tpot_s is None and est.report.metrics.decode_tpr is None


def test_a_model_that_does_not_fit_is_a_flagged_result_not_an_exception():
    est = waferllm.gpu_estimate("qwen2-72b", gpu="a100", num_gpus=1, prompt_len=128, output_len=8)
    assert not est.fits and est.report is None
    assert "needs >= " in est.message


def test_unknown_models_and_gpus_are_value_errors_naming_the_choices():
    with pytest.raises(ValueError, match="unknown model 'llama9'"):
        waferllm.gpu_estimate("llama9", prompt_len=8, output_len=8)
    with pytest.raises(ValueError, match="choose one of: a100, h100, h200, b200"):
        waferllm.gpu_estimate("tiny", gpu="tpu", prompt_len=8, output_len=8)
