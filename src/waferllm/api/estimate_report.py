"""The report of one `waferllm.estimate` request: `Estimate`, `PhasePlacement`, and
`estimate_result`, which assembles SPEC.md §10.4's request report (kind "estimate") from a
request's ledgers: placement, search, time by op and by compute/communication per phase, energy,
FLOPs and the KV capacity of both cache policies. Argument checks and the costing live in
`api/estimate.py` and `estimate/`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

from waferllm.device import Device
from waferllm.engine.metrics import op_times, phase_times
from waferllm.estimate.capacity import whole_model_capacity
from waferllm.estimate.cost import Grid, RequestCost, Setup
from waferllm.estimate.energy import event_energy
from waferllm.estimate.flops import model_flops
from waferllm.estimate.multi_device import (
    pipeline_breakdown,
    pipeline_schedule_of,
)
from waferllm.estimate.search import GridSearch
from waferllm.mesh.cost import Ledger
from waferllm.model.placement import PlacementMode
from waferllm.model.regions import PhaseRegions
from waferllm.model.report import RequestMetrics, RequestReport

__all__ = [
    "PER_LAYER_NOTE",
    "Estimate",
    "PhasePlacement",
    "cores_of",
    "estimate_result",
    "phase_summary",
]

PER_LAYER_NOTE = (
    "per-layer extrapolation: one layer's plan on the grid with the SRAM limit enforced for "
    "that layer (its weights, KV cache and activations), time multiplied by the {layers} "
    "layers, plus the hops between the layers' regions (the paper's method); the whole model "
    "is not placed"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhasePlacement:
    """Where one phase runs: its grid and regions, and the layers each region holds."""

    grid: Grid
    origins: tuple[tuple[int, int], ...]  # top-left core (row, col) of each region
    layers: tuple[range, ...]  # the layers of each region
    layer_multiplier: int = 1  # per-layer: how many layers the one modelled layer stands for
    devices: tuple[int, ...] = ()  # the device of each region (origins are on that device)

    @classmethod
    def of(cls, regions: PhaseRegions, multiplier: int) -> PhasePlacement:
        return cls(
            grid=regions.grid,
            origins=tuple(r.origin for r in regions.regions),
            layers=tuple(r.layers for r in regions.regions),
            layer_multiplier=multiplier,
            devices=tuple(r.device for r in regions.regions),
        )

    def to_dict(self) -> dict[str, Any]:
        regions = [
            {"origin": list(o), "first_layer": r.start, "num_layers": len(r)}
            for o, r in zip(self.origins, self.layers, strict=True)
        ]
        if any(self.devices):  # several linked devices: say which holds each region
            for region, device in zip(regions, self.devices, strict=True):
                region["device"] = device
        return {
            "grid": list(self.grid),
            "regions": regions,
            "layer_multiplier": self.layer_multiplier,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Estimate:
    """One request's modelled prediction. `report` is the SPEC.md §10.4 object
    (`to_dict()`); the ledgers are kept for whoever wants every record."""

    report: RequestReport
    prefill: PhasePlacement
    decode: PhasePlacement
    search: GridSearch | None
    extrapolated: bool  # per-layer placement: "per-layer extrapolation"
    ledgers: RequestCost

    @property
    def metrics(self) -> RequestMetrics:
        return self.report.metrics

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()


def estimate_result(
    setup: Setup,
    cost: RequestCost,
    search: GridSearch | None,
    prompt_len: int,
    output_len: int,
    wall_s: float,
) -> Estimate:
    plan = cost.model.plan
    per_layer = setup.placement is PlacementMode.PER_LAYER
    multiplier = plan.layer_multiplier
    placements = (
        PhasePlacement.of(plan.prefill, multiplier),
        PhasePlacement.of(plan.decode, multiplier),
    )
    ttft_s, transition_s, decode_s = cost.seconds()
    device = setup.device
    schedule = pipeline_schedule_of(setup, cost)
    if schedule is not None:  # a round of B sequences over the devices
        decode_s = device.cycles_to_seconds(schedule.decode_cycles())
    cores = max(cores_of(p, per_layer) for p in placements)
    total_s = ttft_s + transition_s + decode_s
    flops = model_flops(setup.config, prompt_len=prompt_len, output_len=output_len)
    peak = cores * device.flops_per_cycle_per_core * device.clock_hz
    metrics = RequestMetrics.from_times(
        prompt_len=prompt_len,
        output_len=output_len,
        ttft_s=ttft_s,
        decode_time_s=decode_s,
        transition_s=transition_s,
        power_w=device.power_w * setup.num_devices,  # every linked device draws power
        peak_sram_bytes_per_core=max(
            cost.prefill.peak_sram_bytes_per_core, cost.decode.peak_sram_bytes_per_core
        ),
        routes_per_core=max(cost.prefill.routes_per_core, cost.decode.routes_per_core),
        utilization=flops / (peak * total_s) if total_s > 0 else None,
    )
    ledgers = (cost.prefill.ledger, cost.transition, cost.decode.ledger)
    totals = [ledger.totals() for ledger in ledgers]
    totals = totals if schedule is None else schedule.scaled_totals(totals)
    energy = event_energy(device, totals, total_s, num_devices=setup.num_devices)
    metrics = dataclasses.replace(metrics, energy_j=energy.total_j)
    capacity, room = whole_model_capacity(setup, cost.prefill_grid, cost.decode_grid, prompt_len)
    _warn_chunks(cost, prompt_len)
    breakdown = {
        **_breakdown(setup, cost, placements, search, output_len),
        "energy": energy.to_dict(),
    }
    report = RequestReport(
        kind="estimate",
        model=setup.config.name,
        device=device.name,
        prompt_len=prompt_len,
        output_len=output_len,
        prefill_grid=cost.prefill_grid,
        decode_grid=cost.decode_grid,
        placement=str(setup.placement),
        metrics=metrics,
        kv_capacity_tokens=capacity,
        max_new_tokens=room,
        breakdown=breakdown,
        host_wall_s=wall_s,
        weight_dtype=setup.storage.weights.value,
        kv_dtype=setup.storage.kv.value,
        num_devices=setup.num_devices,
        batch_size=cost.batch,
    )
    return Estimate(
        report=report,
        prefill=placements[0],
        decode=placements[1],
        search=search,
        extrapolated=per_layer,
        ledgers=cost,
    )


def _warn_chunks(cost: RequestCost, prompt_len: int) -> None:
    """Say when the prompt was prefilled in chunks (breakdown.prefill.chunk_tokens)."""
    chunk = cost.prefill_chunk_tokens
    if chunk is None:
        return
    rows, cols = cost.prefill_grid
    warnings.warn(
        f"the {prompt_len}-token prompt does not fit the {rows}x{cols} prefill plan at once "
        f"(at most {cost.model.max_prompt_tokens} tokens): it is prefilled in "
        f"{math.ceil(prompt_len / chunk)} chunks of {chunk} tokens, each attending to the "
        "cached keys of the earlier ones (chunked prefill)",
        stacklevel=2,
    )


def cores_of(placement: PhasePlacement, per_layer: bool) -> int:
    """Cores that work in a phase: every region in `fit`; one region in `per-layer` (the
    paper's regions hold one layer each and run one at a time)."""
    rows, cols = placement.grid
    return rows * cols * (1 if per_layer else len(placement.origins))


def phase_summary(device: Device, ledger: Ledger, depth: int = 1) -> dict[str, Any]:
    return {**phase_times(device, ledger.totals()), "ops": op_times(device, ledger, depth)}


def _breakdown(
    setup: Setup,
    cost: RequestCost,
    placements: tuple[PhasePlacement, PhasePlacement],
    search: GridSearch | None,
    output_len: int,
) -> dict[str, Any]:
    device = setup.device
    out: dict[str, Any] = {}
    if setup.placement is PlacementMode.PER_LAYER:
        out["note"] = PER_LAYER_NOTE.format(layers=setup.config.num_hidden_layers)
    out["placement"] = {
        "mode": str(setup.placement),
        "resident": str(setup.resident),
        "kv_cache": str(setup.kv_policy),
        "prefill": placements[0].to_dict(),
        "decode": placements[1].to_dict(),
    }
    out["search"] = search.to_dict() if search is not None else None
    if setup.num_devices > 1:
        out["pipeline"] = pipeline_breakdown(
            setup, cost, cost.model.plan.prefill, cost.model.plan.decode
        )
    # layer-level ops are named layer/<op>: group two levels deep to show them
    out["prefill"] = phase_summary(device, cost.prefill.ledger, depth=2)
    if cost.prefill_chunk_tokens is not None:  # a prompt longer than the plan holds at once
        out["prefill"]["chunk_tokens"] = cost.prefill_chunk_tokens
    out["transition"] = phase_summary(device, cost.transition, depth=2)
    out["decode"] = {
        **phase_summary(device, cost.decode.ledger, depth=2),
        "steps": max(output_len - 1, 0),
    }
    schedule = pipeline_schedule_of(setup, cost)
    if schedule is not None:
        steps, transition_s = max(output_len - 1, 0), cost.seconds()[1]
        out["batch"] = schedule.to_dict(device, steps=steps, transition_s=transition_s)
    elif cost.batch > 1:
        out["batch"] = _batch_summary(cost, output_len)
    return out


def _batch_summary(cost: RequestCost, output_len: int) -> dict[str, Any]:
    """The batch's figures beside one sequence's metrics (modelled): its prompts prefilled
    one after another, its decode steps shared by B sequences."""
    ttft_s, transition_s, decode_s = cost.seconds()
    steps = max(output_len - 1, 0)
    batch = cost.batch
    total_s = batch * ttft_s + transition_s + decode_s
    return {
        "batch_size": batch,
        "prefill_s": batch * ttft_s,
        "decode_tokens_per_s": batch * steps / decode_s if decode_s > 0 else None,
        "tokens_per_s": batch * output_len / total_s if total_s > 0 else None,
        "total_s": total_s,
        "note": "prompts prefilled one after another (prefill is not batched); metrics are "
        "one sequence's: TTFT its own prefill, TPOT the batch's decode step",
    }
