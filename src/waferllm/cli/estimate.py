"""`waferllm estimate`: the full-scale modelled prediction of one request, without weights.

Prints the request report (SPEC.md §10.4) as tables: metrics, the placement (regions, layers
per region, grid per phase), the grid search's choice, time by op and by compute/communication,
and the KV capacity of both cache policies; with `--json`, only the report on stdout (the
search's progress goes to stderr). Parsing and printing only: the work is
`waferllm.api.estimate.estimate`.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from waferllm.api.estimate import Estimate, estimate
from waferllm.api.trace import estimate_trace
from waferllm.cli import units
from waferllm.cli.common import (
    add_device_options,
    add_dtype_options,
    add_trace_option,
    console,
    device_from_args,
    dtype_line,
    finish_report,
    positive_int,
    print_json,
    what_if_line,
    write_trace,
)

TOP_OPS = 8  # rows of the per-op tables


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "estimate",
        help="full-scale modelled prediction of one request (no weights needed)",
        description="Run the mesh transformer in estimate mode (shapes only, every SRAM and "
        "route check enforced) and report TTFT, TPOT, TPRs, energy, placement and KV "
        "capacity. Grids not given are searched: the fastest feasible pair minimising "
        "TTFT + transition + decode time.",
    )
    parser.add_argument("--model", required=True, help="built-in model name or checkpoint dir")
    add_device_options(parser, default="wse2")
    parser.add_argument("--prompt-len", type=positive_int, required=True, metavar="L")
    parser.add_argument("--output-len", type=positive_int, required=True, metavar="O")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="B",
        help="B such requests decoded together, each in its own KV rows (default 1; over "
        "several devices they overlap in the pipeline); metrics are one sequence's, the "
        "batch's throughput is in the breakdown",
    )
    grids = parser.add_argument_group("grids (P for P x P, or RxC: R rows by C columns)")
    grids.add_argument("--prefill-grid", metavar="G", help="the prefill grid (default: searched)")
    grids.add_argument("--decode-grid", metavar="G", help="the decode grid (default: searched)")
    parser.add_argument(
        "--placement",
        choices=("fit", "per-layer"),
        default="fit",
        help="fit: the whole model resident under the SRAM limit (default); per-layer: the "
        "paper's one-layer extrapolation",
    )
    parser.add_argument(
        "--kv-cache", choices=("shift", "concat"), default="shift", help="KV cache policy"
    )
    parser.add_argument(
        "--resident-layouts",
        choices=("one", "both"),
        default="one",
        help="one: weights re-laid between the phases per request (default); both: keep both",
    )
    parser.add_argument(
        "--system",
        choices=("waferllm", "t10", "ladder"),
        default="waferllm",
        help="the system modelled: WaferLLM (default) or the paper's wafer-side baselines T10 "
        "and Ladder (per-layer; grids default to WaferLLM's)",
    )
    add_dtype_options(parser)
    parser.add_argument(
        "--num-devices",
        type=_num_devices,
        default=1,
        metavar="N|auto",
        help="place fit over N linked devices, a range of layers each, joined by the device's "
        "inter-system link (default 1); auto: the fewest that hold the request",
    )
    add_trace_option(parser)
    parser.add_argument("--json", action="store_true", help="print only the request report")
    parser.set_defaults(func=run)


def _num_devices(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    searching = args.prefill_grid is None or args.decode_grid is None
    with _progress(enabled=searching) as progress:
        result = estimate(
            args.model,
            device=device,
            prompt_len=args.prompt_len,
            output_len=args.output_len,
            prefill_grid=args.prefill_grid,
            decode_grid=args.decode_grid,
            placement=args.placement,
            kv_cache=args.kv_cache,
            resident_layouts=args.resident_layouts,
            progress=progress,
            batch_size=args.batch_size,
            system=args.system,
            weight_dtype=args.weight_dtype,
            kv_dtype=args.kv_dtype,
            num_devices=args.num_devices,
        )
    report = finish_report(args, result.to_dict())
    if args.trace is not None:
        trace = estimate_trace(result, device=device)
        trace["otherData"]["provenance"] = report["provenance"]
        write_trace(args.trace, trace)
    if args.json:
        print_json(report)
    else:
        _print(result, what_if_line(device))
    return 0


class _progress:
    """A rich progress bar on stderr for the grid search; a callback `(done, total, what)`."""

    def __init__(self, *, enabled: bool) -> None:
        self._bar: Progress | None = None
        err = console(stderr=True)
        if enabled and err.is_terminal:  # a transient bar; nothing at all when redirected
            self._bar = Progress(
                TextColumn("grid search"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} {task.description}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
        self._task: Any = None

    def __enter__(self) -> _progress | None:
        if self._bar is None:
            return None
        self._bar.__enter__()
        self._task = self._bar.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, done: int, total: int, what: str) -> None:
        assert self._bar is not None
        self._bar.update(self._task, completed=done, total=total, description=what)


# ---- printing ------------------------------------------------------------------------------------
def _print(result: Estimate, what_if: str | None) -> None:
    out = console()
    report = result.to_dict()
    if what_if:
        out.print(what_if)
    metrics, breakdown = report["metrics"], report["breakdown"]
    title = f"{report['model']} on {report['device']}: modelled estimate, placement "
    title += report["placement"] + (f", system {report['system']}" if "system" in report else "")
    if result.extrapolated:
        out.print(f"[bold]per-layer extrapolation[/bold]: {breakdown['note']}")
    stored = dtype_line(report)
    if stored:
        out.print(stored)
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = (
        ("request", f"{report['prompt_len']} prompt + {report['output_len']} output tokens"),
        ("TTFT", units.duration(metrics["ttft_s"])),
        ("TPOT", units.duration(metrics["tpot_s"])),
        ("prefill TPR", units.throughput(metrics["prefill_tpr"])),
        ("decode TPR", units.throughput(metrics["decode_tpr"])),
        ("end-to-end TPR", units.throughput(metrics["e2e_tpr"])),
        ("transition (KV + weights re-layout)", units.duration(metrics["transition_s"])),
        ("energy (device power x time)", units.energy(metrics["energy_j"])),
        ("peak SRAM per core", units.size(metrics["peak_sram_bytes_per_core"])),
        ("routes per core (max, any phase)", str(metrics["routes_per_core"])),
        ("utilisation (useful FLOPs / peak)", units.percent(metrics["utilization"], 2)),
    )
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(_placement_table(breakdown["placement"]))
    if "pipeline" in breakdown:
        out.print(_pipeline_table(breakdown["pipeline"]))
    if breakdown.get("search"):
        out.print(_search_line(breakdown["search"]))
    out.print(_phase_table(breakdown))
    for phase in ("prefill", "decode"):
        out.print(_ops_table(phase, breakdown[phase]["ops"]))
    out.print(_capacity_table(report))


def _placement_table(placement: dict[str, Any]) -> Table:
    table = Table(
        title=f"Placement ({placement['mode']}, resident layouts {placement['resident']})"
    )
    for column in ("phase", "grid", "regions", "layers per region", "region origins (row, col)"):
        table.add_column(column)
    for phase in ("prefill", "decode"):
        p = placement[phase]
        origins = ", ".join(f"({r['origin'][0]}, {r['origin'][1]})" for r in p["regions"][:6])
        if len(p["regions"]) > 6:
            origins += ", ..."
        table.add_row(
            phase,
            f"{p['grid'][0]}x{p['grid'][1]}",
            str(len(p["regions"])),
            ", ".join(str(r["num_layers"]) for r in p["regions"]),
            origins,
        )
    return table


def _pipeline_table(pipeline: dict[str, Any]) -> Table:
    link = pipeline["system_link"]
    table = Table(
        title=f"Pipeline over {pipeline['num_devices']} linked devices (system link "
        f"{link['bytes_per_s'] / 1e9:g} GB/s, {units.duration(link['latency_s'])} per transfer)"
    )
    for column in ("device", "layers", "prefill regions", "decode regions"):
        table.add_column(column, justify="right")
    for d in pipeline["devices"]:
        last = d["first_layer"] + d["num_layers"] - 1
        table.add_row(
            str(d["device"]),
            f"{d['first_layer']}-{last}",
            str(d["prefill_regions"]),
            str(d["decode_regions"]),
        )
    pre, dec = link["prefill"], link["decode"]
    table.caption = (
        f"system link (modelled): prefill {pre['transfers']} transfers, "
        f"{units.duration(pre['modelled_s'])} (+{units.duration(pre['io_legs_modelled_s'])} "
        f"on-wafer legs to the I/O edge); decode {dec['transfers']} transfers, "
        f"{units.duration(dec['modelled_s'])} (+{units.duration(dec['io_legs_modelled_s'])})"
    )
    return table


def _search_line(search: dict[str, Any]) -> str:
    p, d = search["prefill_grid"], search["decode_grid"]
    return (
        f"grid search: prefill {p[0]}x{p[1]}, decode {d[0]}x{d[1]} minimise TTFT + transition + "
        f"decode = {units.duration(search['objective_s'])} over {search['evaluated']} evaluations "
        f"({search['space']}; {units.duration(search['host_wall_s'])} on this host)"
    )


def _phase_table(breakdown: dict[str, Any]) -> Table:
    table = Table(title="Where the time goes (modelled, per request)")
    table.add_column("phase")
    for column in ("total", "compute", "communication", "overhead", "comm busy (hidden too)"):
        table.add_column(column, justify="right")
    for phase in ("prefill", "transition", "decode"):
        cost = breakdown[phase]
        table.add_row(
            phase,
            *(
                units.duration(cost[key])
                for key in ("modelled_s", "compute_s", "comm_s", "overhead_s", "comm_busy_s")
            ),
        )
    return table


def _ops_table(phase: str, ops: dict[str, float]) -> Table:
    table = Table(title=f"{phase}: time by op (modelled, top {TOP_OPS})")
    table.add_column("op")
    table.add_column("time", justify="right")
    table.add_column("share", justify="right")
    total = sum(ops.values()) or 1.0
    for op, seconds in list(ops.items())[:TOP_OPS]:
        table.add_row(op, units.duration(seconds), units.percent(seconds / total))
    return table


def _capacity_table(report: dict[str, Any]) -> Table:
    cap, room = report["kv_capacity_tokens"], report["max_new_tokens"]
    table = Table(title="KV cache (the whole model resident, on the decode grid)")
    table.add_column("policy")
    table.add_column("capacity (tokens)", justify="right")
    table.add_column(f"max new tokens after {report['prompt_len']}", justify="right")
    for policy in ("shift", "concat"):
        table.add_row(policy, units.count(cap[policy]), units.count(room[policy]))
    if cap.get("reason"):
        table.caption = cap["reason"]
    return table
