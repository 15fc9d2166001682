"""Fidelity report: every calibration residual, every qualitative claim of PAPER.md, the SRAM
share used, and the constants, as one table and one dated JSON (issue "fidelity of mechanism").

Residuals: PAPER.md §4 (WSE-3 MeshGEMM, MeshGEMV), §3.2 Table 6 (WSE-2 MeshGEMV at 720x720),
§3.3 LLaMA3-8B prefill and decode rows (per-layer). Claims, never fitted: PAPER.md §3.1's kernel
speed-ups (MeshGEMV vs the pipeline GEMV, MeshGEMM vs SUMMA and Cannon at 2K and 8K, the flat
2K MeshGEMM, compute efficiency at 720x720), §3.3's trends over grids for the four paper models
(prefill TPR rises with cores, decode TPR falls), PLMR's alpha < beta and one beta for both
devices, the shift-vs-concat KV capacity, and the share of the wafer's SRAM the paper's
configurations use, and energy per event against device power x time at §3.3's operating
points. Leave-one-grid-out: every fitted grid predicted by a fit without it.
Every wafer number is modelled.

    python benchmarks/fidelity.py            # everything (a few minutes)
    python benchmarks/fidelity.py --quick    # residuals and constants only
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import calibrate_llm as llm_fit
import calibrate_wafer as wafer_fit
import torch
from common import Check, console, parser, percent, print_checks, print_table, write_result
from paper_data import CLOCK_HZ, WSE3_CHECKS, WSE3_MESHGEMM, WSE3_MESHGEMV

from waferllm import bench_gemm, bench_gemv, estimate, wse2, wse3
from waferllm.api import paper_figures as paper

NAME = "fidelity"
RESIDUAL_TARGET = 0.10  # SPEC.md §8
CONSTANTS = (
    "hop_latency_cycles",
    "stage_latency_cycles",
    "vector_instr_floor_cycles",
    "step_overhead_cycles",
    "op_overhead_cycles",
    "scalar_cycles_per_element",
    "layer_fixed_cycles",
    "flops_per_cycle_per_core",
    "power_w",
    "static_power_w",
    "energy_pj_per_flop",
    "energy_pj_per_sram_byte",
    "energy_pj_per_hop_byte",
)
ENERGY_TARGET = 0.05  # event energy within 5% of power x time at the paper's operating points
TREND_MODELS = paper.PAPER_MODELS


def residual_rows() -> list[dict[str, Any]]:
    """Every calibration row of SPEC.md §8 with the shipped presets (fitted ones flagged)."""
    devices = wafer_fit.shipped_devices()
    rows: list[dict[str, Any]] = []
    for r in wafer_fit.residuals(devices, (*WSE3_MESHGEMM, *WSE3_MESHGEMV, *WSE3_CHECKS)):
        rows.append(
            {
                "figure": r.point.label,
                "source": r.point.source,
                "fitted": r.point.fitted,
                "residual": r.error,
            }
        )
    device = wse2()
    groups = (
        ("PAPER.md §3.2 Table 6 WSE-2 MeshGEMV", paper.TABLE6_SIZES, llm_fit.table6_errors),
        ("PAPER.md §3.3 LLaMA3-8B prefill TPR", paper.PREFILL_GRIDS, llm_fit.prefill_errors),
        ("PAPER.md §3.3 LLaMA3-8B decode TPR", paper.DECODE_GRIDS, llm_fit.decode_errors),
    )
    for label, keys, errors in groups:
        for key, error in zip(keys, errors(device), strict=True):
            rows.append(
                {
                    "figure": f"{label} {key}",
                    "source": label,
                    "fitted": True,
                    "residual": float(error),
                }
            )
    return rows


def leave_one_grid_out() -> list[dict[str, Any]]:
    """Each fitted grid left out of its constant's fit, then predicted: WSE-2's floor on the
    prefill rows, the shared fixed cost of a layer on the decode rows (beta as shipped: Table 6
    fixes it), WSE-3's per-hop term on §4's MeshGEMV points. The other constants stay as shipped."""
    rows: list[dict[str, Any]] = []
    llm_groups = (
        (
            "PAPER.md §3.3 LLaMA3-8B prefill TPR",
            paper.PREFILL_GRIDS,
            llm_fit.FLOOR,
            llm_fit.prefill_errors,
        ),
        (
            "PAPER.md §3.3 LLaMA3-8B decode TPR",
            paper.DECODE_GRIDS,
            llm_fit.LAYER,
            llm_fit.decode_errors,
        ),
    )
    for label, grids, name, errors in llm_groups:
        for grid in grids:
            kept = [g for g in grids if g != grid]
            value, _ = llm_fit.gauss_newton(
                wse2(), name, lambda d, kept=kept, errors=errors: errors(d, kept), iterations=2
            )
            device = llm_fit._with(wse2(), {name: value})
            rows.append(_logo_row(f"{label} {grid}", name, value, float(errors(device, [grid])[0])))
    points = list(WSE3_MESHGEMV)
    for point in points:
        kept = [p for p in points if p is not point]
        solved, _ = wafer_fit._gauss_newton({"wse3": wse3()}, kept, [wafer_fit.ALPHA], iterations=3)
        (res,) = wafer_fit.residuals(solved, [point])
        value = float(getattr(solved["wse3"], wafer_fit.ALPHA))
        rows.append(_logo_row(point.label, wafer_fit.ALPHA, value, res.error))
    return rows


def _logo_row(figure: str, name: str, value: float, residual: float) -> dict[str, Any]:
    return {"figure": figure, "refit_constant": name, "refit_value": value, "residual": residual}


def _gemm(algo: str, side: int, size: int) -> float:
    r = bench_gemm(algo=algo, grid=(side, side), m=size, k=size, n=size, device="wse2")
    assert r.latency_cycles is not None, f"{algo} {size} at {side} does not fit"
    return r.latency_cycles


def _gemv(algo: str, side: int, size: int) -> float:
    r = bench_gemv(algo=algo, grid=(side, side), m=size, n=size, device="wse2")
    assert r.latency_cycles is not None
    return r.latency_cycles


def kernel_claims() -> list[Check]:
    """PAPER.md §3.1 on WSE-2, modelled (never fitted)."""
    gemv_speedup = _gemv("pipeline", 720, 16384) / _gemv("meshgemv", 720, 16384)
    summa_2k = _gemm("summa", 720, 2048) / _gemm("meshgemm", 720, 2048)
    cannon_2k = _gemm("cannon", 720, 2048) / _gemm("meshgemm", 720, 2048)
    summa_8k = _gemm("summa", 720, 8192) / _gemm("meshgemm", 720, 8192)
    flat = _gemm("meshgemm", 720, 2048) / _gemm("meshgemm", 360, 2048)
    eff = bench_gemm(algo="meshgemm", grid=(720, 720), m=8192, k=8192, n=8192, device="wse2")
    return [
        Check(
            "MeshGEMV vs pipeline GEMV, 16K at 720x720",
            "~4.6x",
            f"{gemv_speedup:.2f}x",
            ">= 4x (issue target)",
            gemv_speedup >= 4.0,
        ),
        Check(
            "MeshGEMM vs SUMMA, 2K at 720x720", "2-3x", f"{summa_2k:.2f}x", ">= 2x", summa_2k >= 2.0
        ),
        Check(
            "MeshGEMM vs Cannon, 2K at 720x720",
            "2-3x",
            f"{cannon_2k:.2f}x",
            ">= 2x",
            cannon_2k >= 2.0,
        ),
        Check(
            "SUMMA / MeshGEMM cycles, 8K at 720x720",
            "~1.2 (17% saved)",
            f"{summa_8k:.2f}",
            ">= 1 (MeshGEMM no slower)",
            summa_8k >= 1.0,
        ),
        Check("2K MeshGEMM, 720x720 over 360x360", "flat", f"{flat:.2f}x", "<= 1.1", flat <= 1.1),
        Check(
            "8K MeshGEMM compute fraction at 720x720",
            "> 0.7",
            f"{eff.compute_fraction:.2f}",
            "> 0.7",
            (eff.compute_fraction or 0) > 0.7,
        ),
    ]


def table6_slope_check() -> Check:
    """The WSE-2 local GEMV rate Table 6 measures, beta-free: from 16K to 32K at 720x720 the
    collectives barely change (a few dozen more pipelined elements) while each core's MACs
    quadruple, so published cycles per added MAC price the core's local GEMV; the model's own
    slope is compared (never fitted: the decode trends of the hidden-8192 models hinge on it)."""
    sizes = paper.TABLE6_SIZES
    macs = [math.ceil(s / paper.TABLE6_GRID) ** 2 for s in sizes]
    published = [paper.WSE2_GEMV_S[s] * CLOCK_HZ for s in sizes]
    modelled = [_gemv("meshgemv", paper.TABLE6_GRID, s) for s in sizes]
    rate_paper = (macs[1] - macs[0]) / (published[1] - published[0])
    rate_model = (macs[1] - macs[0]) / (modelled[1] - modelled[0])
    return Check(
        "WSE-2 added MACs per added cycle, Table 6 16K -> 32K at 720x720",
        f"{rate_paper:.2f}",
        f"{rate_model:.2f}",
        "within 10% (local GEMV priced as measured)",
        abs(rate_model / rate_paper - 1) <= RESIDUAL_TARGET,
    )


def _tpr(model: str, phase: str, side: int) -> float | None:
    prompt, output = (4096, 1) if phase == "prefill" else (4095, 2)
    try:
        est = estimate(
            model,
            device="wse2",
            prompt_len=prompt,
            output_len=output,
            prefill_grid=side,
            decode_grid=side,
            placement="per-layer",
        )
    except ValueError:
        return None
    return est.metrics.prefill_tpr if phase == "prefill" else est.metrics.decode_tpr


def trend_claims() -> tuple[list[Check], dict[str, Any]]:
    """PAPER.md §3.3: prefill TPR rises with the grid, decode TPR falls, for every paper model."""
    checks, table = [], {}
    for model in TREND_MODELS:
        pre = [_tpr(model, "prefill", p) for p in paper.PREFILL_GRIDS]
        dec = [_tpr(model, "decode", p) for p in paper.DECODE_GRIDS]
        table[model] = {"prefill": pre, "decode": dec}
        rises = all(
            a is not None and b is not None and b > a for a, b in zip(pre, pre[1:], strict=False)
        )
        falls = all(
            a is not None and b is not None and b < a for a, b in zip(dec, dec[1:], strict=False)
        )
        checks.append(
            Check(f"{model}: prefill TPR 480/600/720", "rises", _fmt(pre), "rises", rises)
        )
        checks.append(Check(f"{model}: decode TPR 420/540/660", "falls", _fmt(dec), "falls", falls))
    return checks, table


def _fmt(values: Sequence[float | None]) -> str:
    return " / ".join("n/a" if v is None else f"{v:,.0f}" for v in values)


def physics_checks() -> list[Check]:
    d2, d3 = wse2(), wse3()
    return [
        Check(
            "alpha < beta on WSE-2",
            "PLMR: alpha < beta",
            f"{d2.hop_latency_cycles} vs {d2.stage_latency_cycles}",
            "alpha < beta",
            d2.hop_latency_cycles < d2.stage_latency_cycles,
        ),
        Check(
            "alpha < beta on WSE-3",
            "PLMR: alpha < beta",
            f"{d3.hop_latency_cycles} vs {d3.stage_latency_cycles}",
            "alpha < beta",
            d3.hop_latency_cycles < d3.stage_latency_cycles,
        ),
        Check(
            "one beta for WSE-2 and WSE-3",
            "same NoC (PAPER.md §2.1)",
            f"{d2.stage_latency_cycles} vs {d3.stage_latency_cycles}",
            "equal (SPEC §8)",
            d2.stage_latency_cycles == d3.stage_latency_cycles,
        ),
        Check(
            "one scalar instruction cost for WSE-2 and WSE-3",
            "same core ISA",
            f"{d2.scalar_cycles_per_element} vs {d3.scalar_cycles_per_element}",
            "equal (SPEC §8)",
            d2.scalar_cycles_per_element == d3.scalar_cycles_per_element,
        ),
        Check(
            "one fixed cost of a decoder layer for WSE-2 and WSE-3",
            "same core and runtime",
            f"{d2.layer_fixed_cycles} vs {d3.layer_fixed_cycles}",
            "equal",
            d2.layer_fixed_cycles == d3.layer_fixed_cycles,
        ),
        Check(
            "per-operation overhead WSE-2 vs WSE-3",
            "-",
            f"{d2.op_overhead_cycles} vs {d3.op_overhead_cycles}",
            "equal (a mechanism)",
            d2.op_overhead_cycles == d3.op_overhead_cycles,
        ),
    ]


def memory_rows() -> list[dict[str, Any]]:
    """KV capacity of both policies and the SRAM share in use for the paper's LLaMA3-8B setup."""
    est = estimate(
        "llama3-8b",
        device="wse2",
        prompt_len=4096,
        output_len=1,
        prefill_grid=660,
        decode_grid=360,
        placement="per-layer",
    )
    report = est.to_dict()
    device = wse2()
    return [
        {
            "setup": "llama3-8b, wse2, prefill 660, decode 360 (PAPER.md §3.3 end-to-end grids)",
            "kv_capacity_shift": report["kv_capacity_tokens"]["shift"],
            "kv_capacity_concat": report["kv_capacity_tokens"]["concat"],
            "max_new_tokens_shift": report["max_new_tokens"]["shift"],
            "max_new_tokens_concat": report["max_new_tokens"]["concat"],
            "peak_sram_fraction_per_core": report["metrics"]["peak_sram_bytes_per_core"]
            / device.sram_bytes_per_core,
            "sram_used_fraction": report.get("sram_used_fraction"),
        }
    ]


