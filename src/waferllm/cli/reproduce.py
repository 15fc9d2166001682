"""`waferllm reproduce`: regenerate the paper's comparison tables and figures, modelled.

Runs `waferllm.reproduce` with a progress bar on stderr, prints the tables (or, with `--json`,
only the JSON record), and writes the Markdown, JSON and PNG artefacts to `--out-dir`
(default `benchmarks/results`; `--no-write` skips them). Parsing and printing only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.markdown import Markdown
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from waferllm.api.provenance import package_commit, package_version
from waferllm.api.reproduce import reproduce
from waferllm.api.reproduce_output import to_markdown, write_artifacts
from waferllm.cli.common import (
    add_device_options,
    console,
    device_from_args,
    finish_report,
    print_json,
    what_if_line,
)

DEFAULT_OUT = Path("benchmarks") / "results"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reproduce",
        help="regenerate the paper's comparison tables and figures (modelled)",
        description="Prefill/decode TPR vs grid, energy ratios, end-to-end TPR against 1, 8 "
        "and 2x8 A100s and KV capacity for LLaMA3-8B, LLaMA2-13B, CodeLLaMA-34B and "
        "Qwen2-72B; Table 6 (GEMV) and the kernel claims; published figures beside ours with "
        "our error. Writes Markdown, JSON and (with matplotlib) PNG plots.",
    )
    add_device_options(parser, default="wse2")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where the artefacts go (default {DEFAULT_OUT})",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    parser.add_argument("--json", action="store_true", help="print only the JSON record")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    err = console(stderr=True)
    bar = Progress(
        TextColumn("reproduce"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # a transient bar; nothing at all when redirected
    )
    with bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        result = reproduce(device=device, progress=progress)
    if result.provenance is not None:  # the written record says which command made it
        stamped = dataclasses.replace(result.provenance, command=args.command_line)
        result = dataclasses.replace(result, provenance=stamped)
    header = _run_header(args)
    paths: list[Path] = []
    if not args.no_write:
        paths = write_artifacts(result, args.out_dir, header=header, plots=not args.no_plot)
    report = finish_report(args, json.loads(json.dumps(result.to_dict(), default=_json)))
    if args.json:
        print_json(report)
    else:
        out = console()
        what_if = what_if_line(device)
        if what_if:
            out.print(what_if)
        out.print(Markdown(to_markdown(result, header=header)))
        for path in paths:
            out.print(f"wrote {path}")
    return 0


def _json(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _run_header(args: argparse.Namespace) -> dict[str, str]:
    """Which code and command produced the numbers."""
    return {
        "version": package_version(),
        "commit": package_commit() or "unknown",
        "command": args.command_line,
    }
