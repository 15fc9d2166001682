"""Serving on the wafer (issue 12): throughput-latency over arrival rates, SLO capacity, and
the simulator's own speed on 10,000 requests (SPEC.md §8: <= 10 s of host time).

One Poisson trace per (model, device, rate), time-multiplexed mode, the wafer's step costs
from the wafer cost model: batched decode steps (B vectors per GEMV, each sequence in its own
KV rows; a batch the SRAM cannot hold at once runs as sub-batches), prompts prefilled one
after another; 8xA100 and 8xH100 run the same traces with batched steps
(`waferllm.gpu_step_costs`, paper serving stack). A model that does not fit one wafer is
reported as such. Modelled times; host seconds labelled as measured.
"""

from __future__ import annotations

import os
import time
from typing import Any

import common
import torch

import waferllm
from waferllm.api.estimate import estimate
from waferllm.api.serve_costs import WaferStepCost
from waferllm.errors import WaferError
from waferllm.estimate.requests import poisson_requests
from waferllm.estimate.scheduler import simulate
from waferllm.estimate.serving_metrics import serving_metrics
from waferllm.estimate.step_cost import BinnedStepCost
from waferllm.model.config_sources import load_config

MODELS = ("llama3-8b", "llama2-13b")
TARGETS = {
    "wse2": {"device": "wse2"},
    "wse3": {"device": "wse3"},
    "8xA100": {"gpu": "a100", "num_gpus": 8},
    "8xH100": {"gpu": "h100", "num_gpus": 8},
}
PROMPT_LEN, OUTPUT_LEN = 1024, 256  # a chat-like request
RATES_PER_S = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
SLO_TTFT_S, SLO_TPOT_S = 1.0, 0.020  # the targets: p99 TTFT 1 s, p99 TPOT 20 ms
SPEED_REQUESTS = 10_000


def curve(model: str, target: dict[str, Any], rates: tuple[float, ...], n: int) -> list[dict]:
    """One time-multiplexed serve-sim per rate on `target` (a wafer `device`, or `gpu` and
    `num_gpus`); the wafer's grids are searched once, then cached."""
    rows = []
    for rate in rates:
        sim = waferllm.serve_sim(
            model, **target, rate=rate, num_requests=n, prompt_len=PROMPT_LEN,
            output_len=OUTPUT_LEN, slo_ttft_s=SLO_TTFT_S, slo_tpot_s=SLO_TPOT_S,
        )  # fmt: skip
        m = sim.metrics
        rows.append(
            {
                "rate_per_s": rate,
                "throughput_tokens_per_s": m.throughput_tokens_per_s,
                "requests_per_s": m.requests_per_s,
                "goodput_requests_per_s": m.goodput_requests_per_s,
                "ttft_p99_s": m.ttft_s.p99,
                "tpot_p99_s": m.tpot_s.p99,
                "latency_p50_s": m.latency_s.p50,
                "kv_peak_fraction": m.kv_peak_fraction,
                "mean_decode_batch": _mean_decode_batch(sim),
                "preemptions": m.preemptions,
                "meets_slo": (m.ttft_s.p99 or 0) <= SLO_TTFT_S
                and (m.tpot_s.p99 or 0) <= SLO_TPOT_S,
            }
        )
    return rows


def _mean_decode_batch(sim: Any) -> float:
    sizes = [it.batch_size for it in sim.schedule.timeline if it.phase == "decode"]
    return sum(sizes) / len(sizes) if sizes else 0.0


