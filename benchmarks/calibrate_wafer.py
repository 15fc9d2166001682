"""Calibrate the wafer presets' efficiency constants on PAPER.md §3.2 and §4 (SPEC.md §8).

Fitted, and nothing else: the per-instruction floor of a vector instruction
(`vector_instr_floor_cycles`), the fixed cost of one compute-shift step or sequential
operation (`step_overhead_cycles`, `op_overhead_cycles`: a task or collective start; both
shared by WSE-2) and WSE-3's per-hop term (`hop_latency_cycles`). Beta, the latency of a
routing stage, is the one both devices share (fitted on WSE-2's rows by calibrate_llm.py).
Every other constant keeps its PAPER.md source (12 SRAM bytes and one 32-bit wavelet per
cycle, the SIMD peaks). The
model is run exactly as a user runs it (`waferllm.bench_gemm` / `bench_gemv`, estimate mode)
on every published point:

* WSE-3 (PAPER.md §4, a public fork's device runs): 5 MeshGEMM points (M = K = N = 8P and
  P = 64 with 1024^3; A aligned on the device and timed, W pre-aligned untimed) and 6 MeshGEMV
  points (M = N = 8P, group_num 8), all as mean cycles over cores. Fits floor, overheads, alpha.
* WSE-2 (PAPER.md §3.2, Table 6's MeshGEMV column at 720 x 720, the model's default K = 2
  tree, critical-path latency): reported here, fitted jointly with PAPER.md §3.3's LLaMA3-8B
  prefill and decode rows by benchmarks/calibrate_llm.py (Table 6 alone cannot see the floor,
  and decode is what constrains the per-operation overhead).

Least squares on relative errors: the floor is scanned on a grid (refined twice around the
best value); for each floor the other constants, on which the modelled cycles depend
piecewise-linearly, are solved by Gauss-Newton with finite differences. A diagnostic refits
WSE-3 the old way (alpha at PAPER.md's 1 cycle, a separate beta) and shows that it misses the
never-fitted group_num sweep, which the shared beta with the per-hop term predicts.

    python benchmarks/calibrate_wafer.py           # refit, residuals, JSON + PNG
    python benchmarks/calibrate_wafer.py --quick   # residuals of the shipped presets only
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from common import console, parser, percent, print_table, save_plot, write_result
from paper_data import WSE2_TABLE6, WSE3_CHECKS, WSE3_MESHGEMM, WSE3_MESHGEMV, Point

from waferllm import Device, bench_gemm, bench_gemv, wse2, wse3

FLOOR = "vector_instr_floor_cycles"
OVERHEAD = "step_overhead_cycles"
OP_OVERHEAD = "op_overhead_cycles"
BETA = "stage_latency_cycles"
ALPHA = "hop_latency_cycles"
FITTED = (FLOOR, OVERHEAD, OP_OVERHEAD, ALPHA)
RESIDUAL_TARGET = 0.10  # SPEC.md §8
# What the shipped presets carry: floor to 0.01 cycle, overhead and beta to 0.1 cycle.
DECIMALS = {FLOOR: 2, OVERHEAD: 1, OP_OVERHEAD: 1, BETA: 1, ALPHA: 1}

Devices = Mapping[str, Device]


# ---- the model on one published point -----------------------------------------------------
def modelled_cycles(point: Point, device: Device) -> float:
    """The model's cycles for `point` on `device`, in the point's metric (mean or latency)."""
    grid = (point.grid, point.grid)
    if point.kernel == "meshgemm":
        report = bench_gemm(
            algo="meshgemm", grid=grid, m=point.m, k=point.k, n=point.n, device=device
        )
    else:
        report = bench_gemv(
            algo="meshgemv", grid=grid, m=point.m, n=point.n, groups=point.groups, device=device
        )
    if not report.fits:
        raise RuntimeError(f"{point.label}: {report.message} on {device.name}")
    value = report.mean_core_cycles if point.metric == "mean" else report.latency_cycles
    assert value is not None
    return value


@dataclasses.dataclass(frozen=True)
class Residual:
    point: Point
    modelled_cycles: float

    @property
    def error(self) -> float:
        """Relative error of the model: modelled / measured - 1."""
        return self.modelled_cycles / self.point.measured_cycles - 1.0


def residuals(devices: Devices, points: Sequence[Point]) -> tuple[Residual, ...]:
    return tuple(Residual(p, modelled_cycles(p, devices[p.device])) for p in points)


def shipped_devices() -> dict[str, Device]:
    return {"wse2": wse2(), "wse3": wse3()}


# ---- least squares ---------------------------------------------------------------------------
def _errors(devices: Devices, points: Sequence[Point]) -> np.ndarray:
    return np.array([r.error for r in residuals(devices, points)])


def _set(devices: Devices, values: Mapping[str, float]) -> dict[str, Device]:
    """Every device with the constants `values` replaced."""
    changes: dict[str, Any] = {name: float(v) for name, v in values.items()}
    return {name: dataclasses.replace(d, **changes) for name, d in devices.items()}


def _gauss_newton(
    devices: Devices, points: Sequence[Point], names: Sequence[str], *, iterations: int = 8
) -> tuple[dict[str, Device], float]:
    """Least squares over the constants `names` (>= 0), starting from their current values.
    The modelled cycles are piecewise linear in them, so a few steps settle."""
    first = next(iter(devices.values()))
    params = np.array([float(getattr(first, n)) for n in names])
    best = dict(devices)
    best_loss = float(np.sum(_errors(best, points) ** 2))
    for _ in range(iterations):
        if not names:
            break
        base = _errors(_set(devices, dict(zip(names, params, strict=True))), points)
        jac = np.empty((len(points), len(names)))
        for j, name in enumerate(names):
            h = max(1.0, abs(params[j]) * 0.05)
            shifted = {**dict(zip(names, params, strict=True)), name: params[j] + h}
            jac[:, j] = (_errors(_set(devices, shifted), points) - base) / h
        step, *_ = np.linalg.lstsq(jac, -base, rcond=None)
        new = np.maximum(params + step, 0.0)
        candidate = _set(devices, dict(zip(names, new, strict=True)))
        loss = float(np.sum(_errors(candidate, points) ** 2))
        if loss < best_loss - 1e-12:
            best, best_loss = candidate, loss
        if np.allclose(new, params, atol=1e-6):
            break
        params = new
    return best, best_loss


def fit(
    devices: Devices,
    points: Sequence[Point],
    *,
    scanned: str,
    grid: np.ndarray,
    linear: Sequence[str] = (),
) -> dict[str, Device]:
    """Scan constant `scanned` over `grid` (then twice more finely around the best value),
    solving the `linear` constants by Gauss-Newton at each value; the least loss wins."""

    def solve(value: float) -> tuple[float, dict[str, Device]]:
        start = _set(devices, {scanned: float(value)})
        solved, loss = _gauss_newton(start, points, linear)
        return loss, solved

    values = np.asarray(grid, dtype=float)
    best_loss, best = min((solve(v) for v in values), key=lambda t: t[0])
    step = float(np.min(np.diff(values))) if len(values) > 1 else 1.0
    for _ in range(2):
        centre = float(getattr(next(iter(best.values())), scanned))
        finer = np.linspace(max(0.0, centre - step), centre + step, 11)
        loss, solved = min((solve(v) for v in finer), key=lambda t: t[0])
        if loss < best_loss:
            best_loss, best = loss, solved
        step /= 5
    return best


def rounded(device: Device) -> Device:
    """The constants as the presets carry them."""
    changes: dict[str, Any] = {
        name: round(float(getattr(device, name)), DECIMALS[name]) for name in FITTED
    }
    return dataclasses.replace(device, **changes)


@dataclasses.dataclass(frozen=True)
class Calibration:
    devices: dict[str, Device]
    separate_beta: float  # WSE-3's beta when alpha keeps PAPER.md's 1 cycle (the old preset)
    separate_beta_residuals: tuple[Residual, ...]
    host_wall_s: float


def calibrate() -> Calibration:
    """The full refit (tens of seconds on one core)."""
    start = time.perf_counter()
    wse3_points = (*WSE3_MESHGEMM, *WSE3_MESHGEMV)
    fitted3 = fit(
        {"wse3": wse3()},
        wse3_points,
        scanned=FLOOR,
        grid=np.arange(2.0, 16.01, 1.0),
        linear=(OVERHEAD, OP_OVERHEAD, ALPHA),
    )["wse3"]
    # WSE-2's constants and the shared beta are fitted by calibrate_llm.py (Table 6 + §3.3)
    devices = {"wse2": wse2(), "wse3": rounded(fitted3)}
    old_way = _set({"wse3": devices["wse3"]}, {ALPHA: 1.0})
    separate = fit(old_way, WSE3_MESHGEMV, scanned=BETA, grid=np.arange(10.0, 50.01, 4.0))
    beta = round(float(getattr(separate["wse3"], BETA)), DECIMALS[BETA])
    separate_res = residuals(
        {"wse2": wse2(), **_set(old_way, {BETA: beta})}, (*WSE3_MESHGEMV, *WSE3_CHECKS)
    )
    return Calibration(devices, beta, separate_res, time.perf_counter() - start)


# ---- report -----------------------------------------------------------------------------------
def _residual_rows(rows: Sequence[Residual]) -> list[list[str]]:
    return [
        [
            r.point.label,
            r.point.metric,
            "fit" if r.point.fitted else "check",
            f"{r.point.measured_cycles:,.0f}",
            f"{r.modelled_cycles:,.0f}",
            percent(r.error),
        ]
        for r in rows
    ]


def _residual_dicts(rows: Sequence[Residual]) -> list[dict[str, Any]]:
    return [
        {
            "label": r.point.label,
            "device": r.point.device,
            "kernel": r.point.kernel,
            "grid": [r.point.grid, r.point.grid],
            "m": r.point.m,
            "k": r.point.k,
            "n": r.point.n,
            "groups": r.point.groups,
            "metric": r.point.metric,
            "fitted": r.point.fitted,
            "measured_cycles": r.point.measured_cycles,
            "modelled_cycles": r.modelled_cycles,
            "error": r.error,
            "source": r.point.source,
        }
        for r in rows
    ]


def _constants(devices: Devices) -> dict[str, dict[str, float]]:
    return {name: {c: float(getattr(d, c)) for c in FITTED} for name, d in devices.items()}


def _draw(rows: Sequence[Residual]) -> Callable[[Any], None]:
    def draw(plt: Any) -> None:
        fig, ax = plt.subplots(figsize=(6, 5))
        for kernel, marker in (("meshgemm", "o"), ("meshgemv", "s")):
            for device, colour in (("wse2", "tab:blue"), ("wse3", "tab:orange")):
                sel = [r for r in rows if r.point.kernel == kernel and r.point.device == device]
                if not sel:
                    continue
                ax.scatter(
                    [r.point.measured_cycles for r in sel],
                    [r.modelled_cycles for r in sel],
                    marker=marker,
                    color=colour,
                    facecolors=[colour if r.point.fitted else "none" for r in sel],
                    label=f"{device} {kernel}",
                )
        lo = min(min(r.point.measured_cycles, r.modelled_cycles) for r in rows) / 1.5
        hi = max(max(r.point.measured_cycles, r.modelled_cycles) for r in rows) * 1.5
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="published cycles", ylabel="modelled cycles")
        ax.set_title("Calibration (filled: fitted, hollow: checks)")
        ax.legend(fontsize=8)
        fig.tight_layout()

    return draw


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    out = console()
    shipped = shipped_devices()
    payload: dict[str, Any] = {"shipped": _constants(shipped)}
    if not args.quick:
        cal = calibrate()
        payload |= {
            "refit": _constants(cal.devices),
            "refit_host_wall_s": cal.host_wall_s,
            "separate_beta_alpha_1": cal.separate_beta,
            "separate_beta_residuals": _residual_dicts(cal.separate_beta_residuals),
        }
        rows = [
            [f"{name} {c}", f"{getattr(cal.devices[name], c):g}", f"{getattr(d, c):g}"]
            for name, d in shipped.items()
            for c in FITTED
        ]
        print_table(
            out,
            f"Refit ({cal.host_wall_s:.1f} s) vs shipped presets",
            ["constant", "refit", "shipped"],
            rows,
        )
        print_table(
            out,
            f"Diagnostic: WSE-3 with alpha = 1 and its own beta (best {cal.separate_beta:g})",
            ["point", "metric", "role", "published", "modelled", "error"],
            _residual_rows(cal.separate_beta_residuals),
        )
    fitted_points = (*WSE3_MESHGEMM, *WSE3_MESHGEMV, *WSE2_TABLE6)
    res = residuals(shipped, (*fitted_points, *WSE3_CHECKS))
    print_table(
        out,
        "Residuals of the shipped presets (cycles; modelled)",
        ["point", "metric", "role", "published", "modelled", "error"],
        _residual_rows(res),
    )
    worst = max(abs(r.error) for r in res if r.point.fitted)
    payload |= {"residuals": _residual_dicts(res), "max_fit_abs_error": worst}
    path = write_result(args.out_dir, "calibrate_wafer", "wse2-wse3", payload)
    png = save_plot(args, "calibrate_wafer", "wse2-wse3", _draw(res))
    out.print(f"max fit residual {worst:.1%} (target <= {RESIDUAL_TARGET:.0%}); wrote {path}")
    if png:
        out.print(f"plot: {png}")
    return 0 if worst <= RESIDUAL_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
