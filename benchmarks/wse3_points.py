"""PAPER.md §4: the WSE-3 MeshGEMM and MeshGEMV measurements beside the model.

M = K = N = 8P on a P x P grid (and P = 64 with 1024^3): MeshGEMM with the activation aligned
on the device and timed, the weights pre-aligned untimed; MeshGEMV with group_num = 8; every
number is PAPER.md §4's mean over cores of each core's elapsed cycles (`mean_core_cycles`).
These points calibrate the WSE-3 preset (benchmarks/calibrate_wafer.py), so their errors are
fit residuals; the side notes (the 720 x 720 GEMV and the P = 80 group_num sweep) are checks.

    python benchmarks/wse3_points.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from calibrate_wafer import Residual, residuals, shipped_devices
from common import console, cycles, parser, percent, print_table, save_plot, write_result
from paper_data import CLOCK_HZ, WSE3_CHECKS, WSE3_MESHGEMM, WSE3_MESHGEMV

NAME = "wse3_points"


def _tflops(r: Residual, value: float) -> float:
    p = r.point
    return 2 * p.m * p.k * p.n / (value / CLOCK_HZ) / 1e12


def _gemm_row(r: Residual) -> list[str]:
    p = r.point
    per_core = 2 * p.m * p.k * p.n / (r.modelled_cycles * p.grid * p.grid)
    return [
        f"{p.grid}",
        f"{p.m}",
        cycles(p.measured_cycles),
        cycles(r.modelled_cycles),
        percent(r.error),
        f"{_tflops(r, p.measured_cycles):.1f}",
        f"{_tflops(r, r.modelled_cycles):.1f}",
        f"{per_core:.2f}",
    ]


def _gemv_row(r: Residual) -> list[str]:
    p = r.point
    role = "fit" if p.fitted else "check"
    return [
        f"{p.grid}",
        f"{p.m}",
        f"{p.groups}",
        role,
        cycles(p.measured_cycles),
        cycles(r.modelled_cycles),
        percent(r.error),
    ]


def _dicts(rows: Sequence[Residual]) -> list[dict[str, Any]]:
    return [
        {
            "label": r.point.label,
            "grid": [r.point.grid, r.point.grid],
            "m": r.point.m,
            "k": r.point.k,
            "n": r.point.n,
            "groups": r.point.groups,
            "fitted": r.point.fitted,
            "paper_mean_cycles": r.point.measured_cycles,
            "model_mean_cycles": r.modelled_cycles,
            "error": r.error,
            "source": r.point.source,
        }
        for r in rows
    ]


def _draw(gemm: Sequence[Residual], gemv: Sequence[Residual]) -> Callable[[Any], None]:
    def draw(plt: Any) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, rows, title in ((axes[0], gemm, "MeshGEMM"), (axes[1], gemv, "MeshGEMV")):
            series = [r for r in rows if r.point.fitted and r.point.m == 8 * r.point.grid]
            ax.plot(
                [r.point.grid for r in series],
                [r.point.measured_cycles for r in series],
                "ko",
                label="PAPER.md §4 (WSE-3)",
            )
            ax.plot(
                [r.point.grid for r in series],
                [r.modelled_cycles for r in series],
                "s--",
                label="model",
            )
            ax.set(
                xlabel="grid side P (M = K = N = 8P)",
                ylabel="mean cycles per core",
                title=f"WSE-3 {title}",
            )
            ax.legend(fontsize=8)
        fig.tight_layout()

    return draw


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    gemm_points = WSE3_MESHGEMM[:2] if args.quick else WSE3_MESHGEMM
    gemv_points = WSE3_MESHGEMV[:2] if args.quick else (*WSE3_MESHGEMV, *WSE3_CHECKS)
    devices = shipped_devices()
    gemm = residuals(devices, gemm_points)
    gemv = residuals(devices, gemv_points)
    out = console()
    print_table(
        out,
        "WSE-3 MeshGEMM, mean cycles per core: PAPER.md §4 vs modelled (fit residuals)",
        [
            "P",
            "M=K=N",
            "paper",
            "model",
            "error",
            "paper TFLOP/s",
            "model TFLOP/s",
            "FLOP/core/cyc",
        ],
        [_gemm_row(r) for r in gemm],
    )
    print_table(
        out,
        "WSE-3 MeshGEMV, mean cycles per core: PAPER.md §4 vs modelled",
        ["P", "M=N", "group_num", "role", "paper", "model", "error"],
        [_gemv_row(r) for r in gemv],
    )
    payload = {
        "device_constants": devices["wse3"].to_dict(),
        "meshgemm": _dicts(gemm),
        "meshgemv": _dicts(gemv),
    }
    path = write_result(args.out_dir, NAME, "wse3", payload)
    png = save_plot(args, NAME, "wse3", _draw(gemm, gemv))
    out.print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
