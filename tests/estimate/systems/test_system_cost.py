"""Whole requests under the baselines (estimate/systems/cost.py): the calibration residuals on
the LLaMA3-8B rows, the paper's qualitative claims as predictions (never fitted), the fitted
constants, and the refusal to model WaferLLM here."""

from __future__ import annotations

import pytest
from helpers.baselines import pinned_device

from waferllm.api import paper_baselines as paper
from waferllm.device import wse2
from waferllm.estimate.systems import (
    System,
    estimate_system,
    ladder_constants,
    phase_seconds,
    t10_constants,
)
from waferllm.model.config_sources import load_config


def device():
    return pinned_device()


# ---- calibration and the paper's claims (predictions) -----------------------------------------
def _tpr(system: str, phase: str, model: str, side: int) -> float:
    config, dev = load_config(model), wse2()
    prompt, out = (4096, 1) if phase == "prefill" else (4095, 2)
    cost = estimate_system(
        system,
        config=config,
        device=dev,
        prefill_grid=(side, side),
        decode_grid=(side, side),
        prompt_len=prompt,
        output_len=out,
    )
    ttft, decode = cost.seconds(dev)
    return prompt / ttft if phase == "prefill" else 1 / decode


@pytest.mark.slow
@pytest.mark.parametrize(
    ("system", "phase"),
    [
        ("t10", "prefill"),
        ("t10", "decode"),
        ("ladder", "prefill"),
        ("ladder", "decode"),
    ],
)
def test_calibration_residuals_are_within_15_percent(system, phase):
    rows = (paper.PREFILL_TPR if phase == "prefill" else paper.DECODE_TPR)[system]
    for side, published in rows.items():
        assert abs(published / _tpr(system, phase, "llama3-8b", side) - 1) <= 0.15


MODELS = ("llama3-8b", "llama2-13b", "codellama-34b", "qwen2-72b")


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_t10_slows_down_with_the_grid_in_both_phases_and_ladder_in_prefill(model):
    for system, phase, grids in (
        ("t10", "prefill", (480, 600, 720)),
        ("t10", "decode", (420, 540, 660)),
        ("ladder", "prefill", (480, 600, 720)),
    ):
        tpr = [_tpr(system, phase, model, side) for side in grids]
        assert tpr[0] > tpr[1] > tpr[2], (system, phase, tpr)


def _waferllm(phase: str, model: str, side: int) -> float:
    import waferllm

    prompt, out = (4096, 1) if phase == "prefill" else (4095, 2)
    est = waferllm.estimate(
        model,
        prompt_len=prompt,
        output_len=out,
        placement="per-layer",
        prefill_grid=side,
        decode_grid=side,
    )
    return est.metrics.prefill_tpr if phase == "prefill" else est.metrics.decode_tpr


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_waferllm_advantages_have_the_papers_orders_of_magnitude(model):
    """Prefill: ~100x over T10 and more over Ladder; decode: single-digit over T10, ~100x
    over Ladder; T10 loses far less in decode than in prefill. At the middle grids (600,
    540), where every paper model runs under WaferLLM."""
    prefill = {
        s: _waferllm("prefill", model, 600) / _tpr(s, "prefill", model, 600)
        for s in ("t10", "ladder")
    }
    decode = {
        s: _waferllm("decode", model, 540) / _tpr(s, "decode", model, 540)
        for s in ("t10", "ladder")
    }
    assert 80 <= prefill["t10"] < 1000
    assert prefill["ladder"] > prefill["t10"]
    assert 1 < decode["t10"] < 10
    assert 100 <= decode["ladder"] < 1000
    assert decode["t10"] * 10 < prefill["t10"]


def test_estimate_system_refuses_waferllm():
    with pytest.raises(ValueError, match="baselines"):
        estimate_system(
            System.WAFERLLM,
            config=load_config("tiny"),
            device=device(),
            prefill_grid=(2, 2),
            decode_grid=(2, 2),
            prompt_len=4,
            output_len=2,
        )


def test_default_constants_are_the_fitted_ones():
    t10, ladder = t10_constants(), ladder_constants()
    assert (t10.busy_cores, t10.per_partial_cycles) == (34 * 34, 15.5)
    assert (ladder.prefill_span, ladder.decode_span) == (0.40, 0.18)


@pytest.mark.parametrize("system", ["t10", "ladder"])
@pytest.mark.parametrize(("prompt_len", "output_len"), [(16, 1), (15, 2), (12, 9)])
def test_one_phase_alone_costs_what_the_whole_request_reports_for_it(
    system, prompt_len, output_len
):
    """`phase_seconds` (reproduce's phase tables) equals `estimate_system(...).seconds`."""
    config, dev = load_config("tiny"), wse2()
    cost = estimate_system(
        system,
        config=config,
        device=dev,
        prefill_grid=(8, 8),
        decode_grid=(8, 8),
        prompt_len=prompt_len,
        output_len=output_len,
    )
    ttft, decode = cost.seconds(dev)
    for phase, want in (("prefill", ttft), ("decode", decode)):
        got = phase_seconds(
            system,
            phase,
            config=config,
            device=dev,
            grid=(8, 8),
            prompt_len=prompt_len,
            output_len=output_len,
        )
        assert got == want and (want > 0) == (phase == "prefill" or output_len > 1)
