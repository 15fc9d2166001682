"""The ring allreduce's charges (`comm.charge_allreduce` with `ReduceAlgorithm.RING`).

Reduce-scatter then allgather on the interleaved ring, priced from sizes alone: each step's
traffic comes from `ring_traffic.ring_step_traffic`; who moves the data is `comm`'s business.
"""

from __future__ import annotations

from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.ring_traffic import ring_step_traffic
from waferllm.mesh.routes import RING_ROUTES
from waferllm.mesh.virtual import Mesh


def charge_ring_allreduce(mesh: Mesh, *, axis: Axis, numel: int, ledger: Ledger, op: str) -> None:
    """Reduce-scatter then allgather on the interleaved ring, in chunks of ceil(n/P) elements.

    2(P-1) steps of at most 2 hops and one chunk each. Every step's receiver processes (adds or
    stores) and re-sends in the next step, except after the last: 2P-3 stages in all.
    """
    num = mesh.size(axis)
    mesh.routes.require(f"{axis.value}_ring_interleaved_fwd", RING_ROUTES)
    chunk = -(-numel // num) * mesh.device.storage_bytes
    steps = [
        ("reduce_scatter", num - 1, 1),
        ("allgather", num - 2, 1),
        ("allgather.last", 1, 0),
    ]
    phase = 0
    for name, count, stages in steps if ledger.prices else ():
        traffic = ring_step_traffic(mesh.device, mesh.shape, axis, chunk, stages)
        phase = _charge_steps(ledger, f"{op}.{name}", Charge.comm(traffic), count, phase)


def _charge_steps(ledger: Ledger, op: str, charge: Charge, count: int, phase: int) -> int:
    """`count` identical sequential steps: one record with a count, or inside an overlap
    block one network phase each. Returns the next free phase."""
    if count <= 0:
        return phase
    if ledger.in_overlap:
        for i in range(count):
            ledger.charge(op, charge, phase=phase + i)
    else:
        with ledger.repeat(count):
            ledger.charge(op, charge)
    return phase + count
