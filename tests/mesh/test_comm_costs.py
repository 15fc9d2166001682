"""The ledger reproduces hand-derived closed forms exactly (SPEC.md §10.6).

Every formula below is derived in its comment from the message model, not read off the code:
a step costs max over messages (hops * alpha + stages * beta) plus max over directed links and
core ramps (bytes / bandwidth). The device is `tiny` with alpha = 3, beta = 7 so that every
term is visible; tiles are 16 float16 elements, n = 32 bytes.
"""

from __future__ import annotations

import pytest
import torch

from waferllm.mesh import (
    Axis,
    Ledger,
    Mesh,
    RingKind,
    allreduce,
    broadcast,
    ring_shift,
    segmented_allreduce,
)

from .spy import SpyLedger, device, max_link_load

ALPHA, BETA, LINK = 3.0, 7.0, 4.0
N = 32  # bytes of a 16-element float16 tile


def line(cols: int, rows: int = 1, **overrides: float) -> tuple[Mesh, torch.Tensor]:
    mesh = Mesh(device(**overrides), rows, cols)
    return mesh, torch.ones(rows, cols, 16)


def only(ledger: Ledger, op: str):
    (record,) = [r for r in ledger.records if r.op == op]
    return record


# ---- SPEC.md §10.6's worked example --------------------------------------------------------
@pytest.mark.parametrize("root", [0, 7])
@pytest.mark.parametrize("ramp", [4.0, 8.0])
def test_pipeline_allreduce_on_eight_cores_rooted_at_an_end_costs_14_hops_6_stages_2_sizes(
    root, ramp
):
    """Reduce: the far core's stream crosses 7 hops and 6 forward-while-adding cores; every
    link and ramp carries the tile once. Broadcast: 7 hops, no stage, one tile per link. With
    a ramp at least as fast as a link, each size term is n / link_bw."""
    mesh, data = line(8, ramp_bytes_per_cycle=ramp)
    ledger = Ledger()
    allreduce(mesh, data, axis=Axis.X, ledger=ledger, op="a", algorithm="pipeline", root=root)
    red, bc = only(ledger, "a.reduce"), only(ledger, "a.bcast")
    assert (red.critical_hops, red.critical_stages) == (7, 6)
    assert (bc.critical_hops, bc.critical_stages) == (7, 0)
    assert red.comm_cycles == 7 * ALPHA + 6 * BETA + N / LINK
    assert bc.comm_cycles == 7 * ALPHA + N / LINK
    totals = ledger.totals()
    assert totals.latency_cycles == 14 * ALPHA + 6 * BETA + 2 * (N / LINK)
    assert (totals.critical_hops, totals.critical_stages) == (14, 6)
    assert red.bytes_injected == 7 * N and bc.bytes_injected == N  # 7 senders; one stream
    assert red.link_byte_hops == bc.link_byte_hops == 7 * N


def test_a_slow_ramp_makes_the_same_allreduce_ramp_limited():
    """With ramps at half a link's rate, each tile through a ramp takes n / 2 cycles."""
    mesh, data = line(8, ramp_bytes_per_cycle=2.0)
    ledger = Ledger()
    allreduce(mesh, data, axis=Axis.X, ledger=ledger, op="a", algorithm="pipeline")
    assert ledger.totals().latency_cycles == 14 * ALPHA + 6 * BETA + 2 * (N / 2.0)


def test_an_interior_pipeline_root_takes_two_tiles_through_its_ramp_each_way():
    """Root 3 of 8: the far side (cores 4..7) is 4 hops and 3 stages away; the root takes in
    two streams and sends two, one after the other: 2n through its ramp each time."""
    mesh, data = line(8)
    ledger = Ledger()
    allreduce(mesh, data, axis=Axis.X, ledger=ledger, op="a", algorithm="pipeline", root=3)
    assert only(ledger, "a.reduce").comm_cycles == 4 * ALPHA + 3 * BETA + 2 * N / 4.0
    assert only(ledger, "a.bcast").comm_cycles == 4 * ALPHA + 2 * N / 4.0


