"""Charges for data a kernel moves by index: the hardware's messages, without moving tensors.

Kernels that keep a large buffer in place and move its blocks by indexing (dist-GEMM-T's owned
blocks, prefill attention's probability blocks, the KV cache's slots) still pay for the
messages the hardware sends: these primitives configure the routes and charge the traffic of
`patterns` (priced by `traffic`); the caller moves the data. Everything else is in `comm`.
Legend: P cores along the axis, L lines; an owner map gives every core's root, (L, P) or (P,).
"""

from __future__ import annotations

import numpy as np

from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic, tail_shift_traffic
from waferllm.mesh.routes import BROADCAST_ROUTES, CHAIN_ROUTES
from waferllm.mesh.virtual import Mesh


def charge_reduce_to_owners(
    mesh: Mesh,
    *,
    axis: Axis,
    owner: np.ndarray | Owners,
    nbytes: int,
    ledger: Ledger,
    op: str,
    follows_stream: bool = False,
) -> None:
    """Forward-while-adding chains along `axis`: every core's `nbytes` partial goes to
    owner[line, i] (an (L, P) or (P,) map; consecutive cores with one owner form a group, the
    owner may differ per line), as `reduce(algorithm=PIPELINE)` with a root per group.
    Critical path: the farthest core's d hops and d-1 stages plus one size term; with
    `follows_stream` (the stream right behind the previous one, see `reduce`) only the size
    term. Routes: the axis's chain colours (static routes serve any root)."""
    mesh.routes.require(f"{axis.value}_chain", CHAIN_ROUTES)
    if not ledger.prices:
        return
    traffic = chain_traffic(mesh.device, mesh.shape, axis, owners_of(owner), nbytes)
    if follows_stream:
        traffic = traffic.streamed()
    ledger.charge(op, Charge.comm(traffic))


def charge_multicast(
    mesh: Mesh, *, axis: Axis, owner: np.ndarray | Owners, nbytes: int, ledger: Ledger, op: str
) -> None:
    """Every owner multicasts `nbytes` to the consecutive cores that name it in `owner`
    ((L, P) or (P,)), as `broadcast` with a root per group: the farthest core's hops, no
    stages, one size term (two through an interior owner's ramp). Routes: the axis's
    broadcast colours."""
    mesh.routes.require(f"{axis.value}_bcast", BROADCAST_ROUTES)
    if ledger.prices:
        traffic = multicast_traffic(mesh.device, mesh.shape, axis, owners_of(owner), nbytes)
        ledger.charge(op, Charge.comm(traffic))


_SEEN: dict[int, tuple[np.ndarray, Owners]] = {}  # id -> (the read-only map, its Owners)


def owners_of(owner: np.ndarray | Owners) -> Owners:
    """`Owners.of_map(owner)`, remembered for a read-only map (a kernel charges the same map
    every step; the entry holds the array, so its id is not reused while remembered); an
    `Owners` as it is (a kernel that built it in closed form)."""
    if isinstance(owner, Owners):
        return owner
    if owner.flags.writeable:
        return Owners.of_map(owner)
    seen = _SEEN.get(id(owner))
    if seen is None or seen[0] is not owner:
        if len(_SEEN) >= 64:
            _SEEN.pop(next(iter(_SEEN)))
        seen = _SEEN[id(owner)] = (owner, Owners.of_map(owner))
    return seen[1]


def charge_tail_shift(
    mesh: Mesh, *, axis: Axis, first: int, nbytes: int, ledger: Ledger, op: str
) -> None:
    """Cores first..P-1 of every line each pass `nbytes` one hop towards index 0 at the same
    time (the shift-based KV cache's append, SPEC.md §10.9): alpha + nbytes/W. Routes: none
    new (along Y, the K-tree's first-level upward chain colours, SPEC.md §10.7)."""
    if ledger.prices:
        traffic = tail_shift_traffic(mesh.device, mesh.shape, axis, first, nbytes)
        ledger.charge(op, Charge.comm(traffic))
