"""Closed-form ledger tests for the baselines' primitives (mesh/blind_rings.py, mesh/remote.py).

Device `tiny` pinned as in spy.py: alpha 3, beta 7, 4-byte links and ramps, no overheads.
Tiles are 16 float16 elements, n = 32 bytes. The stride-ring vectors are note §5's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from waferllm.errors import RouteOverflowError, WaferError
from waferllm.mesh import Axis, Ledger, Mesh
from waferllm.mesh.blind_rings import (
    default_stride,
    fan_in_reduce,
    permuted_shift,
    relay_plan,
    stride_position,
    stride_successor,
    transit_per_core,
)
from waferllm.mesh.remote import (
    flows,
    point_to_point,
    remote_load,
    snake_chain,
    xy_transit_per_core,
)

from .spy import SpyLedger, device, max_link_load

ALPHA, BETA, LINK = 3.0, 7.0, 4.0
N = 32


@pytest.mark.parametrize(
    ("num", "stride", "hops", "streams"), [(8, 3, 5, 3), (8, 1, 7, 1), (720, 359, 361, 359)]
)
def test_stride_ring_step_has_the_notes_hops_and_busiest_link(num, stride, hops, streams):
    """d = max(s, P - s), lambda = min(s, P - s) (note §5 test vectors)."""
    mesh = Mesh(device(routes_per_core=4096, mesh_cols=720), 1, num)
    ledger = SpyLedger()
    data = torch.ones(1, num, 16)
    permuted_shift(
        mesh,
        data,
        axis=Axis.X,
        dst=stride_successor(num, stride),
        ledger=ledger,
        op="s",
        route_name="ring",
    )
    traffic = ledger.traffic("s")
    assert traffic.critical_hops == hops
    assert max_link_load(traffic) == streams * N
    assert ledger.records[0].comm_cycles == hops * ALPHA + streams * N / LINK


def test_stride_ring_moves_every_tile_to_its_successor():
    mesh = Mesh(device(), 2, 8)
    data = torch.arange(16.0).reshape(2, 8, 1)
    out = permuted_shift(
        mesh,
        data,
        axis=Axis.X,
        dst=stride_successor(8, 3),
        ledger=Ledger(),
        op="s",
        route_name="ring",
    )
    for i in range(8):
        assert out[0, (i + 3) % 8, 0] == data[0, i, 0]


def test_default_stride_is_the_coprime_nearest_half():
    assert [default_stride(p) for p in (2, 8, 52, 720)] == [1, 3, 25, 359]
    pos = stride_position(8, 3)
    assert list(np.argsort(pos)) == [0, 3, 6, 1, 4, 7, 2, 5]


def test_transit_count_of_stride_three_on_eight_cores():
    """Core 3 is passed by 1->4, 2->5 (east) and by 5->0, 6->1, 7->2 (west): 5 flows."""
    transit = transit_per_core(np.arange(8), stride_successor(8, 3), 8)
    assert transit.max() == 5 and transit[0, 3] == 5


def test_a_ring_over_the_route_budget_is_relayed_and_the_relays_are_charged():
    """21 routes: 19 free for transit, segments of g = 19 hops; p = 52, s = 25: d = 27 hops,
    transit far above 19 -> relayed once (ceil(27/19) - 1 = 1 stage)."""
    mesh = Mesh(device(routes_per_core=21), 1, 52)
    ledger = SpyLedger()
    permuted_shift(
        mesh,
        torch.ones(1, 52, 16),
        axis=Axis.X,
        dst=stride_successor(52, 25),
        ledger=ledger,
        op="s",
        route_name="ring",
    )
    traffic = ledger.traffic("s")
    assert (traffic.critical_hops, traffic.critical_stages) == (27, 1)
    assert mesh.routes.routes_per_core == 21
    assert ledger.records[0].comm_cycles == 27 * ALPHA + 1 * BETA + 25 * N / LINK


def test_relay_plan_refuses_when_no_route_is_free():
    assert relay_plan(hops=9, routes_needed=5, free_routes=5, name="r").stages == 0
    assert relay_plan(hops=9, routes_needed=50, free_routes=5, name="r").stages == 2
    with pytest.raises(RouteOverflowError):
        relay_plan(hops=9, routes_needed=50, free_routes=2, name="r")


@pytest.mark.parametrize("per_partial", [2.0, 30.0])
def test_fan_in_costs_far_hops_plus_one_serial_slot_per_partial(per_partial):
    """Root 0 of 8: the far partial crosses 7 hops; the root takes 7 partials one after the
    other, each max(n/W, c_p) = max(8, c_p) cycles."""
    mesh = Mesh(device(), 1, 8)
    ledger = Ledger()
    data = torch.arange(8.0).reshape(1, 8, 1).expand(1, 8, 16).contiguous()
    out = fan_in_reduce(
        mesh, data, axis=Axis.X, root=0, ledger=ledger, op="f", per_partial_cycles=per_partial
    )
    assert torch.equal(out[0, 0], torch.full((16,), 28.0))
    (rec,) = ledger.records
    assert rec.critical_hops == 7
    assert rec.comm_cycles == 7 * ALPHA + 7 * max(N / LINK, per_partial)
    assert mesh.routes.routes_per_core == 1


def test_fan_in_rejects_a_root_outside_the_line():
    with pytest.raises(WaferError):
        fan_in_reduce(
            Mesh(device(), 1, 4),
            torch.ones(1, 4, 1),
            axis=Axis.X,
            root=4,
            ledger=Ledger(),
            op="f",
            per_partial_cycles=1.0,
        )


def test_point_to_point_transpose_is_xy_routed():
    """A 4x4 transpose: (y, x) -> (x, y). The longest flows join the corners (3, 0) and
    (0, 3): 6 hops. X legs run along the source row to column y: row 3's link (2, 3) carries
    the flows from columns 0, 1 and 2 eastwards, 3 tiles, the most any link carries."""
    mesh = Mesh(device(), 4, 4)
    y, x = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    f = flows((y, x), (x, y), N)
    ledger = SpyLedger()
    point_to_point(mesh, f, ledger=ledger, op="t", route_name="t")
    traffic = ledger.traffic("t")
    assert traffic.critical_hops == 6
    assert max_link_load(traffic) == 3 * N
    assert ledger.records[0].comm_cycles == 6 * ALPHA + 3 * N / LINK


def test_xy_transit_counts_the_turn_core():
    """(0, 0) -> (2, 2): passes (0, 1), turns at (0, 2), passes (1, 2)."""
    f = flows((np.array([0]), np.array([0])), (np.array([2]), np.array([2])), 4)
    transit = xy_transit_per_core((3, 3), f)
    assert transit.sum() == 3 and transit[0, 1] == transit[0, 2] == transit[1, 2] == 1


def test_remote_load_pays_request_and_reply_and_owner_hot_spots():
    """Three consumers read 32 bytes each from owner (0, 0): request 4 bytes, reply 32; the
    owner's ramp sends 3 replies (96 bytes); farthest consumer (1, 1) is 2 hops away."""
    mesh = Mesh(device(), 2, 2)
    owners = (np.zeros(3, int), np.zeros(3, int))
    consumers = (np.array([0, 1, 1]), np.array([1, 0, 1]))
    ledger = Ledger()
    remote_load(mesh, flows(owners, consumers, N), ledger=ledger, op="ld", route_name="ld")
    request, reply = ledger.records
    assert request.comm_cycles == 2 * ALPHA + 3 * 4 / LINK
    assert reply.comm_cycles == 2 * ALPHA + 3 * N / LINK


def test_snake_chain_crosses_every_core_once():
    """A 3x4 region, one stream (3 routes, within budget): 11 hops, no relay, one size term."""
    mesh = Mesh(device(), 3, 4)
    ledger = Ledger()
    snake_chain(mesh, nbytes=N, ledger=ledger, op="bar")
    (rec,) = ledger.records
    assert (rec.critical_hops, rec.critical_stages) == (11, 0)
    assert rec.comm_cycles == 11 * ALPHA + N / LINK
    assert mesh.routes.routes_per_core == 3


def test_concurrent_snake_streams_over_the_budget_relay_every_f_minus_2_hops():
    """10 streams need 12 routes per router; with F = 5 they relay every 3 hops: 11 hops,
    ceil(11/3) - 1 = 3 stages, and every core configures the 5 routes."""
    mesh = Mesh(device(), 3, 4)
    ledger = Ledger()
    snake_chain(mesh, nbytes=N, ledger=ledger, op="ld", streams=10, route_budget=5)
    (rec,) = ledger.records
    assert (rec.critical_hops, rec.critical_stages) == (11, 3)
    assert rec.comm_cycles == 11 * ALPHA + 3 * BETA + N / LINK
    assert mesh.routes.routes_per_core == 5
