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


def device(**overrides: float) -> Device:
    """The tiny device with distinguishable latency constants (alpha 3, beta 7) unless given."""
    return with_overrides(tiny(), {"hop_latency_cycles": 3, "stage_latency_cycles": 7, **overrides})


def max_link_load(traffic: Traffic) -> float:
    return max((float(load.max(initial=0.0)) for load in traffic.links.values()), default=0.0)
