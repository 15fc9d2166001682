"""`waferllm sweep` speed on this machine: a 1,000-point sweep in a process pool and on a
local Ray, the rows of both compared bit for bit, and a re-run answered by the disk cache.

Host wall-clock seconds (the simulator's own speed), never mixed with the modelled metrics in
the rows. The points are cheap ones: the tiny model on the tiny device with grids given,
over device.stage_latency_cycles x device.link_bytes_per_cycle x prompt_len x output_len
(a LLaMA3-8B per-layer point costs 0.4-1.5 s of one core when its walks are new: 1,000 of
them do not fit five minutes on two shared cores).

    python benchmarks/sweep.py [--quick] [--workers N] [--no-ray]
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from common import console, parser, print_table, write_result

from waferllm import sweep

NAME = "sweep"
FIXED = {"model": "tiny", "device": "tiny", "prefill_grid": 8, "decode_grid": 8}
AXES: dict[str, list[Any]] = {
    "device.stage_latency_cycles": [0.8, 1.6, 3.2, 6.4, 12.8],
    "device.link_bytes_per_cycle": [4.0, 8.0],
    "prompt_len": [16, 32, 48, 64],
    "output_len": list(range(4, 104, 4)),  # 25 lengths
}
QUICK_AXES: dict[str, list[Any]] = {"prompt_len": [16, 32], "output_len": [4, 8]}


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="processes / local Ray CPUs (2)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray run (--quick skips it)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    axes = {**FIXED, **(QUICK_AXES if args.quick else AXES)}
    use_ray = not (args.no_ray or args.quick) and importlib.util.find_spec("ray") is not None
    with tempfile.TemporaryDirectory(prefix="waferllm-sweep-bench-") as tmp:
        runs = _runs(axes, Path(tmp), args.workers, use_ray)
    out = console()
    pool, again = runs["pool"], runs["cache re-run"]
    rows = [
        [name, r["points"], r["computed"], f"{r['wall_s']:.2f}", f"{r['points_per_s']:.1f}"]
        for name, r in runs.items()
    ]
    print_table(out, "waferllm sweep (host wall-clock)", ["run", "points", "estimated",
                "wall s", "points/s"], rows)  # fmt: skip
    speedup = pool["wall_s"] / again["wall_s"]
    identical = runs["ray"]["csv_sha256"] == pool["csv_sha256"] if use_ray else None
    out.print(f"cache re-run speed-up: {speedup:.0f}x; pool and Ray rows identical: {identical}")
    path = write_result(
        args.out_dir,
        NAME,
        "tiny",
        {
            "axes": axes,
            "workers": args.workers,
            "runs": runs,
            "cache_speedup": speedup,
            "pool_and_ray_rows_identical": identical,
            "ray": "skipped (--no-ray or ray not installed)" if not use_ray else "local ray.init()",
        },
        modelled=False,
    )
    out.print(f"wrote {path}")
    return 0


def _runs(axes: dict[str, Any], tmp: Path, workers: int, use_ray: bool) -> dict[str, Any]:
    """Pool cold, the same again from the cache, then Ray cold into another folder."""
    runs = {
        "pool": _timed(axes, tmp / "pool", workers=workers),
        "cache re-run": _timed(axes, tmp / "pool", workers=workers),
    }
    if use_ray:
        runs["ray"] = _timed(axes, tmp / "ray", workers=workers, ray=True)
        runs["ray"]["rows_equal_pool"] = runs["ray"].pop("rows") == runs["pool"]["rows"]
    for run in runs.values():
        run.pop("rows", None)
    return runs


def _timed(axes: dict[str, Any], out: Path, **kwargs: Any) -> dict[str, Any]:
    start = time.perf_counter()
    result = sweep(axes, out=out, plots=False, **kwargs)
    wall_s = time.perf_counter() - start
    return {
        "points": len(result.rows),
        "computed": result.computed,
        "cached": result.cached,
        "errors": result.errors,
        "wall_s": wall_s,
        "points_per_s": len(result.rows) / wall_s,
        "csv_sha256": hashlib.sha256((out / "results.csv").read_bytes()).hexdigest(),
        "rows": result.rows,
    }


if __name__ == "__main__":
    raise SystemExit(main())
