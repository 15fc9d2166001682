"""`waferllm sweep`: a design-space sweep through the estimate path (SPEC.md §10.14).

Reads a sweep file (TOML or JSON) and `--axis key=v1,v2,...` options, runs every point of
their product in a process pool (or on Ray with `--ray`), and prints where the results went;
a progress bar on stderr when it is a terminal. Parsing and printing only: the work is
`waferllm.api.sweep.sweep`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from waferllm.api.sweep import SweepResult, sweep
from waferllm.api.sweep_spec import load_sweep
from waferllm.cli.common import console, positive_int, print_json

KEYS = (
    "model, device, device.<field>, prompt_len, output_len, batch_size, prefill_grid, "
    "decode_grid, placement, system, num_devices (a count or auto), weight_dtype, kv_dtype"
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sweep",
        help="design-space sweep through the estimate path (Parquet + CSV + plots)",
        description="Run the estimate for every point of the product of the axes; write "
        "DIR/results.parquet and DIR/results.csv (one row per point: every input, the "
        "device's constants, every metric, the error or null) and PNG plots. A point that "
        "fails is a row. Rows are cached in DIR/.cache, so a re-run of the same points is "
        "instant. All metrics are modelled.",
    )
    parser.add_argument(
        "sweep_file",
        nargs="?",
        type=Path,
        metavar="SWEEPFILE",
        help="TOML or JSON: each key a value or a list of values",
    )
    parser.add_argument(
        "--axis",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help=f"one axis (repeatable; replaces the file's axis of the same key); keys: {KEYS}",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="result folder")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes (or local Ray CPUs) running points (default: every CPU)",
    )
    parser.add_argument("--ray", action="store_true", help="run the points as Ray tasks")
    parser.add_argument(
        "--ray-address",
        metavar="A",
        help="the Ray cluster to join (host:port or ray://host:port; implies --ray); "
        "default: a local Ray",
    )
    parser.add_argument("--json", action="store_true", help="print only a JSON summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep_file, axes=args.axis)
    use_ray = args.ray or args.ray_address is not None
    with _Bar(total=spec.num_points) as bar:
        result = sweep(
            spec,
            out=args.out,
            workers=args.workers,
            ray=use_ray,
            ray_address=args.ray_address,
            progress=bar,
        )
    for note in result.notes:
        print(f"waferllm: {note}", file=sys.stderr)
    if args.json:
        print_json(_summary(result, args.out))
    else:
        _print(result, args.out)
    return 0


def _summary(result: SweepResult, out: Path) -> dict[str, Any]:
    return {
        "kind": "sweep",
        "modelled": True,
        "out": str(out),
        "points": len(result.rows),
        "computed": result.computed,
        "cached": result.cached,
        "errors": result.errors,
        "files": [str(path) for path in result.files],
        "host_wall_s": result.wall_s,
    }


def _print(result: SweepResult, out: Path) -> None:
    con = console()
    con.print(
        f"{len(result.rows)} points ({result.computed} estimated, {result.cached} from the "
        f"cache), {result.errors} with an error, in {result.wall_s:.1f} s on this host"
    )
    for path in result.files:
        con.print(f"  {path}")
    errors = [row["error"] for row in result.rows if row["error"]]
    if errors:
        con.print(f"first error: {errors[0]}", markup=False, highlight=False)
    if any(error.startswith("internal error:") for error in errors):
        print(
            "waferllm: some points hit an internal error (a bug; please report it with the "
            f"sweep): see the error column of {out / 'results.csv'}",
            file=sys.stderr,
        )


class _Bar:
    """A rich progress bar on stderr, only when stderr is a terminal; `(done, total)`."""

    def __init__(self, *, total: int) -> None:
        err = console(stderr=True)
        self._bar: Progress | None = None
        if err.is_terminal:
            self._bar = Progress(
                TextColumn("sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._task = self._bar.add_task("points", total=total)

    def __enter__(self) -> _Bar:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