# ---- shifts --------------------------------------------------------------------------------
@pytest.mark.parametrize("cols", [3, 4, 7, 8])
@pytest.mark.parametrize("rows", [1, 3])
def test_an_interleaved_ring_step_costs_two_hops_and_one_tile_whatever_p(rows, cols):
    """Every ring neighbour is at most 2 hops away and every directed link carries one stream,
    so a step costs 2 alpha + n / link. Hop total per line: P - 2 two-hop moves and two one-hop
    turn-arounds, 2P - 2."""
    mesh, data = line(cols, rows)
    ledger = SpyLedger()
    ring_shift(mesh, data, axis=Axis.X, ledger=ledger, op="s")
    record = only(ledger, "s")
    assert (record.critical_hops, record.critical_stages) == (2, 0)
    assert record.comm_cycles == 2 * ALPHA + N / LINK
    assert record.bytes_injected == rows * cols * N
    assert record.link_byte_hops == rows * (2 * cols - 2) * N
    traffic = ledger.traffic("s")
    # no directed link carries two streams; every link of the line is used in both directions
    assert set(traffic.links) == {(Axis.X, +1), (Axis.X, -1)}
    for load in traffic.links.values():
        assert (load == N).all() and load.shape[-1] == cols - 1
    assert (traffic.ramp_in == N).all() and (traffic.ramp_out == N).all()


@pytest.mark.parametrize("num", [3, 4, 7, 8])
def test_a_plain_ring_step_pays_p_minus_one_hops_for_the_wrap_around(num):
    """0 -> 1 -> ... -> P-1 -> 0: the wrap-around message crosses P - 1 links westwards (each
    link once, no contention), so a step costs (P - 1) alpha + n / link."""
    mesh, data = line(num)
    ledger = SpyLedger()
    ring_shift(mesh, data, axis=Axis.X, ledger=ledger, op="s", kind=RingKind.PLAIN)
    record = only(ledger, "s")
    assert record.critical_hops == num - 1
    assert record.comm_cycles == (num - 1) * ALPHA + N / LINK
    assert record.link_byte_hops == 2 * (num - 1) * N
    assert max_link_load(ledger.traffic("s")) == N


@pytest.mark.parametrize("num", [3, 5, 8, 13])
def test_the_interleaved_ring_is_contention_free_in_the_message_model(num):
    """Structural, from the ring order alone: count the streams crossing every directed link."""
    from waferllm.mesh.geometry import ring_successor

    east, west = [0] * (num - 1), [0] * (num - 1)
    for src, dst in enumerate(ring_successor(num).tolist()):
        for link in range(min(src, dst), max(src, dst)):
            (east if dst > src else west)[link] += 1
    assert east == west == [1] * (num - 1)


# ---- broadcast -----------------------------------------------------------------------------
def test_broadcast_from_an_end_and_from_the_middle():
    """From core 0 of 8: one stream, 7 hops, n per link and ramp. From core 3: two streams
    (3 and 4 hops) leave the root's ramp one after the other: 4 alpha + 2n / ramp."""
    mesh, data = line(8)
    ledger = Ledger()
    broadcast(mesh, data, axis=Axis.X, root=0, ledger=ledger, op="end")
    broadcast(mesh, data, axis=Axis.X, root=3, ledger=ledger, op="mid")
    end, mid = only(ledger, "end"), only(ledger, "mid")
    assert end.comm_cycles == 7 * ALPHA + N / LINK and end.bytes_injected == N
    assert mid.comm_cycles == 4 * ALPHA + 2 * N / 4.0 and mid.bytes_injected == 2 * N
    assert end.link_byte_hops == mid.link_byte_hops == 7 * N


def test_broadcast_from_per_line_roots_is_priced_by_its_slowest_line():
    """Rows rooted at 0, 3 and 7 of 8: the farthest core is 7 hops away (rows 0 and 2), the
    busiest ramp is row 1's interior root (2n); 4 streams in all, every link crossed once."""
    mesh, data = line(8, rows=3)
    ledger = SpyLedger()
    broadcast(mesh, data, axis=Axis.X, root=torch.tensor([0, 3, 7]).numpy(), ledger=ledger, op="b")
    record = only(ledger, "b")
    assert record.critical_hops == 7
    assert record.comm_cycles == 7 * ALPHA + 2 * N / 4.0
    assert record.bytes_injected == 4 * N
    assert record.link_byte_hops == 3 * 7 * N
    traffic = ledger.traffic("b")
    # every core but a root takes the stream in through its ramp exactly once
    expected = torch.ones(3, 8) * N
    expected[0, 0] = expected[1, 3] = expected[2, 7] = 0
    assert (traffic.ramp_in == expected.numpy()).all()


