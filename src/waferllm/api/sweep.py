"""`waferllm.sweep`: a design-space sweep through the estimate path (SPEC.md §10.14).

Every point of a `Sweep` (sweep_spec.py) is one `estimate(...)` call (sweep_run.py); its row
holds every input, the device's constants after overrides, the outputs and the error (or
null). A disk cache under DIR/.cache, keyed by the full input and the code, makes a re-run
instant. Files and plots: sweep_output.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from waferllm.api.sweep_output import DEVICE_COLUMNS, Row, require, write_plots, write_tables
from waferllm.api.sweep_run import Progress, Provenance, check_ray_address, provenance, run_points
from waferllm.api.sweep_spec import DEVICE_PREFIX, Sweep, SweepPoint, load_sweep
from waferllm.device import get_device
from waferllm.errors import WaferError

__all__ = ["SweepResult", "sweep"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepResult:
    """What a sweep did; the rows are also in DIR/results.parquet and DIR/results.csv."""

    rows: list[Row]  # one per point, in point order
    files: list[Path]  # results.parquet, results.csv, then the PNGs
    computed: int  # points estimated in this run
    cached: int  # points read from the disk cache
    errors: int  # rows whose `error` is set
    wall_s: float  # host wall-clock seconds of the whole sweep
    notes: list[str]  # what the caller should tell the user (plots skipped, ...)


# ---- the public function -------------------------------------------------------------------------
def sweep(
    axes: Sweep | Mapping[str, Any],
    *,
    out: str | Path,
    workers: int | None = None,
    ray: bool = False,
    ray_address: str | None = None,
    cache: bool = True,
    plots: bool = True,
    progress: Progress | None = None,
) -> SweepResult:
    """Run every point of `axes` (a `Sweep`, or a mapping key -> value or list of values) and
    write DIR/results.parquet, DIR/results.csv and the plots into `out`.

    `workers` processes (default: every CPU; 1 runs in this process), or Ray tasks with
    `ray=True` (a local Ray started with `workers` CPUs, or the cluster at `ray_address`).

    >>> result = sweep({"model": "tiny", "device": "tiny", "prompt_len": [16, 32],
    ...                 "output_len": 4, "prefill_grid": 8, "decode_grid": 8},
    ...                out="sweep-tiny", workers=1, plots=False)
    >>> [row["prompt_len"] for row in result.rows], result.errors
    ([16, 32], 0)
    """
    start = time.perf_counter()
    spec = axes if isinstance(axes, Sweep) else load_sweep(values=axes)
    workers = workers or os.cpu_count() or 1
    _check_options(workers, ray, ray_address)
    out_dir = Path(out)
    points = list(spec.points())
    counter = _Counter(total=len(points), progress=progress)

    def run(todo: list[SweepPoint]) -> list[Row]:
        return run_points(
            todo, workers=workers, ray=ray, ray_address=ray_address, advance=counter.advance
        )

    rows = _rows(points, out_dir, cache=cache, run=run, counter=counter)
    files = write_tables(rows, out_dir)
    notes = []
    if plots:
        try:
            files += write_plots(rows, spec.varying(), out_dir)
        except WaferError as exc:  # matplotlib missing: the tables are the result
            notes.append(f"plots skipped: {exc}")
    return SweepResult(
        rows=rows,
        files=files,
        computed=counter.computed,
        cached=len(points) - counter.computed,
        errors=sum(row["error"] is not None for row in rows),
        wall_s=time.perf_counter() - start,
        notes=notes,
    )


def _check_options(workers: int, ray: bool, ray_address: str | None) -> None:
    """Refuse bad execution options before any point runs."""
    if workers < 1:
        raise WaferError(f"workers={workers} must be a positive integer")
    require("pyarrow", "sweep", "writing sweep results")
    if ray:
        require("ray", "cluster", "--ray")
        if ray_address is not None:
            check_ray_address(ray_address)
    elif ray_address is not None:
        raise WaferError("a Ray address needs ray=True (--ray)")


@dataclasses.dataclass(kw_only=True)
class _Counter:
    """Points done (for the progress callback) and points computed rather than cached."""

    total: int
    progress: Progress | None
    done: int = 0
    computed: int = 0

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress:
            self.progress(self.done, self.total)


def _rows(
    points: list[SweepPoint],
    out_dir: Path,
    *,
    cache: bool,
    run: Callable[[list[SweepPoint]], list[Row]],
    counter: _Counter,
) -> list[Row]:
    """Every point's row, from the cache where it has one, else computed by `run` (and then
    cached; `counter.computed` counts those)."""
    prov = provenance()
    keys = [point_key(p, prov) for p in points]
    found = {i: row for i, k in enumerate(keys) if cache and (row := _cached(out_dir, k))}
    counter.advance(len(found))
    todo = [i for i in range(len(points)) if i not in found]
    counter.computed = len(todo)
    for i, outcome in zip(todo, run([points[i] for i in todo]), strict=True):
        row = {**base_columns(points[i]), **outcome, "version": prov.version}
        found[i] = row = {**row, "commit": prov.commit}
        if cache and not _internal(row):  # a bug's row is recomputed once the bug is fixed
            _store(out_dir, keys[i], row)
    return [found[i] for i in range(len(points))]


# ---- one point -----------------------------------------------------------------------------------
def base_columns(point: SweepPoint) -> Row:
    """A point's input columns and its device's constants (null when the device is bad)."""
    inputs = point.to_dict()
    del inputs["device_overrides"]  # the device columns hold their effect
    return {**inputs, **_device_constants(point)}


def _device_constants(point: SweepPoint) -> Row:
    try:
        device = get_device(point.device, dict(point.device_overrides) or None)
    except WaferError:
        return dict.fromkeys(name for name, _ in DEVICE_COLUMNS)
    constants = device.to_dict()
    return {name: constants[name.removeprefix(DEVICE_PREFIX)] for name, _ in DEVICE_COLUMNS}


def _internal(row: Row) -> bool:
    return bool(row["error"]) and str(row["error"]).startswith("internal error:")


def point_key(point: SweepPoint, prov: Provenance) -> str:
    """sha256 of everything a row depends on: the point, the device's constants after
    overrides, a model directory's config.json, and the code."""
    canonical = {
        "point": point.to_dict(),
        "device_constants": _device_constants(point),
        "model_config_sha256": _config_sha256(point.model),
        "version": prov.version,
        "commit": prov.commit,
        "code_sha256": prov.code_sha256,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _config_sha256(model: str) -> str | None:
    config = Path(model) / "config.json"
    return hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None


def _cache_path(out_dir: Path, key: str) -> Path:
    return out_dir / ".cache" / key[:2] / f"{key}.json"


def _cached(out_dir: Path, key: str) -> Row | None:
    try:
        row: Row = json.loads(_cache_path(out_dir, key).read_text())
    except (OSError, ValueError):  # absent, or a torn write: compute the point again
        return None
    return row


def _store(out_dir: Path, key: str, row: Row) -> None:
    path = _cache_path(out_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, path)
    except OSError as exc:
        raise WaferError(f"cannot write the sweep cache {path}: {exc.strerror or exc}") from None
