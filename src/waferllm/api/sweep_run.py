"""Running sweep points: one point through `estimate`, and many in this process, a local
process pool (concurrent.futures) or as Ray tasks, always returned in point order.

Also the identity of the code that computes them (`provenance`), which keys the cache and
checks that Ray workers run the same waferllm. The cache and the files live elsewhere
(`sweep.py`, `sweep_output.py`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import inspect
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from waferllm.api.estimate import estimate
from waferllm.api.provenance import package_commit, package_version
from waferllm.api.sweep_output import OUTPUT_COLUMNS, Row, output_columns, require
from waferllm.api.sweep_spec import SweepPoint
from waferllm.errors import WaferError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MAX_MESSAGE_CHARS = 500
CHUNK_POINTS = 16  # points per task: fewer round trips, and walks cached per worker reused
# Inputs the estimate may not model yet: passed on only when they differ from the default.
PASS_THROUGH = ("batch_size", "system", "num_devices", "weight_dtype", "kv_dtype")


Progress = Callable[[int, int], None]  # (points done, points in all)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance:
    """Which code computes the rows: `code_sha256` covers uncommitted edits too."""

    version: str
    commit: str
    code_sha256: str


# ---- one point -----------------------------------------------------------------------------------
def run_point(point: SweepPoint) -> Row:
    """Estimate one point: its output columns and `error`; a WaferError (or a bug, labelled
    "internal error") is that point's row, never the sweep's crash."""
    try:
        report = estimate(**estimate_kwargs(point)).to_dict()
    except WaferError as exc:
        return {**dict.fromkeys(name for name, _ in OUTPUT_COLUMNS), "error": _one_line(exc)}
    except Exception as exc:  # noqa: BLE001 - one point's bug must not lose the others
        error = f"internal error: {type(exc).__name__}: {_one_line(exc)}"
        return {**dict.fromkeys(name for name, _ in OUTPUT_COLUMNS), "error": error}
    return _plain({**output_columns(report), "error": None})


def _plain(row: Row) -> Row:
    """Numpy scalars as Python numbers: rows compare and serialise the same from every path."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}


def estimate_kwargs(point: SweepPoint) -> dict[str, Any]:
    """The keyword arguments of `estimate` for a point; an input the estimate does not take
    yet is passed only when not its default, else the point fails saying so."""
    kwargs: dict[str, Any] = {
        "model": point.model,
        "device": point.device,
        "device_overrides": dict(point.device_overrides) or None,
        "prompt_len": point.prompt_len,
        "output_len": point.output_len,
        "prefill_grid": point.prefill_grid,
        "decode_grid": point.decode_grid,
        "placement": point.placement,
    }
    accepted = inspect.signature(estimate).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(SweepPoint)}
    for key in PASS_THROUGH:
        value = getattr(point, key)
        if value == defaults[key]:
            continue
        if key not in accepted:
            raise WaferError(
                f"{key}={value!r} is not supported by this waferllm's estimate yet "
                f"(it models {key}={defaults[key]!r} only)"
            )
        kwargs[key] = value
    return kwargs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChunkResult:
    """What one task of the pool or of Ray returns: its points' outcomes, and the hash of the
    code that computed them (a Ray cluster may run another waferllm)."""

    code_sha256: str
    rows: list[Row]


def _chunk_outcomes(points: Sequence[SweepPoint]) -> ChunkResult:
    """One task: a few consecutive points."""
    rows = [run_point(point) for point in points]
    return ChunkResult(code_sha256=provenance().code_sha256, rows=rows)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


# ---- the code ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def provenance() -> Provenance:
    """The waferllm version and git commit (api/provenance's lookups) and a hash of the package's
    sources (which also covers uncommitted edits)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes())
    return Provenance(
        version=package_version(),
        commit=package_commit() or "unknown",
        code_sha256=digest.hexdigest(),
    )


# ---- execution -----------------------------------------------------------------------------------
def run_points(
    points: list[SweepPoint],
    *,
    workers: int,
    ray: bool,
    ray_address: str | None,
    advance: Callable[[int], None],
) -> list[Row]:
    """Outcomes of `points`, in their order: in this process (one worker), a process pool,
    or Ray tasks; each task a chunk of consecutive points."""
    if not points:
        return []
    size = max(1, min(CHUNK_POINTS, -(-len(points) // (4 * workers))))
    chunks = [points[i : i + size] for i in range(0, len(points), size)]
    if ray:
        results = _ray_chunks(chunks, workers, ray_address, advance)
    elif workers == 1 or len(chunks) == 1:
        results = []
        for chunk in chunks:
            results.append(_chunk_outcomes(chunk))
            advance(len(chunk))
    else:
        results = _pool_chunks(chunks, workers, advance)
    here = provenance().code_sha256
    for result in results:
        if result.code_sha256 != here:
            raise WaferError(
                f"the sweep's workers run other waferllm code (sources sha256 "
                f"{result.code_sha256[:12]}, here {here[:12]}): install this version there"
            )
    return [row for result in results for row in result.rows]


def _pool_chunks(
    chunks: list[list[SweepPoint]], workers: int, advance: Callable[[int], None]
) -> list[ChunkResult]:
    results: dict[int, ChunkResult] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        futures = {pool.submit(_chunk_outcomes, chunk): i for i, chunk in enumerate(chunks)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            advance(len(chunks[i]))
    return [results[i] for i in range(len(chunks))]


def _ray_chunks(
    chunks: list[list[SweepPoint]],
    workers: int,
    address: str | None,
    advance: Callable[[int], None],
) -> list[ChunkResult]:
    """Each chunk one Ray task (`ray.init()` locally with `workers` CPUs, or the cluster at
    `address`, whose workers must have this waferllm installed)."""
    ray = require("ray", "cluster", "--ray")
    _connect(ray, address, workers)
    try:
        task = ray.remote(num_cpus=1)(_chunk_outcomes)
        refs = [task.remote(chunk) for chunk in chunks]
        sizes = {ref: len(chunk) for ref, chunk in zip(refs, chunks, strict=True)}
        pending = list(refs)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            advance(sum(sizes[ref] for ref in finished))
        return list(ray.get(refs))
    finally:
        ray.shutdown()


def _connect(ray: Any, address: str | None, workers: int) -> None:
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:  # local workers inherit this process's directory and environment
        ray.init(num_cpus=workers, **quiet)
        return
    check_ray_address(address)
    try:
        ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; all mean "cannot connect"
        raise WaferError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """`host:port` or `ray://host:port` that answers a TCP connection within `timeout_s`
    (Ray itself would retry for a minute); `auto` is left to Ray."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise WaferError(f"--ray-address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise WaferError(f"cannot reach the Ray cluster at {address!r}: {reason}") from None
