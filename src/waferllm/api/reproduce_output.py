"""The artefacts of `waferllm reproduce`: Markdown tables, the JSON record, PNG plots.

`write_artifacts` writes `reproduce_<device>_<date>.{md,json}` and, when matplotlib is
installed, `reproduce_throughput_vs_grid_<device>_<date>.png` and
`reproduce_wafer_vs_gpu_<device>_<date>.png`, each atomically (a temporary file in the same
folder, then a rename). Formatting only: every number comes from `reproduce.py`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from waferllm.api import paper_figures as paper
from waferllm.api.files import RESULT_FILE_MODE, write_atomic
from waferllm.api.reproduce import Reproduction
from waferllm.api.tables import Column, Section

__all__ = ["format_value", "to_markdown", "write_artifacts"]


def format_value(value: Any, fmt: str) -> str:
    """One cell as the Markdown shows it ("-" for a missing value)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if fmt == "tpr":
        return f"{value:,.1f}"
    if fmt == "s":
        return _seconds(value)
    if fmt == "ratio":
        return f"{value:.3g}"
    if fmt == "pct":
        return f"{value:.1%}"
    if fmt == "err":
        return f"{value:+.1%}"
    if fmt == "x":
        return f"{value:.2f}x"
    if fmt == "int":
        return f"{int(value):,}"
    return str(value)


def _seconds(value: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value / 1e-9:.4g} ns"


def _cell(row: dict[str, Any], column: Column) -> str:
    value = row.get(column.key)
    # error rows are relative errors whatever the column's unit
    if row.get("source") == "our error" and isinstance(value, float):
        return f"{value:+.1%}"
    text = format_value(value, column.fmt)
    why = row.get(f"{column.key}_why")
    if value is None and why:
        return "does not fit" if ("does not fit" in why or "SRAM" in why) else "n/a"
    return text


def section_markdown(section: Section) -> str:
    lines = [f"### {section.title}", ""]
    lines.append("| " + " | ".join(c.header for c in section.columns) + " |")
    lines.append("|" + "|".join("---" for _ in section.columns) + "|")
    for row in section.rows:
        lines.append("| " + " | ".join(_cell(row, c) for c in section.columns) + " |")
    lines.append("")
    lines.extend(f"- {note}" for note in section.notes)
    return "\n".join(lines) + "\n"


def to_markdown(result: Reproduction, *, header: dict[str, str] | None = None) -> str:
    out = [
        f"## WaferLLM reproduction on the virtual {result.device.name}",
        "",
        "Every wafer and GPU number below is modelled (waferllm estimate mode and the GPU "
        "baseline), not measured; published figures come from PAPER.md.",
        "",
    ]
    for key, value in (header or {}).items():
        out.append(f"- {key}: {value}")
    out.append(f"- host time: {result.host_wall_s:.1f} s (wall-clock on this machine)")
    out.append("- a cell 'does not fit' (memory) or 'n/a' (not applicable): the JSON says why")
    out.append("")
    out.extend(section_markdown(s) for s in result.sections)
    return "\n".join(out)


def file_safe(name: str) -> str:
    """A name usable inside a file name: letters, digits, '.', '_' and '-' only, so that a
    device named 'x/../../escaped' cannot place a file outside the output folder."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "_"


def write_artifacts(
    result: Reproduction,
    out_dir: str | Path,
    *,
    date: str | None = None,
    header: dict[str, str] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the Markdown, the JSON and (with matplotlib) the plots; returns their paths."""
    out = Path(out_dir)
    stamp = date or datetime.date.today().isoformat()
    stem = f"reproduce_{file_safe(result.device.name)}_{stamp}"
    record = {**result.to_dict(), **({"run": header} if header else {})}
    paths = [out / f"{stem}.md", out / f"{stem}.json"]
    write_atomic(paths[0], to_markdown(result, header=header).encode())
    write_atomic(paths[1], (json.dumps(record, indent=1, default=_json) + "\n").encode())
    if plots:
        paths.extend(_plots(result, out, stamp))
    return paths


def _json(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---- plots (matplotlib optional) ------------------------------------------------------------
def _plots(result: Reproduction, out: Path, stamp: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    device = file_safe(result.device.name)
    paths = []
    fig = _throughput_vs_grid(plt, result)
    paths.append(_save(fig, out / f"reproduce_throughput_vs_grid_{device}_{stamp}.png"))
    fig = _wafer_vs_gpu(plt, result)
    paths.append(_save(fig, out / f"reproduce_wafer_vs_gpu_{device}_{stamp}.png"))
    plt.close("all")
    return paths


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.fchmod(fd, RESULT_FILE_MODE)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _throughput_vs_grid(plt: Any, result: Reproduction) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, grids, published in (
        (axes[0], "prefill_tpr", paper.PREFILL_GRIDS, paper.WSE2_PREFILL_TPR),
        (axes[1], "decode_tpr", paper.DECODE_GRIDS, paper.WSE2_DECODE_TPR),
    ):
        section = result.section(key)
        for row in section.rows:
            if row["source"] != "ours":
                continue
            values = [row[str(p)] for p in grids]
            ax.plot(grids, values, marker="o", label=f"{row['model']} (modelled)")
        ax.plot(
            grids,
            [published[p] for p in grids],
            linestyle="--",
            marker="x",
            color="black",
            label="llama3-8b (paper, WSE-2)",
        )
        ax.set_xlabel("grid side P (P x P cores)")
        ax.set_ylabel("tokens/s")
        ax.set_title(section.title.split(",")[0])
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"Throughput vs grid on the virtual {result.device.name} (per-layer)")
    return fig


def _wafer_vs_gpu(plt: Any, result: Reproduction) -> Any:
    section = result.section("e2e_tpr")
    rows = [r for r in section.rows if r.get("wafer") is not None]
    labels = [f"{r['model']}\n{r['request']}" for r in rows]
    series = (("wafer", "wafer"), ("gpu1", "1 A100"), ("gpu8", "8 A100"), ("gpu16", "2x8 A100"))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.8), 4.5))
    width = 0.8 / len(series)
    for i, (key, name) in enumerate(series):
        xs = [j + (i - 1.5) * width for j in range(len(rows))]
        ys = [r.get(key) or 0.0 for r in rows]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_ylabel("end-to-end tokens/s (modelled)")
    ax.set_title(f"End-to-end TPR: {result.device.name} (per-layer) vs A100 baseline")
    ax.legend(fontsize=8)
    return fig
