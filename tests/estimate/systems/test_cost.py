"""The baselines' whole-system plans (estimate/systems/): closed forms on one layer (pinned tiny
device, alpha 3, beta 7, 4-byte links, F = 8, S = 12, floor 10, no overheads), the route budget,
the calibration residuals, and the paper's qualitative claims as predictions (never fitted)."""

from __future__ import annotations

import math

import pytest

from waferllm.api import paper_baselines as paper
from waferllm.device import Device, tiny, with_overrides, wse2
from waferllm.estimate.systems import (
    System,
    estimate_system,
    ladder_constants,
    t10_constants,
)
from waferllm.estimate.systems.common import LayerShapes
from waferllm.estimate.systems.ladder import LadderConstants, ladder_decode, ladder_prefill
from waferllm.estimate.systems.t10 import T10Constants, t10_decode, t10_pace, t10_prefill
from waferllm.model.config import load_config

ALPHA, BETA, LINK = 3.0, 7.0, 4.0
PINNED = {
    "hop_latency_cycles": 3,
    "stage_latency_cycles": 7,
    "link_bytes_per_cycle": 4,
    "ramp_bytes_per_cycle": 4,
    "flops_per_cycle_per_core": 8,
    "sram_bytes_per_cycle": 12,
    "vector_instr_floor_cycles": 10,
    "step_overhead_cycles": 0,
    "op_overhead_cycles": 0,
}


def device() -> Device:
    return with_overrides(tiny(), PINNED)


SHAPES = LayerShapes.of(load_config("tiny"))  # D 64, F 176, 4 heads of 16, 2 kv heads


def test_t10_decode_layer_has_ten_fan_ins_each_in_closed_form():
    """4x4 grid, c_p = 100 cycles (above every partial's n*s/W): each fan-in costs
    3*alpha + 3*100 on its 4-core line, and there are 10 of them (WaferLLM's 10 allreduces)."""
    plan = t10_decode(
        device(), (4, 4), SHAPES, 16, T10Constants(busy_cores=4, per_partial_cycles=100)
    )
    fan_ins = [r for r in plan.ledger.expanded() if r.op.endswith(".fan_in")]
    assert len(fan_ins) == 10
    assert {r.comm_cycles for r in fan_ins} == {3 * ALPHA + 3 * 100}


def test_ladder_decode_projection_walks_k_in_chunks_of_16_overlapping_loads():
    """q_proj: K = N = 64, one core of 64 features, 4 chunks. Per chunk the next chunk's load,
    a stream through the 4 cores of a row (3*alpha + 65*16*2/W: one collective, no relay),
    overlaps T_mv =
    16 instructions of length 64 (max(10, 16, 32) = 32 cycles each)."""
    plan = ladder_decode(
        device(), (4, 4), SHAPES, 16, LadderConstants(prefill_span=1, decode_span=1)
    )
    chunks = [r for r in plan.ledger.expanded() if r.op == "ladder/q_proj/chunk"]
    assert len(chunks) == 4
    assert chunks[0].latency_cycles == max(3 * ALPHA + 65 * 16 * 2 / LINK, 16 * 32)


def test_t10_prefill_syncs_the_whole_region_after_every_superstep():
    """Busy sub-grid 2x2 of a 4x4 region: 9 GEMMs (7 projections, scores, P@V) x 2 supersteps
    (one pass each), each ending with a barrier over the 16 cores: per axis of 4 cores a
    chained reduce to core 0 (3*alpha + 2*beta + 4/W) and a multicast back (3*alpha + 4/W)."""
    plan = t10_prefill(
        device(), (4, 4), SHAPES, 8, T10Constants(busy_cores=4, per_partial_cycles=1)
    )
    barriers = [r for r in plan.ledger.expanded() if "/barrier." in r.op]
    assert len(barriers) == 9 * 2 * 4
    per_axis = (3 * ALPHA + 2 * BETA + 4 / LINK) + (3 * ALPHA + 4 / LINK)
    assert sum(r.comm_cycles for r in barriers) == 9 * 2 * 2 * per_axis


def test_ladder_prefill_runs_ceil_k_over_tk_chunks_per_gemm():
    """48 KB cores; the layer's weights and 8-token cache striped over 16 cores hold
    46720/16*2 = 5840 bytes each. Tiles shrink to the matrix (t_m = 8 tokens, t_n = 64), so
    t_k = (49152 - 5840 - 8*64*2) // (2*(8 + 64)*2) = 146: q_proj (K = 64) is one chunk,
    down_proj (K = 176) two."""
    dev = with_overrides(device(), {"sram_bytes_per_core": 48 * 1024})
    plan = ladder_prefill(dev, (4, 4), SHAPES, 8, LadderConstants(prefill_span=1, decode_span=1))
    chunks: dict[str, int] = {}
    for r in plan.ledger.expanded():
        if r.op.endswith("/chunk"):
            chunks[r.op] = chunks.get(r.op, 0) + 1
    assert chunks["ladder/q_proj/chunk"] == 1
    assert chunks["ladder/down_proj/chunk"] == 2


def test_t10_pace_cuts_until_the_tiles_fit():
    pace = t10_pace(m=100, k=100, n=600, batch=1, storage_bytes=2, free_bytes=48 * 1024)
    n_r, k_r = math.ceil(600 / pace.r_n), math.ceil(100 / pace.r_k)
    assert (100 * n_r + 2 * (100 * k_r + k_r * n_r)) * 2 <= 48 * 1024
    assert pace.passes > 1


def test_full_scale_t10_relays_its_rings_within_21_routes_and_pays_for_it():
    plan = t10_prefill(
        wse2(), (480, 480), LayerShapes.of(load_config("llama3-8b")), 4096, t10_constants()
    )
    assert plan.routes_per_core <= 21
    shifts = [r for r in plan.ledger.records if r.op.endswith("/shift")]
    assert shifts and all(r.critical_stages >= 1 for r in shifts)


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
    assert t10_constants().busy_cores == 37 * 37 and ladder_constants().decode_span == 0.16
