"""T10 on the mesh (kernels/t10.py): dense-reference numerics on small grids and the closed
forms (1)-(2) of reference/t10-ladder-baselines.md §5 on the pinned test device
(alpha 3, beta 7, 4-byte links, F = 8, S = 12, floor 10, no overheads)."""

from __future__ import annotations

import pytest
import torch
from helpers.baselines import ALPHA, BETA, LINK
from helpers.baselines import pinned_device as device

from waferllm.errors import WaferError
from waferllm.kernels.t10 import t10_gemm, t10_gemv, t10_load_weights, t10_transpose
from waferllm.mesh import Axis, Layout, Ledger, Mesh
from waferllm.mesh.compute import matmul_cycles


def scatter(mesh: Mesh, host: torch.Tensor, name: str, **dims: int) -> object:
    return mesh.scatter(host, Layout(tuple(host.shape), **dims), name)


@pytest.mark.parametrize(("p", "stride"), [(1, 0), (4, 1), (5, 2), (7, 3), (8, 3)])
@pytest.mark.parametrize("preskewed", [False, True])
def test_t10_gemm_matches_the_dense_product_on_any_stride(p, stride, preskewed):
    torch.manual_seed(p)
    mesh = Mesh(device(), p, p)
    a_host, b_host = torch.randn(2 * p + 1, 3 * p), torch.randn(3 * p, 2 * p + 3)
    a = scatter(mesh, a_host, "a", y_dim=0, x_dim=1)
    b = (
        t10_load_weights(mesh, b_host, stride=stride)
        if preskewed
        else scatter(mesh, b_host, "b", y_dim=0, x_dim=1)
    )
    out = t10_gemm(mesh, a=a, b=b, ledger=Ledger(), stride=stride).out
    torch.testing.assert_close(mesh.gather(out), a_host @ b_host, rtol=1e-4, atol=1e-4)


def test_t10_gemm_superstep_follows_closed_form_one():
    """P = 8, stride 3, a 16x16 @ 16x24 GEMM: m = k = 2, n = 3 per core, both operands 2x3
    or 2x2 tiles (b = max(m*k, k*n)*s = 12 bytes). Per superstep: T_mm = k*n instructions of
    length m = 6 * max(10, 4/8, 12/12) = 60; one ring step d = 5 hops, lambda = 3 tiles on
    the busiest link: 5*alpha + 3*12/W; routes fit (32 on the test device), no relay."""
    mesh = Mesh(device(routes_per_core=64), 8, 8)
    a = scatter(mesh, torch.ones(16, 16), "a", y_dim=0, x_dim=1)
    b = t10_load_weights(mesh, torch.ones(16, 24), stride=3)
    ledger = Ledger()
    t10_gemm(mesh, a=a, b=b, ledger=ledger, stride=3)
    records = ledger.expanded()
    macs = [r for r in records if r.op.endswith("mac")]
    shifts = [r for r in records if r.op.endswith("/shift")]
    assert len(macs) == len(shifts) == 8
    mac, shift = macs[0], shifts[0]
    assert mac.compute_cycles == 6 * 10 == matmul_cycles(mesh.device, m=2, k=2, n=3)
    assert shift.critical_hops == 5 and shift.critical_stages == 0
    assert shift.comm_cycles == 5 * ALPHA + 3 * 12 / LINK


def test_t10_gemm_relays_its_rings_when_the_routes_run_out():
    """21 routes: 10 per axis ring, segments of 8 hops; P = 20, stride 9 -> d = 11 hops,
    ceil(11/8) - 1 = 1 relay per step, charged."""
    mesh = Mesh(device(routes_per_core=21), 20, 20)
    a = scatter(mesh, torch.ones(20, 20), "a", y_dim=0, x_dim=1)
    b = t10_load_weights(mesh, torch.ones(20, 20), stride=9)
    ledger = Ledger()
    t10_gemm(mesh, a=a, b=b, ledger=ledger, stride=9)
    shift = next(r for r in ledger.records if r.op.endswith("shift"))
    assert (shift.critical_hops, shift.critical_stages) == (11, 1)
    assert shift.comm_cycles == 11 * ALPHA + 1 * BETA + 9 * 2 / LINK
    assert mesh.routes.routes_per_core <= 21


