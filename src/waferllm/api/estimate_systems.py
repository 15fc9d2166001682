"""`waferllm.estimate(..., system="t10"|"ladder")`: the same request under the paper's wafer-side
baselines (reference/t10-ladder-baselines.md; `estimate.systems`), reported in SPEC.md §10.4's
schema with `system` set. Grids not given are WaferLLM's (the note's §6.1 choice: the paper
does not state the baselines' grids), found by WaferLLM's own estimate. Per-layer always: the
baselines are modelled one layer at a time, as the paper measured.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from waferllm.api.estimate import estimate
from waferllm.api.estimate_report import PER_LAYER_NOTE, PhasePlacement, phase_summary
from waferllm.device import Device
from waferllm.engine.metrics import model_flops
from waferllm.estimate.energy import event_energy
from waferllm.estimate.systems import System, SystemCost, estimate_system
from waferllm.mesh.cost import Ledger, PhaseLedger
from waferllm.mesh.virtual import GridLike, as_grid
from waferllm.model.config import ModelConfig
from waferllm.model.report import KvCapacity, RequestMetrics, RequestReport

BASELINE_NOTE = (
    "modelled {system} baseline (reference/t10-ladder-baselines.md): its constants are "
    "fitted on the paper's LLaMA3-8B rows only; every other number is a prediction"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineLedgers:
    """A baseline request's three phase ledgers, as `Estimate.ledgers` holds WaferLLM's (the
    trace reads either): neither baseline re-lays anything between the phases."""

    prefill: PhaseLedger
    transition: Ledger
    decode: PhaseLedger


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineEstimate:
    """A baseline's prediction: the §10.4 report (`to_dict()`) and the ledgers behind it."""

    report: RequestReport
    prefill: PhasePlacement
    decode: PhasePlacement
    cost: SystemCost
    search: None = None
    extrapolated: bool = True

    @property
    def metrics(self) -> RequestMetrics:
        return self.report.metrics

    @property
    def ledgers(self) -> BaselineLedgers:
        return BaselineLedgers(
            prefill=self.cost.prefill, transition=Ledger(), decode=self.cost.decode
        )

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()


def estimate_baseline(
    system: System,
    config: ModelConfig,
    device: Device,
    *,
    prompt_len: int,
    output_len: int,
    prefill_grid: GridLike | None,
    decode_grid: GridLike | None,
) -> BaselineEstimate:
    start = time.perf_counter()
    given = (as_grid(prefill_grid, "prefill_grid"), as_grid(decode_grid, "decode_grid"))
    if given[0] is None or given[1] is None:
        ours = estimate(
            config,
            device=device,
            prompt_len=prompt_len,
            output_len=output_len,
            prefill_grid=given[0],
            decode_grid=given[1],
            placement="per-layer",
        )
        given = (given[0] or ours.prefill.grid, given[1] or ours.decode.grid)
    assert given[0] is not None and given[1] is not None
    grids: tuple[tuple[int, int], tuple[int, int]] = (given[0], given[1])
    cost = estimate_system(
        system,
        config=config,
        device=device,
        prefill_grid=grids[0],
        decode_grid=grids[1],
        prompt_len=prompt_len,
        output_len=output_len,
    )
    ttft_s, decode_s = cost.seconds(device)
    flops = model_flops(config, prompt_len=prompt_len, output_len=output_len)
    cores = max(r * c for r, c in grids)
    peak = cores * device.flops_per_cycle_per_core * device.clock_hz
    metrics = RequestMetrics.from_times(
        prompt_len=prompt_len,
        output_len=output_len,
        ttft_s=ttft_s,
        decode_time_s=decode_s,
        transition_s=0.0,  # note §6.10: neither baseline re-lays anything between phases
        power_w=device.power_w,
        peak_sram_bytes_per_core=max(
            cost.prefill.peak_sram_bytes_per_core, cost.decode.peak_sram_bytes_per_core
        ),
        routes_per_core=max(cost.prefill.routes_per_core, cost.decode.routes_per_core),
        utilization=flops / (peak * (ttft_s + decode_s)),
    )
    totals = [cost.prefill.ledger.totals(), cost.decode.ledger.totals()]
    energy = event_energy(device, totals, ttft_s + decode_s)
    metrics = dataclasses.replace(metrics, energy_j=energy.total_j)
    layers = config.num_hidden_layers
    placements = tuple(
        PhasePlacement(grid=g, origins=((0, 0),), layers=(range(layers),), layer_multiplier=layers)
        for g in grids
    )
    why = f"{system.value} is modelled per layer; its KV capacity is not computed"
    none = KvCapacity(shift=None, concat=None, reason=why)
    breakdown = {
        "note": PER_LAYER_NOTE.format(layers=layers)
        + "; "
        + BASELINE_NOTE.format(system=system.value),
        "placement": {
            "mode": "per-layer",
            "resident": "one",
            "kv_cache": _kv_layout(system),
            "prefill": placements[0].to_dict(),
            "decode": placements[1].to_dict(),
        },
        "search": None,
        "prefill": phase_summary(device, cost.prefill.ledger, depth=3),
        "transition": phase_summary(device, Ledger(), depth=1),
        "decode": {
            **phase_summary(device, cost.decode.ledger, depth=3),
            "steps": max(output_len - 1, 0),
        },
        "energy": energy.to_dict(),
    }
    report = RequestReport(
        kind="estimate",
        model=config.name,
        device=device.name,
        prompt_len=prompt_len,
        output_len=output_len,
        prefill_grid=grids[0],
        decode_grid=grids[1],
        placement="per-layer",
        metrics=metrics,
        kv_capacity_tokens=none,
        max_new_tokens=none,
        breakdown=breakdown,
        host_wall_s=time.perf_counter() - start,
        system=system.value,
    )
    return BaselineEstimate(report=report, prefill=placements[0], decode=placements[1], cost=cost)


def _kv_layout(system: System) -> str:
    return "static" if system is System.T10 else "striped"
