"""Modelled request metrics from a generation's ledgers (SPEC.md §10.4).

TTFT is the prefill ledger (prefill, final norm, LM head at the last position, the first
token's on-mesh argmax); `transition_s` the re-layout ledger; decode time the sum of the O-1
decode-step ledgers. Host I/O (prompt in, tokens and sampling logits out) is only reported in
the breakdown, never in a time or a TPR; host wall-clock stays in `Trace.host_wall_s`. The
derivation itself is `RequestMetrics.from_times`, shared with `estimate` and `gpu`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from waferllm.device import Device
from waferllm.engine.engine import Trace
from waferllm.estimate.energy import Energy, event_energy
from waferllm.estimate.flops import model_flops
from waferllm.mesh.cost import Ledger, Totals
from waferllm.model.config import ModelConfig
from waferllm.model.report import RequestMetrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class Occupancy:
    """What the placed model occupies on the device, for the per-request metrics."""

    num_cores: int  # cores holding the model (all regions, both phases' grids)
    peak_sram_bytes_per_core: int | None
    routes_per_core: int | None


def _seconds(device: Device, ledger: Ledger) -> float:
    return device.cycles_to_seconds(ledger.totals().latency_cycles)


def _sum(ledgers: list[Ledger]) -> Ledger:
    total = Ledger()
    for ledger in ledgers:
        total.records.extend(ledger.records)
    return total


def request_metrics(
    trace: Trace, *, device: Device, occupancy: Occupancy, config: ModelConfig
) -> RequestMetrics:
    ttft_s = _seconds(device, trace.prefill)
    transition_s = _seconds(device, trace.transition)
    decode_s = _seconds(device, _sum(trace.decode))
    total_s = ttft_s + transition_s + decode_s
    flops = model_flops(config, prompt_len=trace.prompt_len, output_len=trace.output_len)
    peak_flops_per_s = occupancy.num_cores * device.flops_per_cycle_per_core * device.clock_hz
    metrics = RequestMetrics.from_times(
        prompt_len=trace.prompt_len,
        output_len=trace.output_len,
        ttft_s=ttft_s,
        decode_time_s=decode_s,
        transition_s=transition_s,
        power_w=device.power_w,
        peak_sram_bytes_per_core=occupancy.peak_sram_bytes_per_core,
        routes_per_core=occupancy.routes_per_core,
        utilization=flops / (peak_flops_per_s * total_s) if total_s > 0 else None,
    )
    return dataclasses.replace(metrics, energy_j=request_energy(trace, device).total_j)


def request_energy(trace: Trace, device: Device) -> Energy:
    """The request's energy per event over its modelled time (prefill, transition, decode)."""
    totals = [ledger.totals() for ledger in (trace.prefill, trace.transition, *trace.decode)]
    seconds = sum(device.cycles_to_seconds(t.latency_cycles) for t in totals)
    return event_energy(device, totals, seconds)


def phase_times(device: Device, totals: Totals) -> dict[str, float]:
    """Modelled seconds of a phase split into compute, exposed comm and overhead, plus busy
    comm, FLOPs and the host I/O no metric includes (the breakdown of SPEC.md §10.4)."""
    to_s = device.cycles_to_seconds
    return {
        "modelled_s": to_s(totals.latency_cycles),
        "compute_s": to_s(totals.compute_cycles),
        "comm_s": to_s(totals.comm_cycles),
        "overhead_s": to_s(totals.overhead_cycles),
        "comm_busy_s": to_s(totals.comm_busy_cycles),
        "flops": int(totals.flops),
        "host_io_s": to_s(totals.host_io_cycles),
        "host_io_bytes": int(totals.host_bytes),
    }


def op_times(device: Device, ledger: Ledger, depth: int) -> dict[str, float]:
    """Modelled seconds per op (first `depth` name components), largest first."""
    groups = ledger.by_op(depth=depth)
    seconds = {op: device.cycles_to_seconds(t.latency_cycles) for op, t in groups.items()}
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def breakdown(trace: Trace, *, device: Device, op_depth: int = 1) -> dict[str, Any]:
    """Per-phase split of modelled time (compute, exposed comm, overhead), per-op time, and
    the host I/O that no metric includes. `op_depth`: how many op-name components to group."""
    decode = _sum(trace.decode)
    sampling = trace.host_io.totals()
    return {
        "prefill": {
            **phase_times(device, trace.prefill.totals()),
            "ops": op_times(device, trace.prefill, op_depth),
        },
        "transition": phase_times(device, trace.transition.totals()),
        "decode": {
            **phase_times(device, decode.totals()),
            "steps": len(trace.decode),
            "ops": op_times(device, decode, op_depth),
        },
        "sampling_host_io": {
            "host_io_s": device.cycles_to_seconds(sampling.host_io_cycles),
            "host_io_bytes": int(sampling.host_bytes),
        },
        "energy": request_energy(trace, device).to_dict(),
        "finish_reason": str(trace.finish_reason) if trace.finish_reason else None,
        "sampling": dataclasses.asdict(trace.params),
    }
