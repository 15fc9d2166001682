"""Figure 10 (paper §7.2): distributed GEMV on WSE-2 vs grid side, modelled.

MeshGEMV (K-tree allreduce, the model's default K = 2 tree) against Cerebras' default GEMV (a
pipeline allreduce) and, for reference, the ring allreduce, on square grids 90, 180, ..., 720
for 2K, 8K and 16K square weights [K, K], in estimate mode: latency, its exposed compute and
communication, routes and SRAM per core. Then the paper's GEMV claims (PAPER.md §3.1) beside
the model's predictions; nothing here is fitted.

    python benchmarks/fig10_gemv_scaling.py [--quick] [--device wse2]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from common import (
    Check,
    console,
    cycles,
    micros,
    parser,
    print_checks,
    print_table,
    ratio,
    save_plot,
    write_result,
)

from waferllm import KernelReport, bench_gemv, get_device
from waferllm.api.bench import GEMV_ALGOS

NAME = "fig10_gemv_scaling"
ALGOS = GEMV_ALGOS
SIZES = (2048, 8192, 16384)
GRIDS = tuple(range(90, 721, 90))
QUICK_SIZES = (2048,)
QUICK_GRIDS = (90, 180)
PAPER_SPEEDUP = 4.6  # PAPER.md §3.1: MeshGEMV about 4.6x faster than the pipeline GEMV
Key = tuple[int, int, str]  # (size, grid side, algo)


def run(device: str, sizes: Sequence[int], grids: Sequence[int]) -> dict[Key, KernelReport]:
    return {
        (size, p, algo): bench_gemv(algo=algo, grid=(p, p), m=size, n=size, device=device)
        for size in sizes
        for p in grids
        for algo in ALGOS
    }


def comm_share(r: KernelReport) -> float | None:
    if not r.fits or not r.latency_cycles:
        return None
    assert r.comm_cycles is not None
    return r.comm_cycles / r.latency_cycles


def _row(r: KernelReport) -> list[str]:
    head = [f"{r.k // 1024}K", f"{r.grid[0]}", r.algo]
    if not r.fits:
        return [*head, "no fit", *["-"] * 7]
    return [
        *head,
        cycles(r.latency_cycles),
        micros(r.latency_s),
        cycles(r.mean_core_cycles),
        cycles(r.compute_cycles),
        cycles(r.comm_cycles),
        ratio(comm_share(r)),
        str(r.routes_per_core),
        f"{(r.peak_sram_bytes_per_core or 0) / 1024:.1f}",
    ]


COLUMNS = [
    "size",
    "grid",
    "algo",
    "latency cyc",
    "latency us",
    "mean core cyc",
    "compute",
    "comm",
    "comm share",
    "routes",
    "SRAM KiB",
]


def checks(reports: Mapping[Key, KernelReport], sizes: Sequence[int]) -> list[Check]:
    """PAPER.md §3.1's GEMV claims at 720 x 720 (needs that grid) and on routes."""
    out: list[Check] = []
    for size in sizes:
        mesh, pipe = reports.get((size, 720, "meshgemv")), reports.get((size, 720, "pipeline"))
        if mesh is None or pipe is None or not (mesh.fits and pipe.fits):
            continue
        assert mesh.latency_cycles and pipe.latency_cycles
        speedup = pipe.latency_cycles / mesh.latency_cycles
        out.append(
            Check(
                f"{size // 1024}K at 720x720: pipeline / MeshGEMV latency",
                f"about {PAPER_SPEEDUP}x (end to end)",
                f"{speedup:.2f}x",
                "> 1 (faster); ratio reported beside 4.6x",
                speedup > 1.0,
            )
        )
    shares = [
        (size, comm_share(reports[(size, 720, "pipeline")]))
        for size in sizes
        if (size, 720, "pipeline") in reports
    ]
    if shares:
        worst = max(s for _, s in shares if s is not None)
        out.append(
            Check(
                "pipeline GEMV at 720x720: communication share of latency",
                "can be 90%",
                ", ".join(f"{s // 1024}K {ratio(v)}" for s, v in shares),
                "max >= 0.9",
                worst >= 0.9,
            )
        )
    routes = sorted(
        {r.routes_per_core for k, r in reports.items() if k[2] == "meshgemv" and r.fits},
        key=lambda v: v or 0,
    )
    if routes:
        out.append(
            Check(
                "MeshGEMV routes per core",
                "O(K), independent of P",
                f"{routes} on grids {min(k[1] for k in reports)}..{max(k[1] for k in reports)}",
                "one value for every grid",
                len(routes) == 1,
            )
        )
    return out


def _draw(reports: Mapping[Key, KernelReport], sizes: Sequence[int]) -> Callable[[Any], None]:
    def draw(plt: Any) -> None:
        fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
        for ax, size in zip(axes[0], sizes, strict=True):
            for algo in ALGOS:
                pts = [
                    (k[1], r)
                    for k, r in sorted(reports.items(), key=lambda item: item[0][1])
                    if k[0] == size and k[2] == algo and r.fits
                ]
                if pts:
                    ax.plot(
                        [p for p, _ in pts], [r.latency_cycles for _, r in pts], "o-", label=algo
                    )
            ax.set(
                yscale="log",
                xlabel="grid side P (P x P cores)",
                ylabel="latency (cycles)",
                title=f"GEMV [1,{size // 1024}K] x [{size // 1024}K,{size // 1024}K] (modelled)",
            )
            ax.legend(fontsize=8)
        fig.tight_layout()

    return draw


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="wse2", help="device preset or JSON file (default wse2)")
    args = p.parse_args(argv)
    device = get_device(args.device).name
    sizes, grids = (QUICK_SIZES, QUICK_GRIDS) if args.quick else (SIZES, GRIDS)
    reports = run(args.device, sizes, grids)
    out = console()
    print_table(
        out,
        f"GEMV vs grid on {device} (modelled, estimate mode)",
        COLUMNS,
        [_row(r) for r in reports.values()],
    )
    for r in reports.values():
        if not r.fits:
            out.print(f"{r.k // 1024}K on {r.grid[0]}x{r.grid[1]}, {r.algo}: {r.message}")
    found = checks(reports, sizes)
    print_checks(out, "PAPER.md §3.1 GEMV claims vs the model (predictions)", found)
    payload = {
        "sizes": list(sizes),
        "grids": list(grids),
        "algos": list(ALGOS),
        "points": [r.to_dict() for r in reports.values()],
        "checks": [c.to_dict() for c in found],
    }
    path = write_result(args.out_dir, NAME, device, payload)
    png = save_plot(args, NAME, device, _draw(reports, sizes))
    out.print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
