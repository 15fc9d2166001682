"""`waferllm gpu`: the GPU baseline's modelled prediction for one request (SPEC.md §1.1, §7).

Parsing and printing only; the model is `waferllm.api.gpu.gpu_estimate`. A model that does not
fit the GPUs' memory is a user error here: one stderr line, exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from waferllm.api.gpu import GPU_PRESETS, gpu_estimate
from waferllm.cli.common import CliError, console, positive_int, print_json

NUM_GPUS = (1, 8, 16)  # the paper's setups: one GPU, one NVLink node, two nodes over InfiniBand


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gpu",
        help="the GPU baseline (A100/H100, tensor parallel) for one request, modelled",
        description="Modelled batch-1 inference on 1, 8 (NVLink) or 16 (2 nodes, InfiniBand "
        "assumed) GPUs: roofline kernels, ring allreduces, constants calibrated on the paper's "
        "LLaMA3-8B A100 rows.",
    )
    parser.add_argument("--model", required=True, help="built-in model name or checkpoint dir")
    parser.add_argument("--gpu", choices=tuple(GPU_PRESETS), default="a100")
    parser.add_argument("--num-gpus", type=int, choices=NUM_GPUS, default=1)
    parser.add_argument("--prompt-len", type=positive_int, required=True, metavar="L")
    parser.add_argument("--output-len", type=positive_int, required=True, metavar="O")
    parser.add_argument("--json", action="store_true", help="print the request report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    estimate = gpu_estimate(
        args.model,
        gpu=args.gpu,
        num_gpus=args.num_gpus,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
    )
    if estimate.report is None:
        raise CliError(estimate.message)
    report = estimate.report.to_dict()
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    out = console()
    metrics, breakdown = report["metrics"], report["breakdown"]
    table = Table(title=f"{report['model']} on {report['device']} GPUs, modelled")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = (
        ("setup", report["placement"]),
        ("TTFT", _seconds(metrics["ttft_s"])),
        ("TPOT", _seconds(metrics["tpot_s"])),
        ("prefill TPR", _rate(metrics["prefill_tpr"])),
        ("decode TPR", _rate(metrics["decode_tpr"])),
        ("end-to-end TPR", _rate(metrics["e2e_tpr"])),
        ("energy (TDP x GPUs x time)", f"{metrics['energy_j']:.3g} J"),
        ("tensor-core utilisation", f"{metrics['utilization']:.1%}"),
    )
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(_phase_table(breakdown))
    memory = breakdown["memory"]
    out.print(
        f"memory per GPU: weights {memory['weights_bytes_per_gpu'] / 1e9:.2f} GB, KV cache "
        f"{memory['kv_bytes_per_token_per_gpu'] * memory['context_tokens'] / 1e9:.2f} GB for "
        f"{memory['context_tokens']} tokens, {memory['usable_bytes_per_gpu'] / 1e9:.1f} GB usable; "
        f"KV capacity {memory['kv_capacity_tokens']} tokens"
    )


def _phase_table(breakdown: dict[str, Any]) -> Table:
    table = Table(title="Where the time goes (modelled seconds, per request)")
    table.add_column("phase")
    for column in ("total", "compute-bound", "memory-bound", "kernel floor", "allreduce"):
        table.add_column(column, justify="right")
    for phase in ("prefill", "decode"):
        cost = breakdown[phase]
        table.add_row(
            phase,
            *(
                _seconds(cost[key])
                for key in (
                    "time_s",
                    "compute_bound_s",
                    "memory_bound_s",
                    "floor_bound_s",
                    "allreduce_s",
                )
            ),
        )
    return table


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.3f} s"
    return f"{value * 1e3:.3f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} tok/s"