def test_t10_gemm_barriers_span_the_given_region():
    """A 2x2 GEMM inside a 6x6 region: 2 supersteps, each closed by a barrier over the region:
    a chained allreduce of one 4-byte token to core 0 along X, then along Y. Per axis: the
    reduce 5*alpha + 4*beta + 4/W, the multicast back 5*alpha + 4/W (about the side, not
    the 36 cores). The barrier's colours are configured on the busy cores' routers too."""
    region = Mesh(device(), 6, 6)
    mesh = region.submesh(2, 2)
    a = scatter(mesh, torch.ones(4, 4), "a", y_dim=0, x_dim=1)
    b = t10_load_weights(mesh, torch.ones(4, 4), stride=1)
    ledger = Ledger()
    t10_gemm(mesh, a=a, b=b, ledger=ledger, stride=1, barrier=region)
    barriers = [r for r in ledger.expanded() if "/barrier." in r.op]
    assert [r.op.split("/")[-1] for r in barriers] == 2 * [
        "barrier.x.reduce",
        "barrier.x.bcast",
        "barrier.y.reduce",
        "barrier.y.bcast",
    ]
    reduce, bcast = 5 * ALPHA + 4 * BETA + 4 / LINK, 5 * ALPHA + 4 / LINK
    assert [r.comm_cycles for r in barriers[:4]] == [reduce, bcast, reduce, bcast]
    # the busy cores' routers carry the barrier's colours beside their rings
    assert set(region.routes.sets) <= set(mesh.routes.sets)


def test_t10_gemm_refuses_a_non_square_grid():
    mesh = Mesh(device(), 2, 3)
    a = scatter(mesh, torch.ones(4, 6), "a", y_dim=0, x_dim=1)
    b = scatter(mesh, torch.ones(6, 4), "b", y_dim=0, x_dim=1)
    with pytest.raises(WaferError, match="square"):
        t10_gemm(mesh, a=a, b=b, ledger=Ledger())


def test_t10_transpose_matches_the_host_transpose():
    mesh = Mesh(device(), 4, 4)
    host = torch.randn(3, 8, 12)
    t = scatter(mesh, host, "k", y_dim=1, x_dim=2)
    out = t10_transpose(mesh, t=t, ledger=Ledger()).out
    torch.testing.assert_close(mesh.gather(out), host.transpose(-1, -2))


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (6, 4)])
@pytest.mark.parametrize("axis", [Axis.Y, Axis.X])
def test_t10_gemv_matches_the_dense_product(shape, axis):
    torch.manual_seed(1)
    mesh = Mesh(device(), *shape)
    x_host, w_host = torch.randn(2, 13), torch.randn(13, 9)
    k_dims = {"y_dim": 1} if axis is Axis.Y else {"x_dim": 1}
    w_dims = {"y_dim": 0, "x_dim": 1} if axis is Axis.Y else {"x_dim": 0, "y_dim": 1}
    x = scatter(mesh, x_host, "x", **k_dims)
    w = scatter(mesh, w_host, "w", **w_dims)
    out = t10_gemv(mesh, x=x, w=w, ledger=Ledger(), reduce_axis=axis, per_partial_cycles=5.0)
    torch.testing.assert_close(mesh.gather(out.out), x_host @ w_host, rtol=1e-4, atol=1e-4)


def test_t10_gemv_follows_closed_form_two():
    """8 cores along Y, one column; K = 8, N = 16: Kt = 1, n = 16*2 = 32 bytes a partial.
    T_mv = 1 instruction of 16: max(10, 32/8, 96/12) = 10. Fan-in: 7*alpha + 7*max(8, c_p).
    Broadcast from root 0: 7*alpha + 32/W."""
    mesh = Mesh(device(), 8, 1)
    x = scatter(mesh, torch.ones(1, 8), "x", y_dim=1)
    w = scatter(mesh, torch.ones(8, 16), "w", y_dim=0, x_dim=1)
    ledger = Ledger()
    t10_gemv(mesh, x=x, w=w, ledger=ledger, per_partial_cycles=20.0)
    assert ledger.totals().latency_cycles == 10 + (7 * ALPHA + 7 * 20) + (7 * ALPHA + 32 / LINK)
