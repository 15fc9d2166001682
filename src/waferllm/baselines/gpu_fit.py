"""Calibration of the GPU baseline on PAPER.md §3.3 and its check against PAPER.md §3.2.

SPEC §8 allows the GPU constants to be fitted on the LLaMA3-8B A100 rows of §3.3 only: prefill
TPR of a 4096-token prompt and decode TPR at a 4K context, each on 1, 8 and 2x8 A100s.
`fit_calibration` fits five constants to those six rows (Levenberg-Marquardt on log errors);
`table6_check` then compares `gemv_time_s` with Table 6's A100 columns, which are never fitted.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np

from waferllm.baselines.gpu import decode_cost, gemv_time_s, prefill_cost
from waferllm.baselines.gpu_specs import GpuCalibration, a100, calibrated
from waferllm.model.config import ModelConfig, load_config

CALIBRATION_MODEL = "llama3-8b"
CALIBRATION_PROMPT_LEN = 4096
CALIBRATION_CONTEXT = 4096
# The fitted fields, in the order of the parameter vector.
FITTED_FIELDS = (
    "hbm_efficiency",
    "tensor_efficiency",
    "link_efficiency",
    "nvlink_allreduce_latency_s",
    "internode_allreduce_latency_s",
)
_EFFICIENCIES = 3  # the first three fields live in (0, 1): logistic parameters, the rest log


class Phase(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationRow:
    phase: Phase
    num_gpus: int
    measured_tpr: float  # tokens/s
    source: str


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
    calibration: GpuCalibration
    residuals: tuple[Residual, ...]
    iterations: int

    @property
    def max_abs_error(self) -> float:
        return max(abs(r.error) for r in self.residuals)


def modelled_tpr(row: CalibrationRow, config: ModelConfig, calibration: GpuCalibration) -> float:
    """The model's tokens/s for one calibration row."""
    if row.phase is Phase.PREFILL:
        cost = prefill_cost(config, a100(), row.num_gpus, CALIBRATION_PROMPT_LEN, calibration)
        return CALIBRATION_PROMPT_LEN / cost.time_s
    contexts = np.array([CALIBRATION_CONTEXT], dtype=np.float64)
    return 1.0 / decode_cost(config, a100(), row.num_gpus, contexts, calibration).time_s


def fit_residuals(calibration: GpuCalibration | None = None) -> tuple[Residual, ...]:
    """The six calibration rows against the model with `calibration` (default: the stored one)."""
    cal = calibration or calibrated()
    config = load_config(CALIBRATION_MODEL)
    return tuple(
        Residual(
            label=f"{row.phase} TPR, {row.num_gpus} A100",
            measured=row.measured_tpr,
            modelled=modelled_tpr(row, config, cal),
        )
        for row in CALIBRATION_ROWS
    )


def table6_check(calibration: GpuCalibration | None = None) -> tuple[Residual, ...]:
    """Table 6's A100 GEMV times against `gemv_time_s` (a prediction: never fitted)."""
    cal = calibration or calibrated()
    return tuple(
        Residual(
            label=f"GEMV [1,{row.size // 1024}K]x[{row.size // 1024}K,{row.size // 1024}K], "
            f"{row.num_gpus} A100",
            measured=row.measured_s,
            modelled=gemv_time_s(
                gpu=a100(), num_gpus=row.num_gpus, k=row.size, n=row.size, calibration=cal
            ),
        )
        for row in TABLE6_ROWS
    )


def _to_calibration(params: np.ndarray, base: GpuCalibration) -> GpuCalibration:
    effs = 1.0 / (1.0 + np.exp(-params[:_EFFICIENCIES]))
    rest = np.exp(params[_EFFICIENCIES:])
    values: dict[str, Any] = {
        field: float(value) for field, value in zip(FITTED_FIELDS, (*effs, *rest), strict=True)
    }
    return dataclasses.replace(base, **values)


def _to_params(cal: GpuCalibration) -> np.ndarray:
    values = [getattr(cal, f) for f in FITTED_FIELDS]
    effs = [math.log(v / (1 - v)) if v < 1 else 10.0 for v in values[:_EFFICIENCIES]]
    return np.array(effs + [math.log(v) for v in values[_EFFICIENCIES:]])


def fit_calibration(start: GpuCalibration | None = None, *, max_iterations: int = 200) -> FitResult:
    """Least squares on log(modelled / measured) over the six rows, Levenberg-Marquardt with a
    forward-difference Jacobian. `start` also supplies the assumed (unfitted) constants."""
    base = start or _default_start()
    config = load_config(CALIBRATION_MODEL)
    measured = np.array([row.measured_tpr for row in CALIBRATION_ROWS])

    def residuals(params: np.ndarray) -> np.ndarray:
        cal = _to_calibration(params, base)
        modelled = [modelled_tpr(row, config, cal) for row in CALIBRATION_ROWS]
        return np.log(np.array(modelled) / measured)

    params, damping, step_size = _to_params(base), 1e-2, 1e-6
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (reported below)
        r = residuals(params)
        jac = np.column_stack(
            [(residuals(params + step_size * unit) - r) / step_size for unit in np.eye(len(params))]
        )
        normal = jac.T @ jac
        while damping < 1e12:
            step = np.linalg.solve(normal + damping * np.diag(np.diag(normal)), -jac.T @ r)
            if np.sum(residuals(params + step) ** 2) < np.sum(r**2):
                params, damping = params + step, damping / 3
                break
            damping *= 4
        if damping >= 1e12 or np.max(np.abs(step)) < 1e-9:
            break
    cal = _to_calibration(params, base)
    return FitResult(calibration=cal, residuals=fit_residuals(cal), iterations=iterations)


def _default_start() -> GpuCalibration:
    """A neutral starting point: half of every peak, 10 and 30 microsecond latencies."""
    stored = calibrated()
    return dataclasses.replace(
        stored,
        hbm_efficiency=0.5,
        tensor_efficiency=0.5,
        link_efficiency=0.5,
        nvlink_allreduce_latency_s=10e-6,
        internode_allreduce_latency_s=30e-6,
    )
