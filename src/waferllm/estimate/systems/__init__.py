"""Whole-system plans of the paper's wafer-side baselines, T10 and Ladder, on the virtual wafer
(reference/t10-ladder-baselines.md): `cost` composes a request from one layer's plan per phase
(`t10`, `ladder`, on `common`'s shapes and charges) and keeps the fitted constants. WaferLLM's
own estimate is `estimate.cost`; the baselines' kernels live in `kernels.t10`/`kernels.ladder`.
"""

from waferllm.estimate.systems.cost import (
    LADDER_DECODE_SPAN,
    LADDER_PREFILL_SPAN,
    T10_BUSY_CORES,
    T10_PER_PARTIAL_CYCLES,
    FittedConstant,
    System,
    SystemCost,
    estimate_system,
    ladder_constants,
    phase_seconds,
    t10_constants,
)

__all__ = [
    "LADDER_DECODE_SPAN",
    "LADDER_PREFILL_SPAN",
    "T10_BUSY_CORES",
    "T10_PER_PARTIAL_CYCLES",
    "FittedConstant",
    "System",
    "SystemCost",
    "estimate_system",
    "ladder_constants",
    "phase_seconds",
    "t10_constants",
]