# ---- K-tree --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num", "fanouts", "reduce_cost", "bcast_cost", "injected", "byte_hops"),
    [
        # 16 = 4 groups of 4, roots 2, 6, 10, 14; top root 10 (middle group). Longest path
        # 0 -> 1 -> 2 -> 6 -> 10: 10 hops, stages at 1, 2, 6. Root 10 takes in 4 tiles (9, 11,
        # 6, 14); link 9 -> 10 carries two (level 1 and level 2): size max(2n/4, 4n/4) = n.
        # Broadcast from 10: 10 hops, two streams out of its ramp. 15 segments; hop sum
        # 12 * 1 + 3 * 4 = 24.
        (16, (4, 4), 10 * ALPHA + 3 * BETA + 4 * N / 4, 10 * ALPHA + 2 * N / 4, 15 * N, 24 * N),
        # 9 = 3 groups of 3, roots 1, 4, 7; top root 4. Longest path 0 -> 1 -> 4: 4 hops,
        # stage at 1. Root 4 takes in 3, 5, 1, 7: 4n. 8 segments; hops 6 * 1 + 2 * 3 = 12.
        (9, (3, 3), 4 * ALPHA + 1 * BETA + 4 * N / 4, 4 * ALPHA + 2 * N / 4, 8 * N, 12 * N),
        # 10 with b1 = 3: ceil(10/3) = 4 groups of sizes 3, 3, 2, 2 (starts 0, 3, 6, 8), roots
        # 1, 4, 7, 9; top root: index 4 // 2 = 2, core 7. Longest path 0 -> 1 -> 4 -> 7: 7 hops,
        # stages at 1 and 4. Root 7 takes in 6, 4, 9: 3n; links carry at most 2n.
        # 9 segments; hops 6 * 1 + 3 + 3 + 2 = 14.
        (10, (3, 4), 7 * ALPHA + 2 * BETA + 3 * N / 4, 7 * ALPHA + 2 * N / 4, 9 * N, 14 * N),
    ],
)
def test_ktree_allreduce_matches_its_hand_derived_closed_form(
    num, fanouts, reduce_cost, bcast_cost, injected, byte_hops
):
    rows = 2
    mesh, data = line(num, rows)
    ledger = Ledger()
    allreduce(mesh, data, axis=Axis.X, ledger=ledger, op="a", algorithm="ktree", fanouts=fanouts)
    red, bc = only(ledger, "a.reduce"), only(ledger, "a.bcast")
    assert red.comm_cycles == reduce_cost
    assert bc.comm_cycles == bcast_cost
    assert red.bytes_injected == rows * injected and red.link_byte_hops == rows * byte_hops
    assert bc.bytes_injected == rows * 2 * N and bc.link_byte_hops == rows * (num - 1) * N


def test_ktree_along_y_costs_what_it_costs_along_x_on_the_transposed_mesh():
    ledger_x, ledger_y = Ledger(), Ledger()
    mesh_x, data_x = line(16, 3)
    mesh_y = Mesh(device(), 16, 3)
    allreduce(mesh_x, data_x, axis=Axis.X, ledger=ledger_x, op="a", fanouts=(4, 4))
    allreduce(mesh_y, torch.ones(16, 3, 16), axis=Axis.Y, ledger=ledger_y, op="a", fanouts=(4, 4))
    assert ledger_x.records == ledger_y.records


@pytest.mark.parametrize("num", [16, 17, 25, 61, 64])
def test_the_ktree_needs_far_fewer_stages_than_the_pipeline_from_16_cores(num):
    """The pipeline allreduce rooted at an end has P - 2 stages; the K = 2 tree about
    2 * sqrt(P) / 2 + 1."""
    stages = {}
    for algorithm in ("pipeline", "ktree"):
        mesh, data = line(num)
        ledger = Ledger()
        allreduce(mesh, data, axis=Axis.X, ledger=ledger, op="a", algorithm=algorithm)
        stages[algorithm] = ledger.totals().critical_stages
    assert stages["pipeline"] == num - 2
    assert stages["ktree"] < stages["pipeline"]
    assert stages["ktree"] <= 2 * num**0.5


