"""A device with every constant of the baselines' closed forms pinned (tiny, alpha 3, beta 7,
4-byte links and ramps, floor 10, no overheads) and the tiny model's layer shapes."""

from __future__ import annotations

from waferllm.device import Device, tiny, with_overrides
from waferllm.estimate.systems.common import LayerShapes
from waferllm.model.config_sources import load_config

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


def pinned_device(**overrides: float) -> Device:
    """tiny with every constant of the closed forms pinned (as tests/mesh/spy.py)."""
    return with_overrides(tiny(), {**PINNED, **overrides})


def tiny_shapes() -> LayerShapes:
    """D 64, F 176, 4 heads of 16, 2 kv heads."""
    return LayerShapes.of(load_config("tiny"))
