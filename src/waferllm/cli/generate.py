"""`waferllm generate`: real generation from a local checkpoint on the virtual wafer.

Streams the text as tokens arrive (to stdout, or to stderr with `--json`), then prints the
request's modelled metrics as a table, or with `--json` only the request report (SPEC.md
§10.4). Parsing and printing only: the work is `waferllm.api.llm.LLM`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TextIO

from rich.table import Table

from waferllm.api.llm import LLM, RequestOutput, SamplingParams
from waferllm.api.trace import generation_trace
from waferllm.cli import units
from waferllm.cli.common import (
    CliError,
    add_device_options,
    add_dtype_options,
    add_trace_option,
    console,
    device_from_args,
    dtype_line,
    finish_report,
    print_json,
    what_if_line,
    write_trace,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        help="generate from a local Hugging Face checkpoint on the virtual wafer",
        description="Run a local Llama-family checkpoint on the virtual wafer with real "
        "numbers, stream the generated text, then report the modelled metrics.",
    )
    parser.add_argument("--model", required=True, metavar="PATH", help="checkpoint directory")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text (needs tokenizer.json)")
    prompt.add_argument(
        "--prompt-ids", metavar="IDS", help="prompt token ids, comma-separated: 1,2,3"
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="send --prompt as a user message through the checkpoint's chat template",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="default 32")
    grids = parser.add_argument_group("grids (P for P x P, or RxC: R rows by C columns)")
    grids.add_argument("--grid", metavar="G", help="one grid for both phases")
    grids.add_argument("--prefill-grid", metavar="G", help="the prefill grid")
    grids.add_argument("--decode-grid", metavar="G", help="the decode grid")
    add_device_options(parser, default="tiny")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="host compute dtype (costs always use the device's storage dtype)",
    )
    parser.add_argument(
        "--f16-accumulate",
        action="store_true",
        help="with --dtype float16, accumulate in f16 as the hardware does",
    )
    parser.add_argument(
        "--torch-device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where the virtual wafer's tensors live (default cpu; cuda: a GPU)",
    )
    sampling = parser.add_argument_group("sampling (default greedy: the on-mesh argmax)")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    sampling.add_argument("--top-k", type=int, default=None, metavar="K")
    sampling.add_argument("--top-p", type=float, default=1.0, metavar="P")
    sampling.add_argument("--seed", type=int, default=None)
    sampling.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    parser.add_argument(
        "--kv-cache", choices=("shift", "concat"), default="shift", help="KV cache policy"
    )
    parser.add_argument(
        "--resident-layouts",
        choices=("one", "both"),
        default="one",
        help="one: re-lay the weights between the phases per request (charged); both: keep "
        "both plans' copies resident when SRAM allows",
    )
    add_dtype_options(parser)
    add_trace_option(parser)
    parser.add_argument("--json", action="store_true", help="print only the request report")
    parser.set_defaults(func=run)


def parse_prompt_ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise CliError(f"--prompt-ids expects comma-separated token ids like 1,2,3, got {text!r}")
    return [int(p) for p in parts]


def _grids(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """(grid, prefill grid, decode grid) as given; --grid excludes the other two."""
    if args.grid is not None and (args.prefill_grid or args.decode_grid):
        raise CliError("give either --grid or --prefill-grid/--decode-grid, not both")
    return args.grid, args.prefill_grid, args.decode_grid


def run(args: argparse.Namespace) -> int:
    prompt: str | list[int] = (
        parse_prompt_ids(args.prompt_ids) if args.prompt_ids is not None else args.prompt
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = SamplingParams(
            max_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            ignore_eos=args.ignore_eos,
        )
    grid, prefill_grid, decode_grid = _grids(args)
    if args.chat and args.prompt is None:
        raise CliError("--chat needs --prompt TEXT (the user message), not --prompt-ids")
    device = device_from_args(args)
    status = console(stderr=True)
    with status.status("loading the checkpoint and placing it on the virtual wafer"):
        llm = LLM(
            args.model,
            device=device,
            dtype=args.dtype,
            f16_accumulate=args.f16_accumulate,
            torch_device=args.torch_device,
            kv_cache=args.kv_cache,
            resident_layouts=args.resident_layouts,
            grid=grid,
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            weight_dtype=args.weight_dtype,
            kv_dtype=args.kv_dtype,
        )
        if args.chat:
            prompt = llm.chat_prompt([{"role": "user", "content": args.prompt}])
        llm.check_request(prompt, params)
    stream = sys.stderr if args.json else sys.stdout
    output = _stream(llm, prompt, params, stream)
    # settings without effect: in the report, and one stderr line each, as errors are
    report = finish_report(args, output.report.to_dict(), warnings=[str(w.message) for w in caught])
    if args.trace is not None:
        trace = generation_trace(output, llm=llm)
        trace["otherData"]["provenance"] = report["provenance"]
        write_trace(args.trace, trace)
    if args.json:
        print_json(report)
    else:
        what_if = what_if_line(device)
        if what_if:
            console().print(what_if)
        stored = dtype_line(report)
        if stored:
            console().print(stored)
        console().print(metrics_table(output))
    return 0


def _stream(
    llm: LLM, prompt: str | list[int], params: SamplingParams, out: TextIO
) -> RequestOutput:
    """Write each piece of text as its token arrives (token ids when there is no tokenizer)."""
    final = None
    for chunk in llm.stream(prompt, params):
        piece = chunk.text if llm.tokenizer is not None else f"[{chunk.token_id}]"
        out.write(piece)
        out.flush()
        final = chunk.output
    out.write("\n")
    out.flush()
    assert final is not None
    return final


def metrics_table(output: RequestOutput) -> Table:
    report, m = output.report, output.metrics
    grids = f"prefill {_grid(report.prefill_grid)}, decode {_grid(report.decode_grid)}"
    table = Table(
        title=f"Modelled on the virtual wafer: {report.model} on {report.device} ({grids})",
        caption=f"host wall-clock (not modelled): {units.duration(report.host_wall_s)}",
    )
    table.add_column("metric")
    table.add_column("modelled", justify="right")
    rows = [
        ("prompt / generated tokens", f"{report.prompt_len} / {report.output_len}"),
        ("TTFT", units.duration(m.ttft_s)),
        ("TPOT", units.duration(m.tpot_s)),
        ("prefill TPR", units.throughput(m.prefill_tpr)),
        ("decode TPR", units.throughput(m.decode_tpr)),
        ("end-to-end TPR", units.throughput(m.e2e_tpr)),
        ("transition", units.duration(m.transition_s)),
        ("energy", units.energy(m.energy_j)),
        ("peak SRAM per core", units.size(m.peak_sram_bytes_per_core)),
        ("routes per core", units.count(m.routes_per_core)),
        ("utilization", units.percent(m.utilization, 2)),
        ("KV capacity (shift / concat)", _pair(report.kv_capacity_tokens)),
        ("max new tokens (shift / concat)", _pair(report.max_new_tokens)),
        ("placement", str(report.placement)),
        ("finish reason", str(output.finish_reason)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _grid(grid: tuple[int, int] | None) -> str:
    return f"{grid[0]}x{grid[1]}" if grid else "n/a"


def _pair(capacity: object) -> str:
    shift, concat = getattr(capacity, "shift", None), getattr(capacity, "concat", None)
    return f"{units.count(shift)} / {units.count(concat)}"
