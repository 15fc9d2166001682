"""The link between two devices (multi-wafer `fit`, SPEC.md §10.10), priced for one transfer.

A pipeline over N devices hands its residual stream from the last region of one device to the
first region of the next over the systems' I/O (the device's `system_link_*` fields). One
transfer costs the link's latency plus its bytes over its bandwidth; the on-wafer legs to and
from the systems' I/O are not modelled. Which tensors cross, and when, is the model's business.
"""

from __future__ import annotations

import math

from waferllm.device import Device
from waferllm.mesh.comm import broadcast
from waferllm.mesh.cost import Charge, ChargeKind, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh


def system_link_charge(device: Device, *, nbytes: int) -> Charge:
    """One transfer of `nbytes` from one device to the next.

    Cost (seconds): system_link_latency_s + nbytes / system_link_bytes_per_s, converted to
    cycles at the device clock; communication on the critical path, no on-wafer hops, and no
    operation start overhead (the link's latency holds its fixed cost).
    """
    seconds = device.system_link_latency_s + nbytes / device.system_link_bytes_per_s
    return Charge(kind=ChargeKind.COMM, cycles=seconds * device.clock_hz, bytes_injected=nbytes)


def system_link_hop(
    device: Device, x: DistTensor, dst: Mesh, ledger: Ledger, *, op: str
) -> DistTensor:
    """Move the residual stream `x` to mesh `dst` on the next device, charged.

    One copy of the logical tensor crosses (prefill [L, D]: L * D elements; decode [D]: D
    elements, in the storage dtype) as `<op>.system_link`; a tensor replicated along X enters
    column 0 of each row and is multicast along it (`<op>.bcast`, as an on-wafer hop does)."""
    assert dst.shape == x.mesh.shape
    nbytes = math.prod(x.layout.shape) * device.storage_bytes
    ledger.charge(f"{op}.system_link", system_link_charge(device, nbytes=nbytes))
    moved = dst.register(x.data, x.layout, x.name)
    replicated = x.layout.x_dim is None and x.mesh.cols > 1
    x.free()
    if replicated:
        data = broadcast(dst, moved.data, axis=Axis.X, root=0, ledger=ledger, op=f"{op}.bcast")
        moved = moved.replace(data)
    return moved


__all__ = ["system_link_charge", "system_link_hop"]
