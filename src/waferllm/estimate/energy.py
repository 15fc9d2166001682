"""Energy per event: the device's static power over the modelled time plus the dynamic energy of
the events the ledgers recorded (FLOPs, SRAM bytes, bytes x hops on the fabric).

The constants are the device's (`energy_pj_*`, `static_power_w`, each sourced or a labelled
placeholder); whole-device power x time (SPEC.md §3) is reported beside the event energy as
`power_x_time_j`. Host I/O is off the wafer and carries no energy here. Nothing here prices time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from waferllm.device import Device
from waferllm.mesh.cost import Totals

PICO = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class Energy:
    """Joules of one request (modelled), by event kind."""

    static_j: float  # static_power_w x modelled time
    compute_j: float  # FLOPs x pJ per FLOP
    sram_j: float  # SRAM bytes read or written x pJ per byte
    fabric_j: float  # bytes x hops x pJ per byte-hop
    power_x_time_j: float  # power_w x modelled time (SPEC.md §3), for comparison

    @property
    def total_j(self) -> float:
        return self.static_j + self.compute_j + self.sram_j + self.fabric_j

    def to_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "total_j": self.total_j}


def event_energy(
    device: Device, totals: Sequence[Totals], seconds: float, *, num_devices: int = 1
) -> Energy:
    """Energy of a request whose phases summed to `totals`, over `seconds` of modelled time,
    on `num_devices` linked devices (each draws its static power the whole time; the events
    are wherever they happened)."""
    flops = sum(t.flops for t in totals)
    sram = sum(t.sram_bytes for t in totals)
    byte_hops = sum(t.link_byte_hops for t in totals)
    return Energy(
        static_j=device.static_power_w * seconds * num_devices,
        compute_j=flops * device.energy_pj_per_flop * PICO,
        sram_j=sram * device.energy_pj_per_sram_byte * PICO,
        fabric_j=byte_hops * device.energy_pj_per_hop_byte * PICO,
        power_x_time_j=device.power_w * seconds * num_devices,
    )
