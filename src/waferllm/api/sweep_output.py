"""A sweep's result files (SPEC.md §10.14): the row schema, Parquet + CSV, and the plots.

`COLUMNS` fixes every column's name and type, so a sweep whose points all fail still writes
the same schema. Tables need pyarrow (the `[sweep]` extra), plots matplotlib (`[plot]`).
Nothing here runs a point; `sweep.py` does and hands the rows over in point order.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from waferllm.api.sweep_spec import DEVICE_FIELD_TYPES, DEVICE_PREFIX
from waferllm.errors import WaferError

Row = dict[str, Any]

INPUT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "str"),
    ("device", "str"),
    ("prompt_len", "int"),
    ("output_len", "int"),
    ("batch_size", "int"),
    ("prefill_grid", "str"),  # as requested, "RxC"; null when searched
    ("decode_grid", "str"),
    ("placement", "str"),
    ("system", "str"),
    ("num_devices", "str"),  # a count, or "auto"
    ("weight_dtype", "str"),
    ("kv_dtype", "str"),
)
DEVICE_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (DEVICE_PREFIX + name, kind if kind in ("int", "float", "str") else "str")
    for name, kind in DEVICE_FIELD_TYPES.items()
)
METRICS: tuple[tuple[str, str], ...] = (  # SPEC.md §10.4 `metrics`
    ("ttft_s", "float"),
    ("tpot_s", "float"),
    ("prefill_tpr", "float"),
    ("decode_tpr", "float"),
    ("e2e_tpr", "float"),
    ("transition_s", "float"),
    ("energy_j", "float"),
    ("peak_sram_bytes_per_core", "int"),
    ("routes_per_core", "int"),
    ("utilization", "float"),
)
OUTPUT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("prefill_grid_rows", "int"),  # the grids the estimate used (given or searched)
    ("prefill_grid_cols", "int"),
    ("decode_grid_rows", "int"),
    ("decode_grid_cols", "int"),
    *METRICS,
    ("kv_capacity_tokens.shift", "int"),
    ("kv_capacity_tokens.concat", "int"),
    ("max_new_tokens.shift", "int"),
    ("max_new_tokens.concat", "int"),
    ("sram_used_fraction", "float"),  # null while the estimate does not report it
    ("num_devices_used", "int"),  # the devices the estimate placed the model on ("auto" too)
)
TAIL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("error", "str"),
    ("version", "str"),
    ("commit", "str"),
)
COLUMNS = INPUT_COLUMNS + DEVICE_COLUMNS + OUTPUT_COLUMNS + TAIL_COLUMNS

THROUGHPUT = "e2e_tpr"  # what the plots show: the paper's end-to-end tokens per second
MAX_PAIR_PLOTS = 15


def output_columns(report: dict[str, Any]) -> Row:
    """The output columns of one estimate's SPEC.md §10.4 report."""
    out: Row = {}
    for phase in ("prefill_grid", "decode_grid"):
        grid = report.get(phase)
        out[f"{phase}_rows"], out[f"{phase}_cols"] = grid if grid else (None, None)
    out.update({name: report["metrics"].get(name) for name, _ in METRICS})
    for group in ("kv_capacity_tokens", "max_new_tokens"):
        for policy in ("shift", "concat"):
            out[f"{group}.{policy}"] = report[group].get(policy)
    out["sram_used_fraction"] = report.get("sram_used_fraction")
    out["num_devices_used"] = report.get("num_devices", 1)
    return out


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise WaferError(f"{what} needs {module}: pip install 'waferllm[{extra}]'") from None


