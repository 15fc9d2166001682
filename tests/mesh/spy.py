"""A ledger that also keeps every charge as given, so tests can inspect a primitive's traffic."""

from __future__ import annotations

import dataclasses

from waferllm.device import Device, tiny, with_overrides
from waferllm.mesh import Charge, Ledger
from waferllm.mesh.traffic import Traffic


@dataclasses.dataclass(frozen=True)
class Seen:
    op: str
    charge: Charge
    phase: int


class SpyLedger(Ledger):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def charge(self, op: str, charge: Charge, *, phase: int = 0) -> None:
        self.seen.append(Seen(op, charge, phase))
        super().charge(op, charge, phase=phase)

    def traffic(self, op: str) -> Traffic:
        """The one traffic charged under `op`."""
        found = [s.charge.traffic for s in self.seen if s.op == op]
        assert len(found) == 1 and found[0] is not None, (op, [s.op for s in self.seen])
        return found[0]


PINNED = {
    "hop_latency_cycles": 3,
    "stage_latency_cycles": 7,
    "link_bytes_per_cycle": 4,
    "ramp_bytes_per_cycle": 4,
    "flops_per_cycle_per_core": 8,
    "sram_bytes_per_cycle": 12,
    "vector_instr_floor_cycles": 10,
    "step_overhead_cycles": 0,
    "op_overhead_cycles": 0,
    "scalar_cycles_per_element": 0,
    "layer_fixed_cycles": 0,
}


def device(**overrides: float) -> Device:
    """The tiny device with every constant a closed form uses pinned (so that calibrating the
    presets cannot change these tests): alpha 3, beta 7 (distinguishable), 4-byte links and
    ramps, F = 8, S = 12, an instruction floor of 10 cycles, no step or operation overhead."""
    return with_overrides(tiny(), {**PINNED, **overrides})


def max_link_load(traffic: Traffic) -> float:
    return max((float(load.max(initial=0.0)) for load in traffic.links.values()), default=0.0)
