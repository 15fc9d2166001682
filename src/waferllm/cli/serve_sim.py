"""`waferllm serve-sim`: continuous batching over a request trace (SPEC.md §1.1, §10.13).

Parsing and printing only; the simulation is `waferllm.serve_sim`. `--json` prints the §10.13
report; otherwise a table of the trace-level metrics. Warnings go to stderr, one per line.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from rich.table import Table

from waferllm import serve_sim
from waferllm.api.serve_sim import DEFAULT_MAX_BATCH
from waferllm.cli.common import (
    add_device_options,
    console,
    device_from_args,
    positive_int,
    print_json,
)

MODES = ("time-multiplexed", "disaggregated")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-sim",
        help="serving simulation: arrivals, continuous batching, latency percentiles, goodput",
        description="Replay a request trace (JSONL: arrival_s, prompt_len, output_len) or "
        "Poisson arrivals through a continuous-batching scheduler (FCFS, KV-capacity "
        "admission, recompute preemption) timed by the modelled step costs.",
    )
    parser.add_argument("--model", required=True, help="built-in model name or checkpoint dir")
    add_device_options(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--requests", metavar="FILE", help="JSONL trace, one request per line")
    source.add_argument("--rate", type=float, metavar="R", help="Poisson arrivals per second")
    parser.add_argument("--num-requests", type=positive_int, metavar="N")
    parser.add_argument("--prompt-len", type=positive_int, metavar="L")
    parser.add_argument("--output-len", type=positive_int, metavar="O")
    parser.add_argument("--seed", type=int, default=0, help="Poisson seed (default 0)")
    parser.add_argument("--mode", choices=MODES, default=MODES[0])
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULT_MAX_BATCH,
        metavar="B",
        help=f"most requests admitted at once (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument("--slo-ttft", type=positive_float, metavar="S", help="TTFT SLO, s")
    parser.add_argument("--slo-tpot", type=positive_float, metavar="S", help="TPOT SLO, s")
    parser.add_argument("--gpu", metavar="NAME", help="run the requests on the GPU baseline")
    parser.add_argument("--num-gpus", type=positive_int, default=1, metavar="N")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sim = serve_sim(
        args.model,
        device=device_from_args(args),
        requests=args.requests,
        rate=args.rate,
        num_requests=args.num_requests,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        seed=args.seed,
        mode=args.mode,
        max_batch=args.max_batch,
        slo_ttft_s=args.slo_ttft,
        slo_tpot_s=args.slo_tpot,
        gpu=args.gpu,
        num_gpus=args.num_gpus,
    )
    report = sim.to_dict()
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    out = console()
    where = report.get("device") or report.get("gpu")
    table = Table(title=f"{report['model']} served on {where}, {report['mode']} (modelled)")
    table.add_column("metric")
    for column in ("mean", "p50", "p90", "p99"):
        table.add_column(column, justify="right")
    for name, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("latency", "latency_s")):
        stats = report[key]
        table.add_row(name, *(_seconds(stats[c]) for c in ("mean", "p50", "p90", "p99")))
    out.print(table)
    slo = report["slo"]
    summary = Table(show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    rows = (
        ("requests", f"{report['num_requests']}"),
        ("duration", _seconds(report["duration_s"])),
        ("throughput", f"{report['throughput_tokens_per_s']:,.1f} tok/s"),
        ("requests/s", f"{report['requests_per_s']:,.3f}"),
        (
            f"goodput (TTFT <= {_seconds(slo['ttft_s'])}, TPOT <= {_seconds(slo['tpot_s'])})",
            f"{report['goodput_requests_per_s']:,.3f} req/s",
        ),
        ("KV peak", f"{report['kv_peak_fraction']:.1%}"),
        ("utilisation (busy share)", f"{report['utilization']:.1%}"),
        ("preemptions", f"{report['preemptions']}"),
    )
    for name, value in rows:
        summary.add_row(name, value)
    out.print(summary)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3f} ms"
    return f"{value * 1e6:.3f} us"
