"""GPU baseline: hardware constants, the serving-stack fit on PAPER.md §3.3, Table 6 checks.

Prints every hardware constant of every GPU preset with its source (none fitted), refits the
serving-stack term on the six LLaMA3-8B A100 rows and compares it with the stored one, prints
the fit residuals under `--stack paper` (target <= 10%) and `--stack ideal`, checks the unfitted
Table 6 A100 GEMV columns under both stacks, and prints predictions (batch 1 and batched
decode steps). Writes benchmarks/results/gpu_baseline_a100_<date>.json atomically.

    PYTHONPATH=src python benchmarks/gpu_baseline.py
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

from waferllm.api.gpu import gpu_estimate, gpu_step_costs
from waferllm.baselines.gpu_fit import (
    CALIBRATION_MODEL,
    Residual,
    fit_residuals,
    fit_stack,
    table6_check,
)
from waferllm.baselines.gpu_specs import GPU_PRESETS, GpuSpec, get_gpu
from waferllm.baselines.gpu_stack import COEFFICIENTS, ideal_stack, paper_stack
from waferllm.cli.common import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
HARDWARE_FIELDS = [f.name for f in dataclasses.fields(GpuSpec) if f.name not in ("name", "sources")]


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _hardware_table() -> Table:
    table = Table(title="Hardware constants (published or placeholder; none fitted)")
    table.add_column("constant")
    for name in GPU_PRESETS:
        table.add_column(name, justify="right")
    table.add_column("a100 source")
    gpus = [get_gpu(name) for name in GPU_PRESETS]
    for field in HARDWARE_FIELDS:
        values = [f"{getattr(g, field):.4g}" for g in gpus]
        table.add_row(field, *values, gpus[0].sources[field])
    return table


def _residual_table(title: str, columns: dict[str, tuple[Residual, ...]], fmt: str) -> Table:
    table = Table(title=title)
    table.add_column("row")
    table.add_column("paper", justify="right")
    for name in columns:
        table.add_column(f"model ({name})", justify="right")
        table.add_column(f"error ({name})", justify="right")
    first = next(iter(columns.values()))
    for i, r in enumerate(first):
        cells = []
        for rows in columns.values():
            cells += [format(rows[i].modelled, fmt), f"{rows[i].error:+.1%}"]
        table.add_row(r.label, format(r.measured, fmt), *cells)
    return table


def _residual_dicts(rows: tuple[Residual, ...]) -> list[dict[str, Any]]:
    return [
        {"label": r.label, "measured": r.measured, "modelled": r.modelled, "error": r.error}
        for r in rows
    ]


def _predictions() -> list[dict[str, Any]]:
    """LLaMA3-8B 4096 in / 4096 out on every preset and GPU count, both stacks (predictions)."""
    out = []
    for gpu in GPU_PRESETS:
        for num_gpus in (1, 8, 16):
            for stack in ("paper", "ideal"):
                est = gpu_estimate(
                    CALIBRATION_MODEL,
                    gpu=gpu,
                    num_gpus=num_gpus,
                    prompt_len=4096,
                    output_len=4096,
                    stack=stack,
                )
                assert est.report is not None
                m = dataclasses.asdict(est.report.metrics)
                out.append({"gpu": gpu, "num_gpus": num_gpus, "stack": stack, **m})
    return out


def _batched_steps() -> list[dict[str, Any]]:
    """Decode-step seconds of LLaMA3-8B at a 2K context by batch size (ideal stack, 8 GPUs)."""
    out = []
    for gpu in ("a100", "h100"):
        costs = gpu_step_costs(CALIBRATION_MODEL, gpu=gpu, num_gpus=8, stack="ideal")
        for batch in (1, 8, 32, 128, 512):
            step_s = costs.decode_step_seconds([2048] * batch)
            out.append(
                {"gpu": gpu, "batch_size": batch, "step_s": step_s, "tokens_per_s": batch / step_s}
            )
    return out


def main() -> int:
    console = Console(width=160)
    start = time.perf_counter()
    fit = fit_stack()
    fit_s = time.perf_counter() - start
    stored = paper_stack()
    paper_rows, ideal_rows = fit_residuals(stored), fit_residuals(ideal_stack())
    gemv_paper, gemv_ideal = table6_check(stored), table6_check(ideal_stack())
    predictions, batched = _predictions(), _batched_steps()

    console.print(_hardware_table())
    stack_table = Table(title=f"Serving-stack term (fitted in {fit_s:.3f} s host time)")
    for column in ("coefficient", "refit", "stored (gpu_stack.py)"):
        stack_table.add_column(column, justify="left" if column == "coefficient" else "right")
    for field in COEFFICIENTS:
        stack_table.add_row(
            field, f"{getattr(fit.stack, field):.4g}", f"{getattr(stored, field):.4g}"
        )
    console.print(stack_table)
    console.print(
        _residual_table(
            "Fit rows, LLaMA3-8B TPR (tok/s) on A100, PAPER.md §3.3",
            {"paper": paper_rows, "ideal": ideal_rows},
            ",.1f",
        )
    )
    console.print(
        _residual_table(
            "Check, never fitted: Table 6 A100 GEMV seconds, PAPER.md §3.2",
            {"paper": gemv_paper, "ideal": gemv_ideal},
            ".3g",
        )
    )
    pred = Table(title="Predictions: LLaMA3-8B, 4096 in / 4096 out (modelled)")
    for column in ("setup", "stack", "TTFT (ms)", "TPOT (ms)", "prefill TPR", "decode TPR"):
        pred.add_column(column, justify="left" if column in ("setup", "stack") else "right")
    for p in predictions:
        pred.add_row(
            f"{p['num_gpus']}x {p['gpu']}",
            p["stack"],
            f"{p['ttft_s'] * 1e3:.1f}",
            f"{p['tpot_s'] * 1e3:.2f}",
            f"{p['prefill_tpr']:,.0f}",
            f"{p['decode_tpr']:,.1f}",
        )
    console.print(pred)
    steps = Table(title="Batched decode step, LLaMA3-8B at 2K context, 8 GPUs, ideal stack")
    for column in ("gpu", "batch", "step (ms)", "tokens/s"):
        steps.add_column(column, justify="right")
    for b in batched:
        steps.add_row(
            b["gpu"], str(b["batch_size"]), f"{b['step_s'] * 1e3:.2f}", f"{b['tokens_per_s']:,.0f}"
        )
    console.print(steps)

    max_fit_error = max(abs(r.error) for r in paper_rows)
    result = {
        "benchmark": "gpu_baseline",
        "device": "a100",
        "modelled": True,
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "machine": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
        "fit_host_wall_s": fit_s,
        "hardware": {name: get_gpu(name).to_dict() for name in GPU_PRESETS},
        "stack_refit": {f: getattr(fit.stack, f) for f in COEFFICIENTS},
        "stack_stored": stored.to_dict(),
        "fit_residuals_paper": _residual_dicts(paper_rows),
        "fit_residuals_ideal": _residual_dicts(ideal_rows),
        "fit_max_abs_error": max_fit_error,
        "table6_check_paper": _residual_dicts(gemv_paper),
        "table6_check_ideal": _residual_dicts(gemv_ideal),
        "predictions_llama3_8b_4096_4096": predictions,
        "batched_decode_steps_llama3_8b_2048_8gpus_ideal": batched,
    }
    path = RESULTS / f"gpu_baseline_a100_{result['date']}.json"
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    console.print(f"max fit residual {max_fit_error:.1%} (target <= 10%); wrote {path}")
    return 0 if max_fit_error <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