def energy_rows() -> list[dict[str, Any]]:
    """Energy per event against device power x time (SPEC.md §3) at PAPER.md §3.3's LLaMA3-8B
    operating points (per-layer): the static power is chosen so that they agree there."""
    rows = []
    for phase, grids in (("prefill", paper.PREFILL_GRIDS), ("decode", paper.DECODE_GRIDS)):
        prompt, output = (4096, 1) if phase == "prefill" else (4095, 2)
        for side in grids:
            est = estimate(
                "llama3-8b",
                device="wse2",
                prompt_len=prompt,
                output_len=output,
                prefill_grid=side,
                decode_grid=side,
                placement="per-layer",
            )
            energy = est.to_dict()["breakdown"]["energy"]
            rows.append(
                {
                    "point": f"LLaMA3-8B {phase} at {side}x{side}",
                    **energy,
                    "events_over_power_x_time": energy["total_j"] / energy["power_x_time_j"] - 1,
                }
            )
    return rows


def constants() -> dict[str, dict[str, Any]]:
    return {
        d.name: {k: {"value": getattr(d, k), "source": d.sources.get(k, "")} for k in CONSTANTS}
        for d in (wse2(), wse3())
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(1)
    out = console()
    rows = residual_rows()
    print_table(
        out,
        "Calibration residuals (modelled / published - 1), shipped presets",
        ["figure", "fitted", "residual", "within 10%"],
        [
            [
                r["figure"],
                "yes" if r["fitted"] else "check",
                percent(r["residual"]),
                "yes" if abs(r["residual"]) <= RESIDUAL_TARGET else "NO",
            ]
            for r in rows
        ],
    )
    checks = physics_checks()
    result: dict[str, Any] = {"residuals": rows, "constants": constants()}
    if not args.quick:
        logo = leave_one_grid_out()
        print_table(
            out,
            "Leave-one-grid-out: each grid predicted by a fit without it",
            ["figure", "refit constant", "refit value", "predicted residual", "within 10%"],
            [
                [
                    r["figure"],
                    r["refit_constant"],
                    f"{r['refit_value']:.2f}",
                    percent(r["residual"]),
                    "yes" if abs(r["residual"]) <= RESIDUAL_TARGET else "NO",
                ]
                for r in logo
            ],
        )
        result["leave_one_grid_out"] = logo
        checks += kernel_claims()
        checks.append(table6_slope_check())
        trends, table = trend_claims()
        checks += trends
        result["trends"] = table
        result["memory"] = memory_rows()
        energy = energy_rows()
        result["energy"] = energy
        checks += [
            Check(
                f"energy per event vs power x time: {r['point']}",
                "~15 kW x time (PAPER.md §2.1)",
                percent(r["events_over_power_x_time"]),
                f"within {ENERGY_TARGET:.0%}",
                abs(r["events_over_power_x_time"]) <= ENERGY_TARGET,
            )
            for r in energy
        ]
    print_checks(out, "PAPER.md claims and PLMR physics (modelled, never fitted)", checks)
    result["checks"] = [c.to_dict() for c in checks]
    path = write_result(args.out_dir, NAME, "wse2-wse3", result)
    out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
