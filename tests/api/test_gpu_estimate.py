"""`waferllm.gpu_estimate`: the GPU baseline through the public API and the shared report."""

from __future__ import annotations

import pytest

import waferllm
from waferllm.baselines.gpu import decode_cost, prefill_cost
from waferllm.baselines.gpu_specs import a100, h100
from waferllm.model.config import load_config


def test_gpu_estimate_is_exported_and_fills_the_request_report():
    est = waferllm.gpu_estimate("llama3-8b", gpu="a100", num_gpus=8, prompt_len=512, output_len=33)
    assert est.fits and est.needed_gpus == 8 and est.message == ""
    assert est.report is not None
    report = est.report.to_dict()
    assert report["kind"] == "gpu" and report["modelled"] is True
    assert report["prefill_grid"] is None and report["decode_grid"] is None
    assert report["device"] == "8x a100"
    assert report["host_wall_s"] > 0
    assert set(report["breakdown"]) >= {"prefill", "decode", "memory", "energy", "calibration"}
    assert report["breakdown"]["decode"]["steps"] == 32


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
    with pytest.raises(ValueError, match="choose one of: a100, h100"):
        waferllm.gpu_estimate("tiny", gpu="tpu", prompt_len=8, output_len=8)
