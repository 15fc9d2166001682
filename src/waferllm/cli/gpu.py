"""`waferllm gpu`: the GPU baseline's modelled prediction for a request (SPEC.md §1.1, §7).

Parsing and printing only; the model is `waferllm.api.gpu.gpu_estimate`. A model that does not
fit the GPUs' memory is a user error here: one stderr line, exit code 2. Warnings (e.g. a
context past the model's trained length) go to stderr, one per line.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from waferllm.api.gpu import GPU_PRESETS, Stack, gpu_estimate
from waferllm.cli import units
from waferllm.cli.common import CliError, console, finish_report, positive_int, print_json

NUM_GPUS = (1, 8, 16)  # the paper's setups: one GPU, one NVLink node, two nodes over InfiniBand


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gpu",
        help="the GPU baseline (A100/H100/H200/B200, tensor parallel) for a request, modelled",
        description="Modelled inference on 1, 8 (NVLink) or 16 (2 nodes, InfiniBand assumed) "
        "GPUs: roofline kernels and NCCL-class allreduces at published hardware values, plus "
        "the paper's serving-stack term (fitted on its LLaMA3-8B A100 rows) unless --stack ideal.",
    )
    parser.add_argument("--model", required=True, help="built-in model name or checkpoint dir")
    parser.add_argument("--gpu", choices=tuple(GPU_PRESETS), default="a100")
    parser.add_argument("--num-gpus", type=int, choices=NUM_GPUS, default=1)
    parser.add_argument("--prompt-len", type=positive_int, required=True, metavar="L")
    parser.add_argument("--output-len", type=positive_int, required=True, metavar="O")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="B",
        help="B identical requests prefilled together and decoded as one batch (default 1)",
    )
    parser.add_argument(
        "--stack",
        choices=tuple(map(str, Stack)),
        default=str(Stack.PAPER),
        help="'paper': the paper's serving-stack overhead term applies (default); 'ideal': "
        "hardware terms only",
    )
    parser.add_argument("--json", action="store_true", help="print the request report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    estimate = gpu_estimate(
        args.model,
        gpu=args.gpu,
        num_gpus=args.num_gpus,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        batch_size=args.batch_size,
        stack=args.stack,
    )
    if estimate.report is None:
        raise CliError(estimate.message)
    report = finish_report(args, estimate.report.to_dict())  # prints its warnings
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    out = console()
    metrics, breakdown = report["metrics"], report["breakdown"]
    stack = breakdown["stack"]["stack"]
    batch = f", batch {breakdown['batch_size']}" if breakdown["batch_size"] > 1 else ""
    title = f"{report['model']} on {report['device']} GPUs{batch}, {stack} stack, modelled"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = (
        ("setup", report["placement"]),
        ("TTFT", units.duration(metrics["ttft_s"])),
        ("TPOT", units.duration(metrics["tpot_s"])),
        ("prefill TPR", units.throughput(metrics["prefill_tpr"])),
        ("decode TPR", units.throughput(metrics["decode_tpr"])),
        ("end-to-end TPR", units.throughput(metrics["e2e_tpr"])),
        ("energy (TDP x GPUs x time)", units.energy(metrics["energy_j"])),
        ("tensor-core utilisation", units.percent(metrics["utilization"])),
    )
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(_phase_table(breakdown))
    memory = breakdown["memory"]
    kv_tokens = memory["context_tokens"] * memory["batch_size"]
    out.print(
        f"memory per GPU: weights {memory['weights_bytes_per_gpu'] / 1e9:.2f} GB, KV cache "
        f"{kv_tokens * memory['kv_bytes_per_token_per_gpu'] / 1e9:.2f} GB for "
        f"{kv_tokens} tokens, {memory['usable_bytes_per_gpu'] / 1e9:.1f} GB usable; "
        f"KV capacity {memory['kv_capacity_tokens']} tokens"
    )


def _phase_table(breakdown: dict[str, Any]) -> Table:
    table = Table(title="Where the time goes (modelled, per request)")
    table.add_column("phase")
    columns = ("total", "compute-bound", "memory-bound", "kernel floor", "allreduce", "stack")
    for column in columns:
        table.add_column(column, justify="right")
    for phase in ("prefill", "decode"):
        cost = breakdown[phase]
        table.add_row(
            phase,
            *(
                units.duration(cost[key])
                for key in (
                    "time_s",
                    "compute_bound_s",
                    "memory_bound_s",
                    "floor_bound_s",
                    "allreduce_s",
                    "stack_s",
                )
            ),
        )
    return table
