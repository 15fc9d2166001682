"""GPU baseline: calibration on PAPER.md §3.3 (LLaMA3-8B, A100) and the check on §3.2 (Table 6).

Refits the five efficiency constants on the six A100 rows, prints the fit and its residuals
(target <= 10%), compares the stored constants with the refit, checks the unfitted Table 6
A100 GEMV columns, and prints predictions for H100. Writes
benchmarks/results/gpu_baseline_a100_<date>.json atomically.

    python benchmarks/gpu_baseline.py
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from waferllm.api.gpu import gpu_estimate
from waferllm.baselines.gpu_fit import (
    CALIBRATION_MODEL,
    FITTED_FIELDS,
    Residual,
    fit_calibration,
    fit_residuals,
    table6_check,
)
from waferllm.baselines.gpu_specs import calibrated
from waferllm.cli.common import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _residual_table(
    title: str, rows: tuple[Residual, ...], unit: str, scale: float, fmt: str
) -> Table:
    table = Table(title=title)
    for column in ("row", f"paper ({unit})", f"model ({unit})", "error"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for r in rows:
        table.add_row(
            r.label,
            format(r.measured * scale, fmt),
            format(r.modelled * scale, fmt),
            f"{r.error:+.1%}",
        )
    return table


def _residual_dicts(rows: tuple[Residual, ...]) -> list[dict[str, Any]]:
    return [
        {"label": r.label, "measured": r.measured, "modelled": r.modelled, "error": r.error}
        for r in rows
    ]


def _predictions() -> list[dict[str, Any]]:
    """LLaMA3-8B 4096 in / 4096 out on every GPU setup the CLI offers (predictions)."""
    out = []
    for gpu in ("a100", "h100"):
        for num_gpus in (1, 8, 16):
            est = gpu_estimate(
                CALIBRATION_MODEL, gpu=gpu, num_gpus=num_gpus, prompt_len=4096, output_len=4096
            )
            assert est.report is not None
            m = est.report.metrics
            out.append({"gpu": gpu, "num_gpus": num_gpus, **dataclasses.asdict(m)})
    return out


def main() -> int:
    console = Console(width=120)
    start = time.perf_counter()
    fit = fit_calibration()
    fit_s = time.perf_counter() - start
    stored = calibrated()
    stored_rows = fit_residuals(stored)
    gemv_rows = table6_check(stored)
    predictions = _predictions()

    constants = Table(title=f"Fitted constants ({fit.iterations} LM iterations, {fit_s:.2f} s)")
    for column in ("constant", "refit", "stored in gpu_specs.py"):
        constants.add_column(column, justify="left" if column == "constant" else "right")
    for field in FITTED_FIELDS:
        constants.add_row(
            field, f"{getattr(fit.calibration, field):.4g}", f"{getattr(stored, field):.4g}"
        )
    for field in ("kernel_floor_s", "usable_memory_fraction"):
        constants.add_row(f"{field} (assumed)", "-", f"{getattr(stored, field):.4g}")
    console.print(constants)
    console.print(
        _residual_table(
            "Fit residuals (stored constants), LLaMA3-8B on A100, PAPER.md §3.3",
            stored_rows,
            "tok/s",
            1.0,
            ",.1f",
        )
    )
    console.print(
        _residual_table(
            "Check, never fitted: Table 6 A100 GEMV, PAPER.md §3.2", gemv_rows, "ms", 1e3, ".3f"
        )
    )
    pred = Table(title="Predictions: LLaMA3-8B, 4096 in / 4096 out (modelled)")
    for column in ("setup", "TTFT (ms)", "TPOT (ms)", "prefill TPR", "decode TPR", "energy (J)"):
        pred.add_column(column, justify="left" if column == "setup" else "right")
    for p in predictions:
        pred.add_row(
            f"{p['num_gpus']}x {p['gpu']}",
            f"{p['ttft_s'] * 1e3:.1f}",
            f"{p['tpot_s'] * 1e3:.2f}",
            f"{p['prefill_tpr']:,.0f}",
            f"{p['decode_tpr']:,.1f}",
            f"{p['energy_j']:,.0f}",
        )
    console.print(pred)

    max_fit_error = max(abs(r.error) for r in stored_rows)
    result = {
        "benchmark": "gpu_baseline",
        "device": "a100",
        "modelled": True,
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "machine": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
        "fit_host_wall_s": fit_s,
        "fit_iterations": fit.iterations,
        "refit": {f: getattr(fit.calibration, f) for f in FITTED_FIELDS},
        "stored": stored.to_dict(),
        "fit_residuals": _residual_dicts(stored_rows),
        "fit_max_abs_error": max_fit_error,
        "table6_check": _residual_dicts(gemv_rows),
        "predictions_llama3_8b_4096_4096": predictions,
    }
    path = RESULTS / f"gpu_baseline_a100_{result['date']}.json"
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    console.print(f"max fit residual {max_fit_error:.1%} (target <= 10%); wrote {path}")
    return 0 if max_fit_error <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