# ---- ring allreduce ------------------------------------------------------------------------
@pytest.mark.parametrize(("num", "elements"), [(8, 16), (4, 5), (7, 1), (2, 3)])
def test_ring_allreduce_costs_2p_minus_2_chunk_steps_and_2p_minus_3_stages(num, elements):
    """Chunks of ceil(n_el / P) elements; 2(P - 1) steps of the interleaved ring (2 hops, or 1
    for P = 2); every step's receiver adds or stores and re-sends, except after the last."""
    mesh = Mesh(device(), 1, num)
    ledger = Ledger()
    allreduce(
        mesh, torch.ones(1, num, elements), axis=Axis.X, ledger=ledger, op="a", algorithm="ring"
    )
    chunk = -(-elements // num) * 2
    hops = 2 if num > 2 else 1
    steps = 2 * (num - 1)
    totals = ledger.totals()
    assert totals.critical_hops == steps * hops
    assert totals.critical_stages == 2 * num - 3
    assert totals.latency_cycles == steps * (hops * ALPHA + chunk / LINK) + (2 * num - 3) * BETA
    assert totals.bytes_injected == steps * num * chunk
    assert totals.link_byte_hops == steps * (2 * num - 2) * chunk


# ---- segmented -----------------------------------------------------------------------------
def test_segmented_allreduce_is_priced_by_its_largest_group():
    """Groups (3, 5) of 8: roots 1 and 5. The 5-group's sides are 2 cores: 2 hops, 1 stage;
    root 5 takes in 2 tiles and sends 2 (interior): 2n through its ramp each way."""
    mesh, data = line(8)
    ledger = Ledger()
    segmented_allreduce(mesh, data, axis=Axis.X, group_sizes=(3, 5), ledger=ledger, op="g")
    red, bc = only(ledger, "g.reduce"), only(ledger, "g.bcast")
    assert red.comm_cycles == 2 * ALPHA + 1 * BETA + 2 * N / 4
    assert bc.comm_cycles == 2 * ALPHA + 2 * N / 4
    assert red.bytes_injected == 6 * N and bc.bytes_injected == 4 * N
    assert red.link_byte_hops == 6 * N and bc.link_byte_hops == 6 * N


# ---- contention ----------------------------------------------------------------------------
def test_two_streams_sharing_links_double_the_size_term_in_one_overlapped_step():
    """Two ring shifts along X in one network phase put two tiles on every link: 2 alpha +
    2n / link. In successive phases they cost twice one shift. Along X and Y at once they
    share no link (a fast ramp keeps the ramps out of the way): one shift's cost."""
    mesh, data = line(8, 2, ramp_bytes_per_cycle=16.0)
    cost = {}
    for name, axes, phases in (
        ("same", (Axis.X, Axis.X), (0, 0)),
        ("sequential", (Axis.X, Axis.X), (0, 1)),
        ("crossing", (Axis.X, Axis.Y), (0, 0)),
    ):
        ledger = Ledger()
        with ledger.overlap(name):
            for axis, phase in zip(axes, phases, strict=True):
                ring_shift(mesh, data, axis=axis, ledger=ledger, op="s", phase=phase)
        cost[name] = ledger.totals().comm_cycles
    assert cost["same"] == 2 * ALPHA + 2 * N / LINK
    assert cost["sequential"] == 2 * (2 * ALPHA + N / LINK)
    assert cost["crossing"] == 2 * ALPHA + N / LINK


def test_merging_two_traffics_adds_their_loads_and_keeps_the_slower_message():
    mesh, data = line(8)
    ledger = SpyLedger()
    ring_shift(mesh, data, axis=Axis.X, ledger=ledger, op="ring")
    ring_shift(mesh, data, axis=Axis.X, ledger=ledger, op="plain", kind="plain")
    ring, plain = ledger.traffic("ring"), ledger.traffic("plain")
    both = ring.merged(plain)
    assert both.critical_hops == 7
    assert both.size_term_cycles == 2 * N / LINK == ring.size_term_cycles + plain.size_term_cycles
    assert both.bytes_injected == ring.bytes_injected + plain.bytes_injected


def test_an_explicit_owner_map_prices_like_the_roots_or_groups_it_spells_out():
    from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic

    dev, shape = device(), (3, 8)
    roots = torch.tensor([0, 3, 7]).numpy()
    for spelled, owners in (
        (Owners.of_roots(8, roots), Owners.of_map(Owners.of_roots(8, roots).array())),
        (Owners.of_groups((3, 5)), Owners.of_map(Owners.of_groups((3, 5)).array()[0])),
    ):
        for pattern in (chain_traffic, multicast_traffic):
            a, b = pattern(dev, shape, Axis.X, spelled, N), pattern(dev, shape, Axis.X, owners, N)
            assert (a.cycles, a.bytes_injected, a.link_byte_hops) == (
                b.cycles,
                b.bytes_injected,
                b.link_byte_hops,
            )
            assert (a.critical_hops, a.critical_stages) == (b.critical_hops, b.critical_stages)
