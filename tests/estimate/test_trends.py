"""PAPER.md §3.3's trends from the model, not from a fit: prefill TPR rises with the grid,
decode TPR falls (the allreduce latency grows with the side while the per-core work shrinks).

Cheap paths: per-layer placement (one layer walked), the paper's 4096-token prompt for
prefill, one decode step attending to 4096 positions.
"""

from __future__ import annotations

import pytest

from waferllm.api import paper_figures as paper
from waferllm.device import wse2
from waferllm.estimate.cost import Setup, cost_model
from waferllm.estimate.measured import single_head
from waferllm.model.config_sources import load_config
from waferllm.model.placement import PlacementMode

PROMPT_LEN = paper.PREFILL_PROMPT_LEN


def _costs(name: str):
    return cost_model(
        Setup(config=load_config(name), device=wse2(), placement=PlacementMode.PER_LAYER)
    )


def _prefill_tpr(name: str, side: int) -> float:
    costs = _costs(name)
    model = costs.model((side, side), (side, side))
    ttft = costs.prefill(model, PROMPT_LEN).latency_cycles
    return PROMPT_LEN / wse2().cycles_to_seconds(ttft)


def _decode_tpr(name: str, side: int) -> float:
    costs = _costs(name)
    model = costs.model((side, side), (side, side))
    step = costs.decode(model, paper.DECODE_CONTEXT - 1, 2).latency_cycles
    return 1.0 / wse2().cycles_to_seconds(step)


@pytest.mark.parametrize("name", ["llama3-8b", "llama2-13b", "codellama-34b", "qwen2-72b"])
def test_prefill_tpr_rises_from_480_to_600_to_720(name):
    # Qwen2-72B's 4096-token prefill fits 480x480 since the per-layer plan holds no
    # vocabulary table and budgets the walk's real peak (issue 9)
    tpr = [_prefill_tpr(name, side) for side in paper.PREFILL_GRIDS]
    assert tpr[0] < tpr[1] < tpr[2]


# Decode predictions of the real models at the constants calibrated on the layer the paper
# measured (single head). LLaMA3-8B and LLaMA2-13B fall. CodeLLaMA-34B and Qwen2-72B (hidden
# 8192, 64 query heads on 8 kv heads) gain 1.4% and 2.9% from 420 to 540, then fall: at 420 a
# core's local work is large (CodeLLaMA-34B 4,442 cycles per layer: gate/up 1,060, P@V 777
# = 80 floor-bound instructions of 3 head slots, q/k/v 708, down 530) and shrinks by more than
# the ten allreduces grow (compute 4,442 -> 3,081, communication 6,572 -> 7,728;
# Qwen2-72B 5,160 -> 3,576 against 6,659 -> 7,781). The sign flips only if the local work were
# priced >= 15% (CodeLLaMA-34B) / >= 29% (Qwen2-72B) cheaper at both grids. It is not priced
# high: a GEMV moves 2 f16 MACs per cycle (SRAM: two 32-bit reads and one write per cycle,
# code notes §6; the 4 f16 SIMD lanes never bind), and Table 6's beta-free 16K -> 32K slope
# measures 1.74 added MACs per added cycle against the model's 1.84 (benchmarks/fidelity.py);
# the vendor's 20 PB/s would give 3.6 and miss that slope by 2x. The collectives' growth is
# hops at PAPER.md's ~1 cycle (code's px+py correction). No fixed cost changes the sign (it is
# the same at every grid). A prediction: PAPER.md has no rows for these models, and its
# falling trend is stated for LLaMA3-8B. Strict: the test fails if the model changes its answer.
NEAR_540 = pytest.mark.xfail(
    strict=True,
    reason="hidden-8192 GQA models: the local GEMVs (priced at Table 6's measured MAC rate) and "
    "floor-bound P@V shrink faster than the allreduces grow from 420 to 540 (optimum near 540)",
)


@pytest.mark.parametrize(
    "name",
    [
        "llama3-8b",
        "llama2-13b",
        pytest.param("codellama-34b", marks=NEAR_540),
        pytest.param("qwen2-72b", marks=NEAR_540),
    ],
)
def test_decode_tpr_falls_from_420_to_540_to_660(name):
    tpr = [_decode_tpr(name, side) for side in paper.DECODE_GRIDS]
    assert tpr[0] > tpr[1] > tpr[2]


def test_the_layer_the_paper_measured_decodes_fewer_tokens_per_second_on_bigger_grids():
    """PAPER.md §3.3's trend, on what its decode rows timed: LLaMA3-8B's layer with one head
    over the hidden size (estimate/measured.py)."""
    costs = cost_model(
        Setup(
            config=single_head(load_config("llama3-8b")),
            device=wse2(),
            placement=PlacementMode.PER_LAYER,
        )
    )
    steps = []
    for side in paper.DECODE_GRIDS:
        model = costs.model((side, side), (side, side))
        steps.append(costs.decode(model, paper.DECODE_CONTEXT - 1, 2).latency_cycles)
    assert steps[0] < steps[1] < steps[2]


@pytest.mark.parametrize("name", ["codellama-34b", "qwen2-72b"])
def test_the_bigger_models_decode_still_slows_down_past_540(name):
    assert _decode_tpr(name, 540) > _decode_tpr(name, 660)
