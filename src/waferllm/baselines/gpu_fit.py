"""Calibration of the serving-stack term on PAPER.md §3.3, and the check against §3.2 (Table 6).

SPEC §8: the GPU hardware terms are published values; only the serving stack's term is fitted,
on the LLaMA3-8B A100 rows of §3.3 (prefill TPR of a 4096-token prompt and decode TPR at a 4K
context, each on 1, 8 and 2x8 A100s). The term is linear in its coefficients, so the fit is a
non-negative least squares on relative time errors, solved exactly. `table6_check` compares
`gemv_time_s` with Table 6's A100 columns, which are never fitted.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools

import numpy as np

from waferllm.baselines.gpu import PhaseCost, decode_cost, gemv_time_s, prefill_cost
from waferllm.baselines.gpu_specs import a100
from waferllm.baselines.gpu_stack import (
    COEFFICIENTS,
    FITTED,
    ServingStack,
    Stack,
    ideal_stack,
    paper_stack,
)
from waferllm.model.config import ModelConfig
from waferllm.model.config_sources import load_config

CALIBRATION_MODEL = "llama3-8b"
CALIBRATION_PROMPT_LEN = 4096
CALIBRATION_CONTEXT = 4096


class Phase(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationRow:
    phase: Phase
    num_gpus: int
    measured_tpr: float  # tokens/s
    source: str

    @property
    def measured_s(self) -> float:
        """The row's time: the prefill of the prompt, or one decode step."""
        tokens = CALIBRATION_PROMPT_LEN if self.phase is Phase.PREFILL else 1
        return tokens / self.measured_tpr


_TABLES_3_4_7_8 = "PAPER.md §3.3 (Tables 3, 4, 7, 8), LLaMA3-8B"
CALIBRATION_ROWS = (
    CalibrationRow(phase=Phase.PREFILL, num_gpus=1, measured_tpr=13988.3, source=_TABLES_3_4_7_8),
    CalibrationRow(phase=Phase.PREFILL, num_gpus=8, measured_tpr=17361.6, source=_TABLES_3_4_7_8),
    CalibrationRow(phase=Phase.PREFILL, num_gpus=16, measured_tpr=13994.2, source=_TABLES_3_4_7_8),
    CalibrationRow(phase=Phase.DECODE, num_gpus=1, measured_tpr=78.9, source=_TABLES_3_4_7_8),
    CalibrationRow(phase=Phase.DECODE, num_gpus=8, measured_tpr=260.4, source=_TABLES_3_4_7_8),
    CalibrationRow(phase=Phase.DECODE, num_gpus=16, measured_tpr=164.6, source=_TABLES_3_4_7_8),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemvRow:
    size: int  # [1, size] @ [size, size]
    num_gpus: int
    measured_s: float
    source: str = "PAPER.md §3.2 (Table 6), A100 columns"


TABLE6_ROWS = tuple(
    GemvRow(size=size, num_gpus=gpus, measured_s=ms * 1e-3)
    for size, times_ms in ((16384, (0.336, 0.253, 0.340)), (32768, (1.231, 0.341, 0.339)))
    for gpus, ms in zip((1, 8, 16), times_ms, strict=True)
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Residual:
    """One published number against the model: `error = modelled / measured - 1`."""

    label: str
    measured: float
    modelled: float

    @property
    def error(self) -> float:
        return self.modelled / self.measured - 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitResult:
    stack: ServingStack
    residuals: tuple[Residual, ...]

    @property
    def max_abs_error(self) -> float:
        return max(abs(r.error) for r in self.residuals)


def row_cost(row: CalibrationRow, config: ModelConfig, stack: ServingStack) -> PhaseCost:
    """The model's cost of one calibration row (the prefill, or one decode step at 4K)."""
    if row.phase is Phase.PREFILL:
        return prefill_cost(config, a100(), row.num_gpus, CALIBRATION_PROMPT_LEN, stack)
    return decode_cost(config, a100(), row.num_gpus, [float(CALIBRATION_CONTEXT)], stack)


def fit_residuals(stack: ServingStack | None = None) -> tuple[Residual, ...]:
    """The six calibration rows' TPRs against the model (default: the paper stack)."""
    chosen = stack or paper_stack()
    config = load_config(CALIBRATION_MODEL)
    out = []
    for row in CALIBRATION_ROWS:
        seconds = row_cost(row, config, chosen).time_s
        tokens = CALIBRATION_PROMPT_LEN if row.phase is Phase.PREFILL else 1
        out.append(
            Residual(
                label=f"{row.phase} TPR, {row.num_gpus} A100",
                measured=row.measured_tpr,
                modelled=tokens / seconds,
            )
        )
    return tuple(out)


def table6_check(stack: ServingStack | None = None) -> tuple[Residual, ...]:
    """Table 6's A100 GEMV times against `gemv_time_s` (a prediction: never fitted)."""
    return tuple(
        Residual(
            label=f"GEMV [1,{row.size // 1024}K]x[{row.size // 1024}K,{row.size // 1024}K], "
            f"{row.num_gpus} A100",
            measured=row.measured_s,
            modelled=gemv_time_s(
                gpu=a100(), num_gpus=row.num_gpus, k=row.size, n=row.size, stack=stack
            ),
        )
        for row in TABLE6_ROWS
    )


def fit_system() -> tuple[np.ndarray, np.ndarray]:
    """The fit's linear system `A x ~ b` in relative time: row i is the ideal-stack work of
    calibration row i over its measured seconds; b_i = 1 - hardware_s / measured_s."""
    config = load_config(CALIBRATION_MODEL)
    a_rows, b = [], []
    for row in CALIBRATION_ROWS:
        cost = row_cost(row, config, ideal_stack())
        work = cost.stack_work
        counts = [getattr(work, f.name) for f in dataclasses.fields(work)]
        a_rows.append(np.array(counts) / row.measured_s)
        b.append(1.0 - cost.time_s / row.measured_s)
    return np.array(a_rows), np.array(b)


def nonnegative_least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||A x - b|| over x >= 0, exactly: every subset of free unknowns is solved by
    least squares and the best feasible one kept (a handful of unknowns)."""
    unknowns = a.shape[1]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    scaled = a / scale
    best, best_x = np.inf, np.zeros(unknowns)
    for size in range(unknowns + 1):
        for free in itertools.combinations(range(unknowns), size):
            x = np.zeros(unknowns)
            if free:
                x[list(free)] = np.linalg.lstsq(scaled[:, free], b, rcond=None)[0]
            if np.any(x < 0):
                continue
            cost = float(np.sum((scaled @ x - b) ** 2))
            if cost < best - 1e-15:
                best, best_x = cost, x
    return best_x / scale


def fit_stack() -> FitResult:
    """Fit the paper stack's coefficients on the six A100 rows (nothing else moves)."""
    a, b = fit_system()
    x = nonnegative_least_squares(a, b)
    stack = ServingStack(
        stack=Stack.PAPER,
        **{name: float(value) for name, value in zip(COEFFICIENTS, x, strict=True)},
        sources=dict.fromkeys(COEFFICIENTS, FITTED),
    )
    return FitResult(stack=stack, residuals=fit_residuals(stack))
