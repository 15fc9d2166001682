"""T10 and Ladder on the virtual WSE-2 (reference/t10-ladder-baselines.md): calibration
residuals on the LLaMA3-8B rows, a refit of the four baseline constants, and predicted
WaferLLM-over-baseline ratios for the paper's other models beside the paper's stated bands.

One constant per baseline per phase (SPEC.md §8): T10's busy cores (prefill) and fan-in cost
per partial (decode), Ladder's collective spans (prefill, decode). `refit()` recomputes them
from the current device constants (after a recalibration of the wafer, paste its output into
`waferllm/estimate/systems/cost.py`); nothing else is fitted.

    python benchmarks/baselines_t10_ladder.py [--quick] [--refit]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from common import console, parser, print_table, write_result

import waferllm
from waferllm.api import paper_baselines as paper
from waferllm.device import wse2
from waferllm.errors import WaferError
from waferllm.estimate.systems import estimate_system, ladder_constants, t10_constants
from waferllm.estimate.systems.ladder import LadderConstants
from waferllm.estimate.systems.t10 import T10Constants
from waferllm.model.config_sources import load_config

NAME = "baselines_t10_ladder"
MODELS = ("llama3-8b", "llama2-13b", "codellama-34b", "qwen2-72b")
PREFILL_LEN, DECODE_CONTEXT = 4096, 4096
Constants = T10Constants | LadderConstants


def baseline_tpr(system: str, phase: str, model: str, side: int, c: Constants) -> float:
    """Modelled prefill TPR of a 4096-token prompt, or decode TPR of one step over 4096."""
    config, device = load_config(model), wse2()
    if phase == "prefill":
        cost = estimate_system(
            system,
            config=config,
            device=device,
            prefill_grid=(side, side),
            decode_grid=(side, side),
            prompt_len=PREFILL_LEN,
            output_len=1,
            constants=c,
        )
        return PREFILL_LEN / cost.seconds(device)[0]
    cost = estimate_system(
        system,
        config=config,
        device=device,
        prefill_grid=(side, side),
        decode_grid=(side, side),
        prompt_len=DECODE_CONTEXT - 1,
        output_len=2,
        constants=c,
    )
    return 1.0 / cost.seconds(device)[1]


def waferllm_tpr(phase: str, model: str, side: int) -> float:
    """WaferLLM's own per-layer estimate on the same grid and request."""
    if phase == "prefill":
        est = waferllm.estimate(
            model,
            prompt_len=PREFILL_LEN,
            output_len=1,
            placement="per-layer",
            prefill_grid=side,
            decode_grid=side,
        )
        return est.metrics.prefill_tpr
    est = waferllm.estimate(
        model,
        prompt_len=DECODE_CONTEXT - 1,
        output_len=2,
        placement="per-layer",
        prefill_grid=side,
        decode_grid=side,
    )
    return est.metrics.decode_tpr


def residuals(system: str, phase: str, c: Constants) -> list[float]:
    """Modelled / paper - 1 in time (paper TPR / modelled TPR - 1) on the LLaMA3-8B rows."""
    rows = (paper.PREFILL_TPR if phase == "prefill" else paper.DECODE_TPR)[system]
    return [rows[p] / baseline_tpr(system, phase, "llama3-8b", p, c) - 1 for p in rows]


def _with(system: str, phase: str, value: float) -> Constants:
    if system == "t10":
        field = "busy_cores" if phase == "prefill" else "per_partial_cycles"
        return dataclasses.replace(t10_constants(), **{field: value})
    field = "prefill_span" if phase == "prefill" else "decode_span"
    return dataclasses.replace(ladder_constants(), **{field: value})


def _minimax(system: str, phase: str, values: list[float]) -> tuple[float, list[float]]:
    best = min(
        values, key=lambda v: max(abs(r) for r in residuals(system, phase, _with(system, phase, v)))
    )
    return best, residuals(system, phase, _with(system, phase, best))


def refit(quick: bool = False) -> dict[str, dict[str, Any]]:
    """The four constants that minimise the worst residual on their rows (grid scans:
    T10's busy cores over square sub-grids, the others on a fine grid)."""
    sides = range(12, 61, 2 if quick else 1)
    fits = {
        ("t10", "prefill"): [s * s for s in sides],
        ("t10", "decode"): list(np.arange(10.0, 24.0, 1.0 if quick else 0.25)),
        ("ladder", "prefill"): list(np.arange(0.02, 1.0001, 0.02 if quick else 0.01)),
        ("ladder", "decode"): list(np.arange(0.01, 1.0001, 0.02 if quick else 0.01)),
    }
    out = {}
    for (system, phase), values in fits.items():
        value, res = _minimax(system, phase, values)
        out[f"{system}_{phase}"] = {
            "value": round(float(value), 4),
            "residuals": [round(r, 4) for r in res],
        }
    return out


def ratios(models: tuple[str, ...]) -> list[dict[str, Any]]:
    """WaferLLM / baseline TPR per model, phase and grid, with the paper's stated band."""
    rows = []
    consts = {"t10": t10_constants(), "ladder": ladder_constants()}
    for model in models:
        for phase, grids in (("prefill", (480, 600, 720)), ("decode", (420, 540, 660))):
            for side in grids:
                try:
                    ours: float | None = waferllm_tpr(phase, model, side)
                except WaferError:  # a point WaferLLM cannot run is a result (no ratio)
                    ours = None
                row = {"model": model, "phase": phase, "grid": side, "waferllm_tpr": ours}
                for system, c in consts.items():
                    tpr = baseline_tpr(system, phase, model, side, c)
                    row[f"{system}_tpr"] = tpr
                    row[f"{system}_ratio"] = None if ours is None else ours / tpr
                rows.append(row)
    return rows


def _x(value: float | None, digits: int) -> str:
    return "does not fit (WaferLLM)" if value is None else f"{value:.{digits}f}x"


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--refit", action="store_true", help="refit the four constants (minutes)")
    args = cli.parse_args()
    torch.set_num_threads(1)
    out = console()
    calib = {
        f"{s}_{p}": residuals(s, p, t10_constants() if s == "t10" else ladder_constants())
        for s in ("t10", "ladder")
        for p in ("prefill", "decode")
    }
    print_table(
        out,
        "Calibration residuals (modelled time / paper - 1), LLaMA3-8B",
        ["constant", "grid 1", "grid 2", "grid 3"],
        [[k, *(f"{r:+.1%}" for r in v)] for k, v in calib.items()],
    )
    payload: dict[str, Any] = {"calibration_residuals": calib}
    if args.refit:
        payload["refit"] = refit(args.quick)
        out.print(payload["refit"])
    models = MODELS[:1] if args.quick else MODELS
    rows = ratios(models)
    print_table(
        out,
        "WaferLLM over the baselines (modelled TPR ratios; per-layer, WSE-2)",
        ["model", "phase", "grid", "vs T10", "vs Ladder", "paper vs T10", "paper vs Ladder"],
        [
            [
                r["model"],
                r["phase"],
                r["grid"],
                _x(r["t10_ratio"], 1),
                _x(r["ladder_ratio"], 0),
                paper.STATED_RATIOS[(r["phase"], "t10")],
                paper.STATED_RATIOS[(r["phase"], "ladder")],
            ]
            for r in rows
        ],
    )
    payload["ratios"] = rows
    path = write_result(args.out_dir, NAME, "wse2", payload)
    out.print(f"wrote {path}")


if __name__ == "__main__":
    main()
