"""The paper's wafer-side baselines, T10 and Ladder, as whole-model estimates on the virtual
wafer (reference/t10-ladder-baselines.md), beside WaferLLM's own estimate (`api.estimate`).

`estimate_system` composes one layer's plan per phase (`t10`, `ladder`) into
TTFT (every layer's prefill, then the LM head at the last position) and the O-1 decode steps
(every layer, then the LM head), the paper's per-layer method. The fitted constants live here,
one per baseline per phase (SPEC.md §8), each with its source and residuals;
`benchmarks/baselines_t10_ladder.py` refits them. Everything else is a prediction.
"""

from __future__ import annotations

import dataclasses
import enum
import functools

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.estimate.systems.common import LayerShapes, estimate_mesh
from waferllm.estimate.systems.ladder import LadderConstants, ladder_decode, ladder_prefill
from waferllm.estimate.systems.ladder import plan_gemv as ladder_lm_head
from waferllm.estimate.systems.t10 import T10Constants, t10_decode, t10_prefill
from waferllm.estimate.systems.t10 import plan_gemv as t10_lm_head
from waferllm.mesh.cost import Ledger, PhaseLedger
from waferllm.mesh.geometry import Axis
from waferllm.model.config import ModelConfig


class System(enum.StrEnum):
    WAFERLLM = "waferllm"
    T10 = "t10"
    LADDER = "ladder"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FittedConstant:
    """One baseline constant: its value, what it stands for, where it was fitted and how well
    (residuals = modelled time / paper time - 1 on the fitting rows, in their order;
    `benchmarks/baselines_t10_ladder.py --refit` recomputes all four: minimax grid scans)."""

    value: float
    meaning: str
    source: str
    residuals: tuple[float, ...]


_ROWS = (
    "LLaMA3-8B, 4096-token prompt, reference/t10-ladder-baselines.md §4 (PAPER Tables 3, 4); "
    "refit 2026-12-07 at the recalibrated device constants "
    "(benchmarks/results/baselines_t10_ladder_wse2_2026-12-07.json)"
)

T10_BUSY_CORES = FittedConstant(
    value=1156,
    meaning="cores T10's plans keep busy in prefill (a 34x34 sub-grid): its P failure",
    source=f"fitted on the T10 prefill rows at 480/600/720, {_ROWS}; every superstep ends "
    "with a barrier over the region (the platform's chained allreduce of one token)",
    residuals=(0.1092, 0.0440, -0.0867),
)
T10_PER_PARTIAL_CYCLES = FittedConstant(
    value=15.5,
    meaning="cycles the decode fan-in root spends per arriving partial (receive and add)",
    source=f"fitted on the T10 decode rows at 420/540/660, {_ROWS}",
    residuals=(0.0430, 0.0331, -0.0471),
)
LADDER_PREFILL_SPAN = FittedConstant(
    value=0.40,
    meaning="share of the region a prefill load collective streams through (relayed: every "
    "active core's collective crosses the same routers)",
    source=f"fitted on the Ladder prefill rows at 480/600/720, {_ROWS}",
    residuals=(-0.0315, 0.0296, 0.0247),
)
LADDER_DECODE_SPAN = FittedConstant(
    value=0.18,
    meaning="share of a row a decode load collective streams through (relayed, as prefill)",
    source=f"fitted on the Ladder decode rows at 420/540/660, {_ROWS}",
    residuals=(0.0325, 0.0116, -0.0370),
)


def t10_constants() -> T10Constants:
    return T10Constants(
        busy_cores=int(T10_BUSY_CORES.value), per_partial_cycles=T10_PER_PARTIAL_CYCLES.value
    )


def ladder_constants() -> LadderConstants:
    return LadderConstants(
        prefill_span=LADDER_PREFILL_SPAN.value, decode_span=LADDER_DECODE_SPAN.value
    )


Constants = T10Constants | LadderConstants


@dataclasses.dataclass(frozen=True, kw_only=True)
class SystemCost:
    """One request under a baseline: TTFT's and the decode steps' ledgers, modelled."""

    system: System
    prefill_grid: tuple[int, int]
    decode_grid: tuple[int, int]
    prefill: PhaseLedger
    decode: PhaseLedger
    layer_prefill: PhaseLedger
    layer_decode: PhaseLedger

    def seconds(self, device: Device) -> tuple[float, float]:
        """(TTFT, decode time), modelled."""
        to_s = device.cycles_to_seconds
        return to_s(self.prefill.latency_cycles), to_s(self.decode.latency_cycles)


