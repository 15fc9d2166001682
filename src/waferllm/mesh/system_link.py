"""The link between two devices (multi-wafer `fit`, SPEC.md §10.10), priced for one transfer.

A pipeline over N devices hands its residual stream from the last region of one device to the
first region of the next over the systems' I/O (the device's `system_link_*` fields). One
transfer costs the link's latency plus its bytes over its bandwidth, and two on-wafer legs
beside it: from the sending region to the wafer's I/O edge, and from the next wafer's I/O edge
to the receiving region (`io_leg_move`, priced as re-layouts by `relayout_charge`). Which
tensors cross, and when, is the model's business.
"""

from __future__ import annotations

import math

import numpy as np

from waferllm.device import Device
from waferllm.mesh.comm import broadcast
from waferllm.mesh.cost import Charge, ChargeKind, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.relayout import Move, relayout_charge
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh

# Modelled assumption (placeholder, no source): the system's I/O joins the wafer along its
# west edge, column 0 of every row; each row of the stream leaves and enters at its own row.
IO_EDGE_COLUMN = 0


def system_link_charge(device: Device, *, nbytes: int) -> Charge:
    """One transfer of `nbytes` from one device to the next.

    Cost (seconds): system_link_latency_s + nbytes / system_link_bytes_per_s, converted to
    cycles at the device clock; communication on the critical path, no on-wafer hops (the
    legs to and from the I/O edge are charged apart, `io_leg_move`), and no operation start
    overhead (the link's latency holds its fixed cost).
    """
    seconds = device.system_link_latency_s + nbytes / device.system_link_bytes_per_s
    return Charge(kind=ChargeKind.COMM, cycles=seconds * device.clock_hz, bytes_injected=nbytes)


def _replicated(x: DistTensor) -> bool:
    return x.layout.x_dim is None and x.mesh.cols > 1


def io_leg_move(x: DistTensor, origin: tuple[int, int], *, outbound: bool) -> Move | None:
    """The on-wafer leg between a region of `x`'s shape at `origin` and the I/O edge, row by
    row: every tile of a row gathers at (`outbound`) or spreads from the row's edge core
    (column `IO_EDGE_COLUMN`); a tensor replicated along X moves one copy per row, from or to
    the region's column nearest the edge (its local column 0). None when nothing moves.

    Cost (`relayout_charge`): with C columns at device column c0 and t elements per tile, a
    replicated stream pays c0 * alpha + t * B / min(link, ramp bandwidth); a split one, from a
    region at column 0, (C - 1) * alpha + (C - 1) * t * B / min(link, ramp bandwidth); each
    plus the operation start overhead."""
    rows, cols = x.mesh.shape
    row0, col0 = origin
    region = np.array([col0]) if _replicated(x) else col0 + np.arange(cols)
    edge = np.full(len(region), IO_EDGE_COLUMN)
    src, dst = (region, edge) if outbound else (edge, region)
    if np.array_equal(src, dst):
        return None
    lines = row0 + np.arange(rows)
    return Move(a_src=lines, a_dst=lines, b_src=src, b_dst=dst, count=math.prod(x.tile_shape))


def _charge_leg(device: Device, x: DistTensor, origin, ledger: Ledger, op: str, *, out: bool):
    move = io_leg_move(x, origin, outbound=out)
    if move is not None:
        ledger.charge(op, relayout_charge(device, [move]))


def system_link_hop(
    device: Device, x: DistTensor, dst: Mesh, ledger: Ledger, *, op: str
) -> DistTensor:
    """Move the residual stream `x` to mesh `dst` on the next device, charged.

    `<op>.io_out`: the leg from `x`'s region to the I/O edge; `<op>.system_link`: one copy of
    the logical tensor crosses (prefill [L, D]: L * D elements; decode [D]: D elements, in the
    storage dtype); `<op>.io_in`: the leg from the next device's edge to `dst`; a tensor
    replicated along X then enters column 0 of each row and is multicast along it
    (`<op>.bcast`, as an on-wafer hop does). A leg that moves nothing has no record."""
    assert dst.shape == x.mesh.shape
    nbytes = math.prod(x.layout.shape) * device.storage_bytes
    _charge_leg(device, x, x.mesh.origin, ledger, f"{op}.io_out", out=True)
    ledger.charge(f"{op}.system_link", system_link_charge(device, nbytes=nbytes))
    _charge_leg(device, x, dst.origin, ledger, f"{op}.io_in", out=False)
    moved = dst.register(x.data, x.layout, x.name)
    replicated = _replicated(x)
    x.free()
    if replicated:
        data = broadcast(dst, moved.data, axis=Axis.X, root=0, ledger=ledger, op=f"{op}.bcast")
        moved = moved.replace(data)
    return moved


__all__ = ["IO_EDGE_COLUMN", "io_leg_move", "system_link_charge", "system_link_hop"]
