"""Table 6 (PAPER.md §3.2): 16K and 32K GEMV, MeshGEMV on WSE-2 beside tensor-parallel A100s.

The WSE-2 column is modelled (estimate mode) at 720 x 720, where the calibration fits it, and
at the square grid where the model is fastest (searched from 30 x 30 to 750 x 750 in steps of
10; the paper does not publish its grid). The A100 columns are the paper's measurements beside
the GPU baseline's model (`waferllm.baselines.gpu.gemv_time_s`, calibrated on PAPER.md §3.3
only, so Table 6 is a check for it).

    python benchmarks/table6_gemv.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from common import console, micros, parser, percent, print_table, save_plot, write_result
from paper_data import TABLE6, TABLE6_GRID, Table6Row

from waferllm import KernelReport, bench_gemv, wse2
from waferllm.baselines.gpu import gemv_time_s
from waferllm.baselines.gpu_specs import get_gpu

NAME = "table6_gemv"
SEARCH_GRIDS = tuple(range(30, 751, 10))
QUICK_GRIDS = (360, 720)
GPU_COUNTS = (1, 8, 16)


def fastest(size: int, grids: Sequence[int]) -> KernelReport:
    """The fitting square grid of least modelled latency."""
    reports = [
        bench_gemv(algo="meshgemv", grid=(p, p), m=size, n=size, device=wse2()) for p in grids
    ]
    fitting = [r for r in reports if r.fits]
    assert fitting, f"no grid in {grids[0]}..{grids[-1]} fits a {size} GEMV"
    return min(fitting, key=lambda r: r.latency_cycles or float("inf"))


def gpu_model_s(size: int) -> dict[int, float]:
    a100 = get_gpu("a100")
    return {g: gemv_time_s(gpu=a100, num_gpus=g, k=size, n=size) for g in GPU_COUNTS}


def _row(row: Table6Row, at720: KernelReport, best: KernelReport, gpu: dict[int, float]):
    paper_gpu = {1: row.a100_1_s, 8: row.a100_8_s, 16: row.a100_16_s}
    assert at720.latency_s is not None and best.latency_s is not None
    return {
        "size": row.size,
        "paper_wse2_s": row.wse2_s,
        "model_720_s": at720.latency_s,
        "model_720_error": at720.latency_s / row.wse2_s - 1,
        "model_fastest_grid": list(best.grid),
        "model_fastest_s": best.latency_s,
        "paper_a100_s": {str(g): paper_gpu[g] for g in GPU_COUNTS},
        "model_a100_s": {str(g): gpu[g] for g in GPU_COUNTS},
        "model_a100_error": {str(g): gpu[g] / paper_gpu[g] - 1 for g in GPU_COUNTS},
        "speedup_model_wse2_720_vs_paper_best_a100": min(paper_gpu.values()) / at720.latency_s,
        "speedup_paper_wse2_vs_paper_best_a100": min(paper_gpu.values()) / row.wse2_s,
        "report_720": at720.to_dict(),
        "report_fastest": best.to_dict(),
    }


def _draw(rows: Sequence[dict[str, Any]]) -> Callable[[Any], None]:
    def draw(plt: Any) -> None:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["1 A100", "8 A100", "2x8 A100", "WSE-2 720²", "WSE-2 best"]
        width = 0.38
        for i, (row, shift) in enumerate(zip(rows, (-width / 2, width / 2), strict=False)):
            paper = [*(row["paper_a100_s"][str(g)] for g in GPU_COUNTS), row["paper_wse2_s"], None]
            model = [
                *(row["model_a100_s"][str(g)] for g in GPU_COUNTS),
                row["model_720_s"],
                row["model_fastest_s"],
            ]
            xs = [x + shift for x in range(len(labels))]
            ax.bar(xs, model, width * 0.9, label=f"{row['size'] // 1024}K model", alpha=0.8)
            ax.scatter(
                [x for x, v in zip(xs, paper, strict=True) if v is not None],
                [v for v in paper if v is not None],
                marker="_",
                s=300,
                color="k",
                label="paper" if i == 0 else None,
            )
        ax.set_xticks(range(len(labels)), labels)
        ax.set(yscale="log", ylabel="seconds", title="Table 6 GEMV: model (bars) vs paper (—)")
        ax.legend(fontsize=8)
        fig.tight_layout()

    return draw


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    grids = QUICK_GRIDS if args.quick else SEARCH_GRIDS
    out = console()
    rows = []
    for row in TABLE6:
        at720 = bench_gemv(
            algo="meshgemv", grid=(TABLE6_GRID, TABLE6_GRID), m=row.size, n=row.size, device=wse2()
        )
        rows.append(_row(row, at720, fastest(row.size, grids), gpu_model_s(row.size)))
    table = []
    for r in rows:
        label = f"[1,{r['size'] // 1024}K] x [{r['size'] // 1024}K,{r['size'] // 1024}K]"
        gpus = [
            f"{micros(r['paper_a100_s'][str(g)])} / {micros(r['model_a100_s'][str(g)])}"
            for g in GPU_COUNTS
        ]
        grid = r["model_fastest_grid"]
        table.append(
            [
                label,
                *gpus,
                micros(r["paper_wse2_s"]),
                micros(r["model_720_s"]),
                percent(r["model_720_error"]),
                f"{micros(r['model_fastest_s'])} at {grid[0]}x{grid[1]}",
                f"{r['speedup_model_wse2_720_vs_paper_best_a100']:.0f}x",
            ]
        )
    print_table(
        out,
        "Table 6 GEMV (us): paper / modelled (WSE-2 in estimate mode, A100 by the GPU baseline)",
        [
            "GEMV",
            "1 A100",
            "8 A100",
            "2x8 A100",
            "WSE-2 paper",
            "WSE-2 model 720x720",
            "error",
            "WSE-2 model fastest",
            "vs best A100 (paper)",
        ],
        table,
    )
    path = write_result(args.out_dir, NAME, "wse2", {"grids_searched": list(grids), "rows": rows})
    png = save_plot(args, NAME, "wse2", _draw(rows))
    out.print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
