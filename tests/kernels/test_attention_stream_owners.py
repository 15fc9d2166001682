"""The streamed attention's block (`attention_stream_cost.charge_block`) prices its reduce and
multicast with the owners in closed form (`gemm_t.step_owners`, group offsets): the records
equal those of the block priced from the (R, C) owner map (`gemm_t.owner_map`, the path it
replaced, kept here as the oracle), on square and rectangular grids up to wafer scale, every
device, the reduce streamed or not."""

from __future__ import annotations

import pytest

from waferllm.device import tiny, wse2, wse3
from waferllm.kernels import attention_stream_cost
from waferllm.kernels.gemm_t import BlockOwners, block_owners, owner_map
from waferllm.kernels.heads import HeadLayout, head_layout
from waferllm.kernels.vector import EXP_SUB, MASK_SELECT, MAX_ACC, SCALE, SUM_ACC, charge_vector
from waferllm.mesh import Ledger, Mesh, Mode
from waferllm.mesh.charges import charge_multicast, charge_reduce_to_owners
from waferllm.mesh.geometry import Axis

CASES = [  # (device, rows, cols, kv heads, n_rep, head_dim, Lt)
    pytest.param(tiny, 3, 4, 2, 2, 8, 2, id="tiny-groups-of-2"),
    pytest.param(tiny, 5, 7, 1, 3, 12, 1, id="tiny-one-group-rectangular"),
    pytest.param(tiny, 4, 2, 4, 2, 4, 3, id="tiny-fewer-columns-than-kv-heads"),
    pytest.param(wse2, 11, 10, 2, 2, 8, 2, id="wse2-groups-of-5"),
    pytest.param(wse2, 653, 653, 8, 4, 128, 7, id="wse2-653-llama3-8b"),
    pytest.param(wse2, 226, 300, 8, 4, 128, 19, id="wse2-rectangular-llama3-8b"),
    pytest.param(wse3, 669, 669, 8, 4, 128, 7, id="wse3-669-llama3-8b"),
    pytest.param(wse3, 357, 402, 40, 1, 128, 12, id="wse3-llama2-13b-heads"),
]


def _block_from_map(
    mesh: Mesh, owners: BlockOwners, heads: HeadLayout, lt: int, ledger: Ledger, *, last: bool
) -> None:
    """`charge_block` as it was, its owners the (R, C) map of the first step."""
    g, n, hv, sb = heads.kv_per_tile, heads.n_rep, heads.value_slots, mesh.device.storage_bytes
    r = g * n * lt
    owner0 = owner_map(owners, mesh.rows, 0)
    if owners.shared:
        charge_reduce_to_owners(
            mesh,
            axis=Axis.X,
            owner=owner0,
            nbytes=r * lt * sb,
            ledger=ledger,
            op="qk.reduce",
            follows_stream=not last,
        )
    for op, cost in (("scale", SCALE), ("mask", MASK_SELECT), ("max", MAX_ACC)):
        charge_vector(mesh, ledger, f"softmax.{op}", rows=r, length=lt, cost=cost)
    charge_vector(mesh, ledger, "softmax.exp", rows=r, length=lt, cost=EXP_SUB)
    charge_vector(mesh, ledger, "softmax.sum", rows=r, length=lt, cost=SUM_ACC)
    if owners.shared:
        charge_multicast(
            mesh, axis=Axis.X, owner=owner0, nbytes=r * (lt + 2) * sb, ledger=ledger, op="pv.bcast"
        )
    charge_vector(mesh, ledger, "online.max", rows=1, length=r, cost=MAX_ACC)
    charge_vector(mesh, ledger, "online.correction", rows=1, length=r, cost=EXP_SUB)
    charge_vector(mesh, ledger, "online.sum", rows=1, length=r, cost=SUM_ACC)
    charge_vector(mesh, ledger, "online.rescale", rows=r, length=hv, cost=SCALE)


@pytest.mark.parametrize(("device", "rows", "cols", "kv", "n_rep", "hd", "lt"), CASES)
@pytest.mark.parametrize("last", [False, True])
def test_streamed_block_records_equal_those_priced_from_the_owner_map(
    device, rows, cols, kv, n_rep, hd, lt, last
):
    heads = head_layout(kv, n_rep, hd, cols)
    owners = block_owners(tuple(int(s) for s in heads.group_sizes), rows)
    runs = []
    for charge in (attention_stream_cost.charge_block, _block_from_map):
        mesh, ledger = Mesh(device(), rows, cols, mode=Mode.ESTIMATE), Ledger()
        charge(mesh, owners, heads, lt, ledger, last=last)
        runs.append((ledger.records, dict(mesh.routes.sets)))
    (got, got_routes), (want, want_routes) = runs
    assert len(got) == len(want) > 0
    for mine, theirs in zip(got, want, strict=True):
        assert mine == theirs
    assert got_routes == want_routes
    if owners.shared:  # the reduce and the multicast were priced
        assert {"qk.reduce", "pv.bcast"} <= {r.op for r in got}
