"""Helpers every benchmark script shares: options, tables, dated result files, plots.

A benchmark prints its table(s), writes `results/<name>_<device>_<date>.json` atomically with
the machine and git commit it ran on, and draws a PNG beside it when matplotlib is installed.
Every number a benchmark reports is modelled by the virtual wafer (`"modelled": true`), except
host wall-clock times, which are labelled as such. Nothing here knows about kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from waferllm.cli.common import write_atomic

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
MODELLED_NOTE = "modelled by the waferllm virtual wafer (estimate mode), not measured"
MEASURED_NOTE = "host wall-clock seconds measured on this machine (the simulator's own speed)"


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="a few small points only (smoke test, seconds)"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG even with matplotlib")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON and PNG go (default {RESULTS_DIR})",
    )
    return p


def console() -> Console:
    return Console(width=170)


def git_commit() -> str:
    """Short commit hash, with "+dirty" when tracked files differ from it."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=BENCHMARKS_DIR, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def result_path(out_dir: Path, name: str, device: str, suffix: str) -> Path:
    today = datetime.date.today().isoformat()
    return Path(out_dir) / f"{name}_{device}_{today}.{suffix}"


def write_result(
    out_dir: Path, name: str, device: str, payload: dict[str, Any], *, modelled: bool = True
) -> Path:
    """Write `payload` with provenance (date, commit, machine) as dated JSON, atomically.
    `modelled=False` for host measurements (simulator speed)."""
    path = result_path(out_dir, name, device, "json")
    record = {
        "benchmark": name,
        "device": device,
        "modelled": modelled,
        "note": MODELLED_NOTE if modelled else MEASURED_NOTE,
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "machine": machine(),
        **payload,
    }
    write_atomic(path, json.dumps(record, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def print_table(
    out: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """A rich table: the first column left-aligned, the others right-aligned."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    out.print(table)


def save_plot(
    args: argparse.Namespace, name: str, device: str, draw: Callable[[Any], None]
) -> Path | None:
    """Draw with `draw(plt)` into a PNG beside the JSON; None (and a note) without matplotlib."""
    if args.no_plot:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install 'waferllm[plot]')")
        return None
    path = result_path(args.out_dir, name, device, "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(plt)
    tmp = path.with_name(f".{path.name}.tmp.png")
    plt.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close("all")
    os.replace(tmp, path)
    return path


def cycles(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def micros(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.2f}"


# ---- paper claims vs the model ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    """A claim of the paper beside what the model predicts (never fitted to it). `holds` uses
    the tolerance written in `criterion`."""

    claim: str
    paper: str
    model: str
    criterion: str
    holds: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def print_checks(out: Console, title: str, checks: Sequence[Check]) -> None:
    print_table(
        out,
        title,
        ["claim", "paper", "model (predicted)", "criterion", "holds"],
        [[c.claim, c.paper, c.model, c.criterion, "yes" if c.holds else "NO"] for c in checks],
    )