# ---- tables --------------------------------------------------------------------------------------
def write_tables(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """DIR/results.parquet and DIR/results.csv, one row per point, written atomically."""
    pa = require("pyarrow", "sweep", "writing sweep results")
    import pyarrow.csv
    import pyarrow.parquet

    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    schema = pa.schema([(name, types[kind]) for name, kind in COLUMNS])
    table = pa.Table.from_pylist([_typed(row) for row in rows], schema=schema)
    paths = [out_dir / "results.parquet", out_dir / "results.csv"]
    _atomic(paths[0], lambda tmp: pyarrow.parquet.write_table(table, tmp))
    _atomic(paths[1], lambda tmp: pyarrow.csv.write_csv(table, tmp))
    return paths


def _typed(row: Row) -> Row:
    """Device constants of a type the schema writes as text (a future field) as text."""
    return {
        name: str(row[name]) if kind == "str" and row.get(name) is not None else row.get(name)
        for name, kind in COLUMNS
    }


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise WaferError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- plots ---------------------------------------------------------------------------------------
def write_plots(rows: Sequence[Row], axes: Sequence[str], out_dir: Path) -> list[Path]:
    """PNGs in DIR: throughput along each varying axis (one axis) or a heatmap per pair of
    varying axes (the mean over the other axes), and the Pareto front of throughput against
    energy. Needs matplotlib (the `[plot]` extra)."""
    require("matplotlib", "plot", "plotting a sweep")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [row for row in rows if row["error"] is None and row[THROUGHPUT] is not None]
    paths: list[Path] = []
    if not good:
        return paths
    keys = list(axes)  # every axis key names its row column
    if len(keys) == 1:
        paths.append(_line(plt, good, keys[0], out_dir))
    for x, y in list(itertools.combinations(keys, 2))[:MAX_PAIR_PLOTS]:
        paths.append(_heatmap(plt, good, x, y, out_dir))
    paths.append(_pareto(plt, good, out_dir))
    return paths


def _values(rows: Sequence[Row], key: str) -> list[Any]:
    return sorted({row[key] for row in rows}, key=lambda v: (v is None, str(type(v)), v))


def _line(plt: Any, rows: Sequence[Row], key: str, out_dir: Path) -> Path:
    xs = _values(rows, key)
    ys = [_mean(rows, {key: x}) for x in xs]
    fig, ax = plt.subplots(figsize=(6, 4))
    numeric = all(isinstance(x, int | float) for x in xs)
    ax.plot(xs if numeric else [str(x) for x in xs], ys, marker="o")
    ax.set_xlabel(key)
    ax.set_ylabel(f"{THROUGHPUT} (tokens/s, modelled)")
    ax.set_title(f"{THROUGHPUT} along {key}")
    return _save(plt, fig, out_dir / f"line_{_slug(key)}.png")


def _heatmap(plt: Any, rows: Sequence[Row], x: str, y: str, out_dir: Path) -> Path:
    xs, ys = _values(rows, x), _values(rows, y)
    grid = [[_mean(rows, {x: xv, y: yv}) for xv in xs] for yv in ys]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(xs), 1.2 + 0.45 * len(ys)))
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=45, ha="right")
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{THROUGHPUT} (tokens/s, modelled; mean over other axes)", fontsize=9)
    fig.colorbar(image, ax=ax)
    return _save(plt, fig, out_dir / f"heatmap_{_slug(x)}__{_slug(y)}.png")


def _pareto(plt: Any, rows: Sequence[Row], out_dir: Path) -> Path:
    points = sorted((row["energy_j"], row[THROUGHPUT]) for row in rows)
    front, best = [], -math.inf
    for energy, throughput in points:  # by rising energy: keep each new best throughput
        if throughput > best:
            front.append((energy, throughput))
            best = throughput
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(*zip(*points, strict=True), s=8, alpha=0.4, label="points")
    ax.plot(*zip(*front, strict=True), color="C3", marker="o", label="Pareto front")
    ax.set_xlabel("energy per request (J, modelled)")
    ax.set_ylabel(f"{THROUGHPUT} (tokens/s, modelled)")
    ax.set_title("throughput against energy")
    ax.legend()
    return _save(plt, fig, out_dir / "pareto_throughput_energy.png")


def _mean(rows: Sequence[Row], where: dict[str, Any]) -> float:
    values = [r[THROUGHPUT] for r in rows if all(r[k] == v for k, v in where.items())]
    return sum(values) / len(values) if values else math.nan


def _slug(key: str) -> str:
    return key.replace(".", "_")


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
