"""Every wafer constant SPEC.md §8 lets us fit, refitted in order at one or more shared betas,
with every residual (leave-one-grid-out included) side by side: the one command to re-run
after a kernel's pricing changes.

For each beta (`stage_latency_cycles`, shared by WSE-2 and WSE-3): WSE-3's floor, step and op
overheads and per-hop term on PAPER.md §4 (calibrate_wafer.fit); WSE-2 then takes the shared
overheads, fits its floor on §3.3's prefill rows and the per-layer fixed cost on the decode
and Table 6 rows (calibrate_llm); last, the four T10/Ladder constants on their LLaMA3-8B rows
(baselines_t10_ladder.refit, with that WSE-2). Nothing else moves. The chain has no loop: WSE-3
never sees WSE-2's constants. Modelled numbers throughout; the JSON holds the constants and
residuals per beta, for pasting into device.py and estimate/systems/cost.py.

    python benchmarks/refit_all.py                   # the shipped beta
    python benchmarks/refit_all.py --beta 7.5 8.5    # compare betas (about 10 min each)
    python benchmarks/refit_all.py --beta 7.5 --no-baselines   # wafer constants only
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import baselines_t10_ladder as baselines
import calibrate_llm as llm_fit
import calibrate_wafer as wafer_fit
import numpy as np
import torch
from common import console, parser, percent, print_table, write_result
from paper_data import WSE3_CHECKS, WSE3_MESHGEMM, WSE3_MESHGEMV

from waferllm import Device, wse2, wse3
from waferllm.api import paper_figures as paper

NAME = "refit_all"
WSE3_FIT = (wafer_fit.FLOOR, wafer_fit.OVERHEAD, wafer_fit.OP_OVERHEAD, wafer_fit.ALPHA)
SHARED = (wafer_fit.OVERHEAD, wafer_fit.OP_OVERHEAD)  # fitted on WSE-3, used by WSE-2


@dataclasses.dataclass(frozen=True)
class Chain:
    beta: float
    wse2: Device
    wse3: Device


def fit_chain(beta: float) -> Chain:
    """WSE-3 on §4 at `beta`, then WSE-2's floor (prefill) and layer cost (decode + Table 6)."""
    start = wafer_fit._set({"wse3": wse3()}, {wafer_fit.BETA: beta})
    fitted3 = wafer_fit.fit(
        start,
        (*WSE3_MESHGEMM, *WSE3_MESHGEMV),
        scanned=wafer_fit.FLOOR,
        grid=np.arange(2.0, 16.01, 1.0),
        linear=WSE3_FIT[1:],
    )["wse3"]
    d3 = wafer_fit.rounded(fitted3)
    d2 = llm_fit._with(wse2(), {wafer_fit.BETA: beta, **{k: getattr(d3, k) for k in SHARED}})
    floor, _ = llm_fit.gauss_newton(d2, llm_fit.FLOOR, llm_fit.prefill_errors)
    d2 = llm_fit._with(d2, {llm_fit.FLOOR: round(floor, llm_fit.DECIMALS[llm_fit.FLOOR])})
    layer, _ = llm_fit.gauss_newton(d2, llm_fit.LAYER, llm_fit.decode_table6_errors)
    layer = round(layer, llm_fit.DECIMALS[llm_fit.LAYER])
    d2 = llm_fit._with(d2, {llm_fit.LAYER: layer})
    d3 = llm_fit._with(d3, {llm_fit.LAYER: layer})
    return Chain(beta, d2, d3)


def residuals(chain: Chain) -> dict[str, float]:
    """Every calibration row (fitted and checks) under the chain's devices."""
    devices = {"wse2": chain.wse2, "wse3": chain.wse3}
    out = {
        r.point.label: r.error
        for r in wafer_fit.residuals(devices, (*WSE3_MESHGEMM, *WSE3_MESHGEMV, *WSE3_CHECKS))
    }
    groups = (
        ("Table 6", paper.TABLE6_SIZES, llm_fit.table6_errors),
        ("prefill", paper.PREFILL_GRIDS, llm_fit.prefill_errors),
        ("decode", paper.DECODE_GRIDS, llm_fit.decode_errors),
    )
    for label, keys, errors in groups:
        for key, error in zip(keys, errors(chain.wse2), strict=True):
            out[f"WSE-2 {label} {key}"] = float(error)
    return out