def estimate_system(
    system: System | str,
    *,
    config: ModelConfig,
    device: Device,
    prefill_grid: tuple[int, int],
    decode_grid: tuple[int, int],
    prompt_len: int,
    output_len: int,
    constants: Constants | None = None,
) -> SystemCost:
    """T10's or Ladder's prediction of one batch-1 request on the given grids.

    T10 compiles static shapes: its KV cache spans the whole request (prompt + output) in
    every step. Ladder's striped cache grows; a step's cost is linear in the context, so the
    steps are priced at the mean context (prompt + (O - 1)/2).
    """
    system, consts = _system(system, constants)
    shapes = LayerShapes.of(config)
    layer_p, prefill = _prefill(system, device, prefill_grid, shapes, prompt_len, consts)
    layer_d, decode = _decode(system, device, decode_grid, shapes, prompt_len, output_len, consts)
    return SystemCost(
        system=system,
        prefill_grid=prefill_grid,
        decode_grid=decode_grid,
        prefill=prefill,
        decode=decode,
        layer_prefill=layer_p,
        layer_decode=layer_d,
    )


def phase_seconds(
    system: System | str,
    phase: str,
    *,
    config: ModelConfig,
    device: Device,
    grid: tuple[int, int],
    prompt_len: int,
    output_len: int,
    constants: Constants | None = None,
) -> float:
    """TTFT (`phase` "prefill") or the decode time ("decode") of `estimate_system` with both
    grids `grid`, modelled, pricing only that phase (a table of one phase needs no other)."""
    system, consts = _system(system, constants)
    shapes = LayerShapes.of(config)
    if phase == "prefill":
        _, ledger = _prefill(system, device, grid, shapes, prompt_len, consts)
    else:
        _, ledger = _decode(system, device, grid, shapes, prompt_len, output_len, consts)
    return device.cycles_to_seconds(ledger.latency_cycles)


def _system(system: System | str, constants: Constants | None) -> tuple[System, Constants]:
    system = System(system)
    if system is System.WAFERLLM:
        raise WaferError("WaferLLM's own estimate is waferllm.estimate; this models baselines")
    consts = constants or (t10_constants() if system is System.T10 else ladder_constants())
    return system, consts


def _prefill(
    system: System,
    device: Device,
    grid: tuple[int, int],
    shapes: LayerShapes,
    prompt_len: int,
    consts: Constants,
) -> tuple[PhaseLedger, PhaseLedger]:
    """One layer's prefill and TTFT's ledger; parts cached apart: `reproduce` asks for many
    requests that share a phase's (grid, length) and the LM heads per grid."""
    layer = _layer(device, grid, shapes, "prefill", prompt_len, consts)
    return layer, _whole(layer, shapes, _lm_head(system, device, grid, shapes, consts), 1)


def _decode(
    system: System,
    device: Device,
    grid: tuple[int, int],
    shapes: LayerShapes,
    prompt_len: int,
    output_len: int,
    consts: Constants,
) -> tuple[PhaseLedger, PhaseLedger]:
    """One decode step's layer and the O-1 steps' ledger."""
    if system is System.T10:
        context = prompt_len + output_len
    else:
        context = prompt_len + max(output_len - 1, 0) // 2
    layer = _layer(device, grid, shapes, "decode", context, consts)
    head = _lm_head(system, device, grid, shapes, consts)
    return layer, _whole(layer, shapes, head, max(output_len - 1, 0))


@functools.lru_cache(maxsize=512)
def _layer(
    device: Device,
    grid: tuple[int, int],
    shapes: LayerShapes,
    phase: str,
    length: int,
    consts: Constants,
) -> PhaseLedger:
    """One layer's plan: prefill of `length` tokens, or a decode step over `length` cached
    positions (T10: the static cache of the whole request; Ladder: the mean context)."""
    if isinstance(consts, T10Constants):
        plan = t10_prefill if phase == "prefill" else t10_decode
        return plan(device, grid, shapes, length, consts)
    plan_l = ladder_prefill if phase == "prefill" else ladder_decode
    return plan_l(device, grid, shapes, length, consts)


@functools.lru_cache(maxsize=128)
def _lm_head(
    system: System, device: Device, grid: tuple[int, int], shapes: LayerShapes, c: Constants
) -> Ledger:
    """The final norm is a layer-norm's cost, negligible here; the LM head is the system's
    GEMV of the last position's hidden state against the vocabulary."""
    mesh = estimate_mesh(device, grid)
    ledger = Ledger()
    with ledger.scope("lm_head"):
        if isinstance(c, T10Constants):
            t10_lm_head(mesh, shapes.d, shapes.vocab, Axis.Y, ledger, "gemv", c)
        else:
            ladder_lm_head(
                mesh,
                k=shapes.d,
                n=shapes.vocab,
                heads=1,
                span=c.decode_span,
                ledger=ledger,
                op="gemv",
            )
    return ledger


def _whole(layer: PhaseLedger, shapes: LayerShapes, head: Ledger, times: int) -> PhaseLedger:
    """`times` passes of every layer then the LM head (no pass: an empty ledger)."""
    ledger = Ledger()
    if times > 0:
        step = Ledger()
        step.extend(layer.ledger, count=shapes.layers, scope="layer")
        step.extend(head)
        ledger.extend(step, count=times)
    return dataclasses.replace(layer, ledger=ledger)


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
