"""Batched pipelines over linked devices (multi-wafer `fit`, SPEC.md §10.10): B sequences in flight.

One sequence's phase ledger is split into what each device works (`device_stages`: the layers'
records pro rata to each device's layers, every other record to the device the walk is on) and
what each link carries. With B sequences (micro-batches of one sequence) the devices work on
different sequences at once: a decode round, every sequence one token, takes the longest of one
sequence's trip through the pipeline and B times the busiest device or link
(`PipelineSchedule`). Modelled, closed form; the ledgers themselves stay one sequence's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from waferllm.device import Device
from waferllm.mesh.cost import Ledger, Totals
from waferllm.model.pipeline import layers_per_device
from waferllm.model.regions import PhaseRegions

PER_LAYER_OPS = ("layer", "kv_shift")  # records charged once per layer (times the layers)
ENTRY_OPS = ("host", "embed")  # a step (or a prompt's chunk) enters the first device
LINK_SUFFIX = ".system_link"
OUT_LEG_SUFFIX = ".io_out"  # the sender's leg to its I/O edge (mesh.system_link)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stages:
    """One sequence's phase split over the pipeline: cycles each device works and each link
    carries (summed over the phase's steps)."""

    devices: np.ndarray  # (N,)
    links: np.ndarray  # (N - 1,)

    @property
    def sequence_cycles(self) -> float:
        """One sequence alone: the devices and links one after another."""
        return float(self.devices.sum() + self.links.sum())

    @property
    def bottleneck_cycles(self) -> float:
        """The busiest device or link: what each further sequence in flight adds."""
        return float(max(self.devices.max(), self.links.max(initial=0.0)))


def _hop_index(op: str) -> int | None:
    head = op.split("/")[0].split(".")[0]
    return int(head[3:]) if head.startswith("hop") and head[3:].isdigit() else None


def device_stages(ledger: Ledger, regions: PhaseRegions) -> Stages:
    """Split a phase's records (in walk order) over the devices of `regions`: a record of the
    layers (`PER_LAYER_OPS`) pro rata to each device's layers; `hop<r>.system_link` to the link
    into region r's device, `hop<r>.io_out` to the device before it; every other record to the
    device the walk is on (the embedding on the first, where every step or chunk of a prompt
    enters: `ENTRY_OPS`; the LM head on the last)."""
    ranges = layers_per_device(regions)
    share = np.array([len(r) for r in ranges], dtype=np.float64) / sum(len(r) for r in ranges)
    devices = np.zeros(len(ranges))
    links = np.zeros(len(ranges) - 1)
    current = 0
    for record in ledger.records:
        cycles = record.latency_cycles * record.count
        hop, head = _hop_index(record.op), record.op.split("/")[0].split(".")[0]
        current = 0 if head in ENTRY_OPS else current
        if head in PER_LAYER_OPS:
            devices += cycles * share
        elif hop is not None and record.op.endswith(LINK_SUFFIX):
            current = regions.regions[hop].device
            links[current - 1] += cycles
        elif hop is not None and record.op.endswith(OUT_LEG_SUFFIX):
            devices[regions.regions[hop].device - 1] += cycles
        else:
            current = regions.regions[hop].device if hop is not None else current
            devices[current] += cycles
    return Stages(devices=devices, links=links)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineSchedule:
    """B sequences through an N-device pipeline, one sequence per device at a time.

    Prefill: the prompts enter one after another; the last is done after one prompt's TTFT
    plus (B - 1) times the prefill bottleneck. Decode: a round (every sequence one token)
    takes max(one sequence's step, B x the busiest device or link), so B = 1 gives one
    sequence's decode and B >= N fills the pipeline where the stages are balanced (the round
    is B x the bottleneck). Bubbles: the share of device time idle, 1 - B x sum(device
    work) / (N x round)."""

    batch: int
    prefill: Stages
    decode: Stages

    def prefill_cycles(self) -> float:
        return self.prefill.sequence_cycles + (self.batch - 1) * self.prefill.bottleneck_cycles

    def decode_cycles(self) -> float:
        return max(self.decode.sequence_cycles, self.batch * self.decode.bottleneck_cycles)

    def bubble_fraction(self, stages: Stages, span_cycles: float) -> float | None:
        work = self.batch * float(stages.devices.sum())
        return 1.0 - work / (len(stages.devices) * span_cycles) if span_cycles > 0 else None

    def scaled_totals(self, totals: list[Totals]) -> list[Totals]:
        """(prefill, transition, decode) totals of the batch from one sequence's: the
        prefill's and decode's events happen once per sequence (energy counts them)."""
        pre, transition, dec = totals
        return [_times(pre, self.batch), transition, _times(dec, self.batch)]

    def to_dict(self, device: Device, *, steps: int, transition_s: float) -> dict[str, Any]:
        """The batch's figures (modelled): TTFT is one sequence's own prefill, TPOT a round."""
        to_s = device.cycles_to_seconds
        prefill_s, decode_s = to_s(self.prefill_cycles()), to_s(self.decode_cycles())
        total_s = prefill_s + transition_s + decode_s
        tokens = self.batch * (steps + 1)
        return {
            "batch_size": self.batch,
            "schedule": "pipeline: one sequence per device at a time, the sequences overlapped",
            "prefill_s": prefill_s,
            "prefill_bubble_fraction": self.bubble_fraction(self.prefill, self.prefill_cycles()),
            "decode_round_s": decode_s / steps if steps else None,
            "decode_bubble_fraction": self.bubble_fraction(self.decode, self.decode_cycles()),
            "device_decode_s": [to_s(float(c)) for c in self.decode.devices],
            "link_decode_s": [to_s(float(c)) for c in self.decode.links],
            "decode_tokens_per_s": self.batch * steps / decode_s if decode_s > 0 else None,
            "tokens_per_s": tokens / total_s if total_s > 0 else None,
            "total_s": total_s,
        }


def _times(totals: Totals, k: int) -> Totals:
    return Totals(**{f.name: getattr(totals, f.name) * k for f in dataclasses.fields(totals)})


def pipeline_schedule(
    batch: int, prefill: Ledger, decode: Ledger, regions: tuple[PhaseRegions, PhaseRegions]
) -> PipelineSchedule:
    """The schedule of `batch` sequences from one sequence's prefill and decode ledgers."""
    return PipelineSchedule(
        batch=batch,
        prefill=device_stages(prefill, regions[0]),
        decode=device_stages(decode, regions[1]),
    )


__all__ = ["PipelineSchedule", "Stages", "device_stages", "pipeline_schedule"]