def leave_one_out(chain: Chain) -> dict[str, float]:
    """Each fitted grid predicted by its constant refitted without it (fidelity.py's rows)."""
    out: dict[str, float] = {}
    groups = (
        ("prefill", paper.PREFILL_GRIDS, llm_fit.FLOOR, llm_fit.prefill_errors),
        ("decode", paper.DECODE_GRIDS, llm_fit.LAYER, llm_fit.decode_errors),
    )
    for label, grids, name, errors in groups:
        for grid in grids:
            kept = [g for g in grids if g != grid]
            value, _ = llm_fit.gauss_newton(
                chain.wse2, name, lambda d, kept=kept, errors=errors: errors(d, kept), iterations=2
            )
            moved = llm_fit._with(chain.wse2, {name: value})
            out[f"WSE-2 {label} {grid}"] = float(errors(moved, [grid])[0])
    points = list(WSE3_MESHGEMV)
    for point in points:
        kept = [p for p in points if p is not point]
        solved, _ = wafer_fit._gauss_newton({"wse3": chain.wse3}, kept, [wafer_fit.ALPHA])
        (res,) = wafer_fit.residuals(solved, [point])
        out[point.label] = res.error
    return out


def baseline_refit(chain: Chain, quick: bool) -> dict[str, Any]:
    """T10/Ladder's four constants refitted on the chain's WSE-2 (the module reads `wse2()`)."""
    shipped = baselines.wse2
    baselines.wse2 = lambda: chain.wse2
    try:
        return baselines.refit(quick)
    finally:
        baselines.wse2 = shipped


def constants(chain: Chain) -> dict[str, dict[str, float]]:
    names = (*WSE3_FIT, llm_fit.LAYER, wafer_fit.BETA)
    return {d.name: {k: float(getattr(d, k)) for k in names} for d in (chain.wse2, chain.wse3)}


def _loss(values: dict[str, float]) -> float:
    return float(sum(v * v for v in values.values()))


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--beta", type=float, nargs="+", default=[wse2().stage_latency_cycles])
    cli.add_argument("--no-baselines", action="store_true", help="skip the T10/Ladder refit")
    args = cli.parse_args(argv)
    torch.set_num_threads(1)
    out = console()
    runs: dict[str, Any] = {}
    for beta in args.beta:
        chain = fit_chain(beta)
        run: dict[str, Any] = {
            "constants": constants(chain),
            "residuals": residuals(chain),
            "leave_one_out": leave_one_out(chain),
        }
        if not args.no_baselines:
            run["t10_ladder"] = baseline_refit(chain, args.quick)
        checks = {p.label for p in WSE3_CHECKS}
        run["loss_fitted_rows"] = _loss(
            {k: v for k, v in run["residuals"].items() if k not in checks}
        )
        run["loss_leave_one_out"] = _loss(run["leave_one_out"])
        runs[f"{beta:g}"] = run
        out.print(f"beta {beta:g}: {run['constants']}")
    labels = list(next(iter(runs.values()))["residuals"])
    print_table(
        out,
        "Residuals (modelled / published - 1) per shared beta, every constant refitted",
        ["row", *(f"beta {b}" for b in runs)],
        [[label, *(percent(r["residuals"][label]) for r in runs.values())] for label in labels],
    )
    loo = list(next(iter(runs.values()))["leave_one_out"])
    print_table(
        out,
        "Leave-one-grid-out (each row predicted by a fit without it)",
        ["row", *(f"beta {b}" for b in runs)],
        [[label, *(percent(r["leave_one_out"][label]) for r in runs.values())] for label in loo],
    )
    if not args.no_baselines:
        keys = list(next(iter(runs.values()))["t10_ladder"])
        print_table(
            out,
            "T10/Ladder refit: constant and residuals on their LLaMA3-8B rows",
            ["constant", *(f"beta {b}" for b in runs)],
            [
                [
                    k,
                    *(
                        f"{r['t10_ladder'][k]['value']:g}: "
                        + " / ".join(percent(e) for e in r["t10_ladder"][k]["residuals"])
                        for r in runs.values()
                    ),
                ]
                for k in keys
            ],
        )
    path = write_result(args.out_dir, NAME, "wse2-wse3", {"runs": runs})
    out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
