"""Serving metrics of a simulated schedule: latency percentiles, throughput, goodput, KV.

Definitions (SPEC.md §10.13): TTFT = first token - arrival; TPOT = (last token - first token)
/ (output_len - 1), over requests with more than one output token; latency = last token -
arrival; `duration_s` = last token of the trace - first arrival; goodput counts requests that
meet every SLO given. Percentiles are numpy's (linear interpolation). Nothing here schedules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from waferllm.estimate.scheduler import Mode, Schedule

__all__ = ["LatencyStats", "ServingMetrics", "serving_metrics"]

PERCENTILES = (50, 90, 99)
WORK_PHASES = ("prefill", "decode")  # what counts as busy in `utilization`


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Mean and percentiles of one per-request latency, in seconds (None without samples)."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, values_s: Sequence[float]) -> LatencyStats:
        if not values_s:
            return cls(mean=None, p50=None, p90=None, p99=None)
        array = np.asarray(values_s, dtype=np.float64)
        p50, p90, p99 = (float(v) for v in np.percentile(array, PERCENTILES))
        return cls(mean=float(array.mean()), p50=p50, p90=p90, p99=p99)

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingMetrics:
    """Trace-level numbers of one schedule (modelled)."""

    num_requests: int
    duration_s: float
    throughput_tokens_per_s: float
    requests_per_s: float
    ttft_s: LatencyStats
    tpot_s: LatencyStats
    latency_s: LatencyStats
    goodput_requests_per_s: float
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    kv_peak_fraction: float
    utilization: float  # busy share of the duration, see `serving_metrics`
    preemptions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_requests": self.num_requests,
            "duration_s": self.duration_s,
            "throughput_tokens_per_s": self.throughput_tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "ttft_s": self.ttft_s.to_dict(),
            "tpot_s": self.tpot_s.to_dict(),
            "latency_s": self.latency_s.to_dict(),
            "goodput_requests_per_s": self.goodput_requests_per_s,
            "slo": {"ttft_s": self.slo_ttft_s, "tpot_s": self.slo_tpot_s},
            "kv_peak_fraction": self.kv_peak_fraction,
            "utilization": self.utilization,
            "preemptions": self.preemptions,
        }


def serving_metrics(
    schedule: Schedule, *, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None
) -> ServingMetrics:
    """Summarise `schedule`. `utilization` is the share of the duration the device spends in
    prefill or decode iterations (re-layouts and idle time excluded); in disaggregated mode the
    mean of the two engines' shares."""
    records = schedule.records
    start_s = min(r.arrival_s for r in records)
    duration_s = max(r.finish_s for r in records) - start_s
    tpots = [t for t in (r.tpot_s for r in records) if t is not None]
    good = sum(
        (slo_ttft_s is None or r.ttft_s <= slo_ttft_s)
        and (slo_tpot_s is None or r.tpot_s is None or r.tpot_s <= slo_tpot_s)
        for r in records
    )
    engines = 2 if schedule.mode is Mode.DISAGGREGATED else 1
    busy_s = sum(schedule.busy_s(phase) for phase in WORK_PHASES)
    return ServingMetrics(
        num_requests=len(records),
        duration_s=duration_s,
        throughput_tokens_per_s=_per_s(sum(r.output_len for r in records), duration_s),
        requests_per_s=_per_s(len(records), duration_s),
        ttft_s=LatencyStats.of([r.ttft_s for r in records]),
        tpot_s=LatencyStats.of(tpots),
        latency_s=LatencyStats.of([r.latency_s for r in records]),
        goodput_requests_per_s=_per_s(good, duration_s),
        slo_ttft_s=slo_ttft_s,
        slo_tpot_s=slo_tpot_s,
        kv_peak_fraction=schedule.kv_peak_tokens / schedule.kv_capacity_tokens,
        utilization=busy_s / (engines * duration_s) if duration_s > 0 else 0.0,
        preemptions=schedule.preemptions,
    )


def _per_s(count: float, duration_s: float) -> float:
    """A rate over the trace; a zero-length trace (free steps) has none: 0."""
    return count / duration_s if duration_s > 0 else 0.0
