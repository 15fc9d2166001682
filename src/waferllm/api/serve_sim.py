"""`waferllm.serve_sim`: a serving simulation of a request trace (SPEC.md §10.13).

Builds the requests (a JSONL file, a list, or seeded Poisson arrivals), the step costs (the
wafer's from `waferllm.estimate` at batch 1, or the batched GPU baseline's, `serve_costs.py`;
or any `StepCost` given), runs
the continuous-batching scheduler of `estimate/scheduler.py` and summarises it. `ServeSim`
holds the §10.13 report (`to_dict()`), the schedule, and the series for plots
(`serve_plots.py`). Every time in it is modelled.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from waferllm.api.estimate import estimate
from waferllm.api.gpu import gpu_step_costs
from waferllm.api.serve_costs import SUB_BATCH_WARNING, GpuStepCost, WaferStepCost
from waferllm.device import Device, get_device
from waferllm.errors import WaferError
from waferllm.estimate.requests import Request, load_requests, poisson_requests
from waferllm.estimate.scheduler import Mode, Preemption, Schedule, simulate
from waferllm.estimate.serving_metrics import ServingMetrics, serving_metrics
from waferllm.estimate.step_cost import BinnedStepCost, StepCost
from waferllm.mesh.virtual import GridLike, as_grid
from waferllm.model.config import ModelConfig
from waferllm.model.config_sources import load_config

__all__ = ["DEFAULT_MAX_BATCH", "ServeSim", "serve_sim"]

SCHEMA_VERSION = 1
DEFAULT_MAX_BATCH = 256  # vLLM's default max_num_seqs
GPU_DISAGGREGATED = (
    "disaggregated mode is modelled for the wafer only; on GPUs use time-multiplexed (the "
    "default: prefill and decode share the GPUs, iteration by iteration)"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeSim:
    """One serving simulation: `to_dict()` is the SPEC.md §10.13 report."""

    model: str
    device: str | None
    gpu: str | None
    mode: Mode
    metrics: ServingMetrics
    schedule: Schedule
    warnings: tuple[str, ...]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        target = {"gpu": self.gpu} if self.gpu is not None else {"device": self.device}
        metrics = self.metrics.to_dict()
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "serve-sim",
            "modelled": True,
            "model": self.model,
            **target,
            "mode": str(self.mode),
            **metrics,
            "warnings": list(self.warnings),
            "provenance": self.provenance,
        }

    def series(self) -> dict[str, list[float]]:
        """KV occupancy and batch size over time (one point per iteration's end), for plots."""
        timeline = self.schedule.timeline
        capacity = self.schedule.kv_capacity_tokens
        return {
            "time_s": [it.end_s for it in timeline],
            "kv_fraction": [it.kv_tokens / capacity for it in timeline],
            "batch_size": [float(it.batch_size) for it in timeline],
        }


def serve_sim(
    model: str | Path | ModelConfig,
    *,
    device: str | Device = "wse2",
    device_overrides: Mapping[str, Any] | None = None,
    requests: str | Path | Sequence[Request] | None = None,
    rate: float | None = None,
    num_requests: int | None = None,
    prompt_len: int | None = None,
    output_len: int | None = None,
    seed: int = 0,
    mode: str | Mode = Mode.TIME_MULTIPLEXED,
    max_batch: int = DEFAULT_MAX_BATCH,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
    preemption: str | Preemption = Preemption.RECOMPUTE,
    prefill_grid: GridLike | None = None,
    decode_grid: GridLike | None = None,
    gpu: str | None = None,
    num_gpus: int = 1,
    gpu_stack: str = "paper",
    step_cost: StepCost | None = None,
) -> ServeSim:
    """Simulate serving `requests` (a JSONL path or a list) or Poisson arrivals (`rate`
    requests per second, `num_requests` of `prompt_len`/`output_len` tokens, `seed`).

    The wafer's costs come from `waferllm.estimate` on the given grids (searched once for the
    trace's median request when not given). With `gpu` (a preset name), the same requests run
    on `num_gpus` GPUs under tensor parallelism (`waferllm.gpu_step_costs`, batched, with the
    `gpu_stack` serving-stack term); `step_cost` replaces either with any `StepCost`.

    >>> sim = serve_sim("tiny", device="tiny", rate=200.0, num_requests=20, prompt_len=16,
    ...                 output_len=8, prefill_grid=26, decode_grid=26, max_batch=4)
    >>> sim.to_dict()["num_requests"], sim.metrics.ttft_s.p50 > 0
    (20, True)
    """
    config = model if isinstance(model, ModelConfig) else load_config(str(model))
    run_mode: Mode = _choice(mode, Mode, "mode")
    policy: Preemption = _choice(preemption, Preemption, "preemption")
    _check_slos(slo_ttft_s, slo_tpot_s)
    trace = _requests(requests, rate, num_requests, prompt_len, output_len, seed)
    warnings: list[str] = []
    target = _device(device, device_overrides)
    gpus = None if gpu is None else f"{num_gpus}x {gpu}"
    if gpu is not None:
        if run_mode is Mode.DISAGGREGATED:
            raise WaferError(GPU_DISAGGREGATED)
        _check_positions(config, trace)
        step_cost = GpuStepCost(gpu_step_costs(config, gpu=gpu, num_gpus=num_gpus, stack=gpu_stack))
    elif step_cost is None:
        _check_positions(config, trace)
        step_cost = _wafer_cost(config, target, run_mode, trace, prefill_grid, decode_grid)
    longest = max(r.max_context_tokens for r in trace)
    binned = BinnedStepCost(step_cost, max_tokens=max(longest, 1))
    schedule = simulate(trace, binned, mode=run_mode, max_batch=max_batch, preemption=policy)
    if isinstance(step_cost, WaferStepCost) and step_cost.num_split_batches:
        warnings.append(SUB_BATCH_WARNING)
    return ServeSim(
        model=config.name,
        device=None if gpus else target.name,
        gpu=gpus,
        mode=run_mode,
        metrics=serving_metrics(schedule, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s),
        schedule=schedule,
        warnings=tuple(warnings),
        provenance=_provenance(
            f"--model {config.name} "
            + (f"--gpu {gpu} --num-gpus {num_gpus}" if gpu else f"--device {target.name}"),
            requests=requests,
            rate=rate,
            trace=trace,
            seed=seed,
            options=(
                ("--mode", run_mode),
                ("--max-batch", max_batch),
                ("--slo-ttft", slo_ttft_s),
                ("--slo-tpot", slo_tpot_s),
            ),
        ),
    )


# ---- inputs --------------------------------------------------------------------------------------
def _requests(
    requests: str | Path | Sequence[Request] | None,
    rate: float | None,
    num_requests: int | None,
    prompt_len: int | None,
    output_len: int | None,
    seed: int,
) -> list[Request]:
    poisson = (rate, num_requests, prompt_len, output_len)
    names = ("rate", "num_requests", "prompt_len", "output_len")
    if requests is not None:
        if any(v is not None for v in poisson):
            raise WaferError("give either requests or rate/num_requests/prompt_len/output_len")
        if isinstance(requests, str | Path):
            return load_requests(requests)
        if not requests:
            raise WaferError("requests is an empty list")
        return sorted(requests, key=lambda r: r.arrival_s)
    missing = [name for name, value in zip(names, poisson, strict=True) if value is None]
    if missing:
        raise WaferError(
            f"Poisson arrivals need rate, num_requests, prompt_len and output_len; missing "
            f"{', '.join(missing)} (or give a requests file)"
        )
    assert rate is not None and num_requests is not None
    assert prompt_len is not None and output_len is not None
    return poisson_requests(
        rate_per_s=rate,
        num_requests=num_requests,
        prompt_len=prompt_len,
        output_len=output_len,
        seed=seed,
    )


def _choice(value: Any, options: type, name: str) -> Any:
    try:
        return options(value)
    except ValueError:
        valid = ", ".join(str(o) for o in options)  # type: ignore[attr-defined]
        raise WaferError(f"{name}={value!r} is not one of {valid}") from None


def _check_slos(*slos_s: float | None) -> None:
    for name, value in zip(("slo_ttft_s", "slo_tpot_s"), slos_s, strict=True):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise WaferError(f"{name}={value!r} must be a positive number of seconds")


def _device(device: str | Device, overrides: Mapping[str, Any] | None) -> Device:
    if isinstance(device, Device):
        return get_device(device.name, overrides) if overrides else device
    return get_device(device, overrides)


def _check_positions(config: ModelConfig, trace: Sequence[Request]) -> None:
    limit = config.max_position_embeddings
    for number, req in enumerate(trace, start=1):
        if req.max_context_tokens > limit:
            raise WaferError(
                f"request {number} uses {req.max_context_tokens} positions (prompt_len + "
                f"output_len - 1) but {config.name}'s max_position_embeddings is {limit}"
            )


def _wafer_cost(
    config: ModelConfig,
    device: Device,
    mode: Mode,
    trace: Sequence[Request],
    prefill_grid: GridLike | None,
    decode_grid: GridLike | None,
) -> WaferStepCost:
    """Estimate the trace's median request once (searching the grids not given), then cost
    every other length on the same grids."""
    resident = "both" if mode is Mode.DISAGGREGATED else "one"
    prompt = sorted(r.prompt_len for r in trace)[len(trace) // 2]
    output = sorted(r.output_len for r in trace)[len(trace) // 2]
    try:
        probe = estimate(
            config,
            device=device,
            prompt_len=prompt,
            output_len=max(output, 2),
            prefill_grid=as_grid(prefill_grid, "prefill_grid"),
            decode_grid=as_grid(decode_grid, "decode_grid"),
            resident_layouts=resident,
        )
    except WaferError as exc:
        if mode is Mode.DISAGGREGATED:
            raise WaferError(
                f"disaggregated mode needs both phases' weights resident and they do not fit: {exc}"
            ) from None
        raise
    grids = (probe.report.prefill_grid, probe.report.decode_grid)
    assert grids[0] is not None and grids[1] is not None  # a wafer estimate has both grids
    return WaferStepCost(
        config,
        device=device,
        prefill_grid=grids[0],
        decode_grid=grids[1],
        resident_layouts=resident,
        probe=probe,
    )


# ---- provenance ----------------------------------------------------------------------------------
def _provenance(
    target: str,
    *,
    requests: str | Path | Sequence[Request] | None,
    rate: float | None,
    trace: Sequence[Request],
    seed: int,
    options: Sequence[tuple[str, Any]],
) -> dict[str, Any]:
    """Version, commit and the equivalent `waferllm serve-sim` command line."""
    if requests is None:
        source = (
            f"--rate {rate} --num-requests {len(trace)} --prompt-len {trace[0].prompt_len} "
            f"--output-len {trace[0].output_len} --seed {seed}"
        )
    elif isinstance(requests, str | Path):
        source = f"--requests {requests}"
    else:
        source = f"--requests <{len(trace)} requests given in Python>"
    given = " ".join(f"{flag} {value}" for flag, value in options if value is not None)
    command = f"waferllm serve-sim {target} {source} {given}"
    return {"version": _version(), "commit": _commit(), "command": command}


@functools.cache
def _version() -> str:
    return importlib.metadata.version("waferllm")


@functools.cache
def _commit() -> str | None:
    """The source tree's git commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