def host_speed(model: str, device: str, num_requests: int) -> dict[str, Any]:
    """Host seconds (measured): the grid search and first estimate, the simulation of
    `num_requests` with its step costs estimated on the way, and the same again with every
    step cost cached (the scheduler and metrics alone)."""
    start = time.perf_counter()
    probe = estimate(model, device=device, prompt_len=PROMPT_LEN, output_len=OUTPUT_LEN)
    searched_s = time.perf_counter() - start
    cost = WaferStepCost(
        load_config(model),
        device=waferllm.get_device(device),
        prefill_grid=probe.report.prefill_grid,
        decode_grid=probe.report.decode_grid,
        resident_layouts="one",
        probe=probe,
    )
    trace = poisson_requests(
        rate_per_s=4.0, num_requests=num_requests, prompt_len=PROMPT_LEN, output_len=OUTPUT_LEN
    )
    wall_s, cpu_s = [], []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        binned = BinnedStepCost(cost, max_tokens=PROMPT_LEN + OUTPUT_LEN - 1)
        schedule = simulate(trace, binned, max_batch=256)
        serving_metrics(schedule, slo_ttft_s=SLO_TTFT_S, slo_tpot_s=SLO_TPOT_S)
        wall_s.append(time.perf_counter() - wall)
        cpu_s.append(time.process_time() - cpu)
    return {
        "num_requests": num_requests,
        "grid_search_and_probe_wall_s": searched_s,
        "simulate_new_costs_wall_s": wall_s[0],
        "simulate_new_costs_cpu_s": cpu_s[0],
        "simulate_cached_costs_wall_s": wall_s[1],
        "simulate_cached_costs_cpu_s": cpu_s[1],
        "iterations": len(schedule.timeline),
        "step_cost_points": binned.num_inner_calls,
        "target_s": 10.0,
        "host_load_average": os.getloadavg()[0],
    }


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = common.console()
    num_requests = 200 if args.quick else 1000
    rates = RATES_PER_S[:3] if args.quick else RATES_PER_S
    payload: dict[str, Any] = {
        "prompt_len": PROMPT_LEN,
        "output_len": OUTPUT_LEN,
        "slo": {"ttft_s": SLO_TTFT_S, "tpot_s": SLO_TPOT_S, "statistic": "p99"},
        "mode": "time-multiplexed",
        "curves": {},
        "does_not_fit": {},
        "wafer_batching": "batched decode steps (each sequence its own KV rows and step scratch; "
        "sub-batches when SRAM cannot hold a batch); prompts prefilled one after another; GPUs "
        "batch (one weight read per step)",
    }
    # first, in a fresh process: the simulator's speed (host seconds; the host may be shared)
    speed = host_speed("llama3-8b", "wse2", 2000 if args.quick else SPEED_REQUESTS)
    payload["host_speed"] = speed
    common.print_table(
        out,
        "Simulator speed (host seconds, measured)",
        list(speed),
        [[_fmt(v) for v in speed.values()]],
    )
    for model in MODELS[:1] if args.quick else MODELS:
        for name, target in list(TARGETS.items())[:: 3 if args.quick else 1]:
            key = f"{model}/{name}"
            try:
                rows = curve(model, target, rates, num_requests)
            except WaferError as exc:
                payload["does_not_fit"][key] = str(exc)
                out.print(f"{model} on {name}: {exc}")
                continue
            payload["curves"][key] = rows
            _print_curve(out, key, rows)
    path = common.write_result(args.out_dir, "serving", "wafer", payload)
    common.save_plot(args, "serving", "wafer", lambda plt: _draw(plt, payload))
    out.print(f"wrote {path}")


def _print_curve(out: Any, key: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    common.print_table(
        out,
        f"{key}, Poisson {PROMPT_LEN}/{OUTPUT_LEN} tokens (modelled)",
        columns,
        [[_fmt(r[c]) for c in columns] for r in rows],
    )
    meeting = [r["rate_per_s"] for r in rows if r["meets_slo"]]
    best = f"{max(meeting)} req/s" if meeting else "none of the rates"
    out.print(f"max rate meeting p99 TTFT <= {SLO_TTFT_S} s and TPOT <= {SLO_TPOT_S} s: {best}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _draw(plt: Any, payload: dict[str, Any]) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in payload["curves"].items():
        rates = [r["rate_per_s"] for r in rows]
        left.plot(rates, [r["throughput_tokens_per_s"] for r in rows], marker="o", label=name)
        right.plot(rates, [r["tpot_p99_s"] * 1e3 for r in rows], marker="o", label=name)
    left.set(xlabel="arrival rate (req/s)", ylabel="throughput (tok/s, modelled)", xscale="log")
    right.set(
        xlabel="arrival rate (req/s)", ylabel="p99 TPOT (ms, modelled)", xscale="log", yscale="log"
    )
    right.axhline(SLO_TPOT_S * 1e3, color="grey", linestyle="--", linewidth=0.8)
    left.legend(fontsize=7)
    fig.tight_layout()


if __name__ == "__main__":
    main()
