"""Simulator speed: host wall time of one estimate-mode 8K MeshGEMM on 720 x 720 WSE-2 cores.

Measured on this machine (the only measured numbers in benchmarks/, besides the GPU check):
the import of waferllm in a fresh interpreter, the first call in this process (it pays
torch's one-time set-up of meta-tensor kernels), then the median of several warm calls. The
kernel's modelled latency is printed beside them so the two are never confused.

    python benchmarks/timing_estimate.py [--quick] [--repeats N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from common import console, cycles, parser, print_table, write_result

from waferllm import bench_gemm

NAME = "timing_estimate"
GRID, SIZE = 720, 8192
IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import waferllm; print(time.perf_counter() - t)"
)


def import_seconds(runs: int) -> list[float]:
    """Wall time of `import waferllm` in fresh interpreters."""
    return [
        float(
            subprocess.run(
                [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(runs)
    ]


def one_call() -> tuple[float, float]:
    """(host seconds, modelled latency cycles) of one estimate-mode call."""
    start = time.perf_counter()
    report = bench_gemm(algo="meshgemm", grid=(GRID, GRID), m=SIZE, k=SIZE, n=SIZE, device="wse2")
    wall = time.perf_counter() - start
    assert report.latency_cycles is not None
    return wall, report.latency_cycles


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=9, help="warm calls to time (default 9)")
    args = p.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    if repeats < 1:
        p.error("--repeats must be at least 1")
    imports = import_seconds(1 if args.quick else 3)
    first, modelled = one_call()
    warm = [one_call()[0] for _ in range(repeats)]
    out = console()
    print_table(
        out,
        f"Host wall time, estimate mode, {SIZE // 1024}K MeshGEMM on {GRID}x{GRID} WSE-2 cores",
        ["what", "seconds (measured on this host)"],
        [
            ["import waferllm (fresh interpreter, median)", f"{statistics.median(imports):.3f}"],
            ["first call in the process (torch meta set-up)", f"{first:.3f}"],
            [f"warm call, median of {repeats}", f"{statistics.median(warm):.4f}"],
            ["warm call, min / max", f"{min(warm):.4f} / {max(warm):.4f}"],
        ],
    )
    out.print(f"modelled latency of that kernel: {cycles(modelled)} cycles (not a host time)")
    payload = {
        "point": {"algo": "meshgemm", "grid": [GRID, GRID], "m": SIZE, "k": SIZE, "n": SIZE},
        "import_s": imports,
        "first_call_s": first,
        "warm_call_s": warm,
        "warm_call_median_s": statistics.median(warm),
        "modelled_latency_cycles": modelled,
    }
    path = write_result(args.out_dir, NAME, "wse2", payload, modelled=False)
    out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
