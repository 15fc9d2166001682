"""Plots of a serving simulation (the `[plot]` extra): latency CDFs and a timeline.

`plot_serving(sim, out_dir)` writes `serve_latency_cdf.png` (TTFT, TPOT and end-to-end latency
CDFs) and `serve_timeline.png` (batch size and KV occupancy over modelled time). Without
matplotlib it raises a WaferError naming the extra. Nothing here simulates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from waferllm.api.serve_sim import ServeSim
from waferllm.errors import WaferError

__all__ = ["plot_serving"]


def plot_serving(sim: ServeSim, out_dir: str | Path) -> list[Path]:
    """Write the two PNGs into `out_dir`; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{sim.model} on {sim.gpu or sim.device}, {sim.mode} (modelled)"
    records = sim.schedule.records
    samples = {
        "TTFT": [r.ttft_s for r in records],
        "TPOT": [t for t in (r.tpot_s for r in records) if t is not None],
        "latency": [r.latency_s for r in records],
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (name, values) in zip(axes, samples.items(), strict=True):
        _cdf(ax, name, values)
    fig.suptitle(title)
    fig.tight_layout()
    paths = [out / "serve_latency_cdf.png", out / "serve_timeline.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    series = sim.series()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    top.step(series["time_s"], series["batch_size"], where="post", linewidth=0.8)
    top.set_ylabel("batch size")
    bottom.step(series["time_s"], series["kv_fraction"], where="post", linewidth=0.8)
    bottom.set_ylabel("KV occupancy")
    bottom.set_xlabel("modelled time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def _cdf(ax: Any, name: str, values_s: list[float]) -> None:
    ordered = sorted(values_s)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post")
    ax.set_xlabel(f"{name} (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise WaferError("plots need matplotlib: pip install 'waferllm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
