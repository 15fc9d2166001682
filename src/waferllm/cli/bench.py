"""`waferllm bench gemm|gemv`: one distributed GEMM or GEMV on the virtual wafer (SPEC.md §1.1,
§10.3). Parsing and printing only; the work is `waferllm.api.bench`. A point that does not fit
in SRAM prints "does not fit (needs X bytes per core)" and exits 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from waferllm.api.bench import GEMM_ALGOS, GEMV_ALGOS, KernelReport, bench_gemm, bench_gemv
from waferllm.cli import units
from waferllm.cli.common import (
    DTYPE_NAMES,
    add_device_options,
    console,
    device_from_args,
    finish_report,
    positive_int,
    print_json,
    what_if_line,
)


def _fanouts(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="P (P x P) or RxC: rows x columns")
    add_device_options(parser)
    parser.add_argument(
        "--mode",
        choices=("estimate", "functional"),
        default="estimate",
        help="estimate: shapes and costs only (default); functional: real numbers, checked "
        "against a dense reference",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
        help="host compute dtype (costs always use the device's storage dtype)",
    )  # fmt: skip
    parser.add_argument(
        "--f16-accumulate", action="store_true", help="accumulate float16 in float16"
    )
    parser.add_argument(
        "--torch-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where functional tiles live (default cpu; cuda: a GPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="operand seed (functional mode)")
    parser.add_argument(
        "--weight-dtype", choices=DTYPE_NAMES, default="float16",
        help="how the weight operand (B, W) is stored: float16 (default), int8 or int4 with a "
        "float16 scale per 32 along the reduced axis (meshgemm, cannon and the GEMVs)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the kernel report as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="one distributed GEMM or GEMV on the virtual wafer (modelled cost)",
        description="Run one kernel on a grid of the device and report its modelled latency, "
        "compute/communication split, utilisation, routes and SRAM per core.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", parser_class=type(parser))
    kinds.required = True
    gemm = kinds.add_parser("gemm", help="C = A @ B: MeshGEMM or a baseline")
    gemm.add_argument("--algo", choices=GEMM_ALGOS, default="meshgemm")
    for name in ("m", "k", "n"):
        gemm.add_argument(f"--{name}", type=positive_int, required=True, metavar=name.upper())
    gemm.add_argument(
        "--align-both", action="store_true",
        help="skew B on the device too (timed) instead of storing it pre-skewed",
    )  # fmt: skip
    _common(gemm)
    gemm.set_defaults(func=run_gemm)
    gemv = kinds.add_parser("gemv", help="y = x W: MeshGEMV or a baseline")
    gemv.add_argument("--algo", choices=GEMV_ALGOS, default="meshgemv")
    gemv.add_argument("--m", type=positive_int, required=True, help="reduced length (x, W rows)")
    gemv.add_argument("--n", type=positive_int, required=True, help="output length (W columns)")
    tree = gemv.add_mutually_exclusive_group()
    tree.add_argument("--fanouts", type=_fanouts, metavar="B1,B2", help="K-tree fan-outs")
    tree.add_argument("--groups", type=positive_int, metavar="G", help="= --fanouts ceil(P/G),G")
    gemv.add_argument(
        "--no-broadcast", action="store_true", help="stop after the reduce (no final broadcast)"
    )
    _common(gemv)
    gemv.set_defaults(func=run_gemv)


def run_gemm(args: argparse.Namespace) -> int:
    report = bench_gemm(
        algo=args.algo,
        grid=args.grid,
        m=args.m,
        k=args.k,
        n=args.n,
        device=device_from_args(args),
        mode=args.mode,
        dtype=args.dtype,
        f16_accumulate=args.f16_accumulate,
        align_both=args.align_both,
        seed=args.seed,
        weight_dtype=args.weight_dtype,
        torch_device=args.torch_device,
    )
    return _show(report, args)


def run_gemv(args: argparse.Namespace) -> int:
    report = bench_gemv(
        algo=args.algo,
        grid=args.grid,
        m=args.m,
        n=args.n,
        fanouts=args.fanouts,
        groups=args.groups,
        broadcast=not args.no_broadcast,
        device=device_from_args(args),
        mode=args.mode,
        dtype=args.dtype,
        f16_accumulate=args.f16_accumulate,
        seed=args.seed,
        weight_dtype=args.weight_dtype,
        torch_device=args.torch_device,
    )
    return _show(report, args)


def _show(report: KernelReport, args: argparse.Namespace) -> int:
    as_dict = finish_report(args, report.to_dict())
    if args.json:
        print_json(as_dict)
        return 0
    rows, cols = report.grid
    title = (
        f"bench {report.kind}: {report.algo}, m={report.m} k={report.k} n={report.n} on "
        f"{rows}x{cols} cores of {report.device} ({report.mode} mode; cycles and times modelled)"
    )
    out = console()
    what_if = what_if_line(device_from_args(args))
    if what_if:
        out.print(what_if)
    if args.weight_dtype != "float16":
        out.print(f"weights stored as {args.weight_dtype} (dequantised per use, modelled)")
    if not report.fits:
        out.print(title)
        out.print(report.message or "does not fit")
        return 0
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for label, value in _rows(report):
        table.add_row(label, value)
    out.print(table)
    return 0


def _rows(r: KernelReport) -> list[tuple[str, str]]:
    def cycles(value: Any) -> str:
        return f"{value:,.0f}"

    parts = (r.compute_cycles or 0.0, r.comm_cycles or 0.0, r.overhead_cycles or 0.0)
    split = units.shares(parts)  # the three exposed parts make the latency: 100% together
    align = units.percent((r.align_cycles or 0.0) / r.latency_cycles) if r.latency_cycles else "-"
    rows = [
        ("latency, modelled (cycles)", cycles(r.latency_cycles)),
        ("latency, modelled", units.duration(r.latency_s)),
        ("mean core cycles, modelled", cycles(r.mean_core_cycles)),
        ("compute, exposed (cycles)", f"{cycles(parts[0])} ({split[0]})"),
        ("communication, exposed (cycles)", f"{cycles(parts[1])} ({split[1]})"),
        ("step overhead (cycles)", f"{cycles(parts[2])} ({split[2]})"),
        ("  of which alignment (cycles)", f"{cycles(r.align_cycles)} ({align} of the latency)"),
        ("communication busy, hidden or not (cycles)", cycles(r.comm_busy_cycles)),
        ("utilization of peak FLOP/s", units.percent(r.utilization, 2)),
        ("compute fraction of the critical path", units.percent(r.compute_fraction)),
        ("routes per core (max)", units.count(r.routes_per_core)),
        ("peak SRAM per core", units.size(r.peak_sram_bytes_per_core)),
    ]
    if r.max_abs_error is not None:
        rows.append(("max abs error vs dense reference", f"{r.max_abs_error:.3g}"))
        rows.append(("  relative to the output scale", f"{r.max_rel_error:.3g}"))
    rows.append(("host wall time (measured)", units.duration(r.host_wall_s)))
    return rows
