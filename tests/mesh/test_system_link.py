"""The inter-system link (multi-wafer `fit`): one transfer costs latency + bytes / bandwidth,
closed forms on the pinned tiny device, the residual stream crosses it whole, and its on-wafer
legs to and from the I/O edge (column 0) are charged beside it."""

from __future__ import annotations

import pytest
import torch

from waferllm.mesh import Axis, Layout, Ledger, Mesh, broadcast
from waferllm.mesh.cost import ChargeKind
from waferllm.mesh.system_link import io_leg_move, system_link_charge, system_link_hop

from .spy import device

LATENCY_S, BANDWIDTH = 2e-6, 1e9  # round numbers: every term is visible


def linked(**overrides: float):
    return device(system_link_latency_s=LATENCY_S, system_link_bytes_per_s=BANDWIDTH, **overrides)


@pytest.mark.parametrize("nbytes", [0, 2, 8192, 1 << 20])
def test_one_transfer_costs_latency_plus_bytes_over_bandwidth_in_cycles(nbytes):
    dev = linked()
    charge = system_link_charge(dev, nbytes=nbytes)
    seconds = LATENCY_S + nbytes / BANDWIDTH
    assert charge.kind is ChargeKind.COMM
    assert charge.cycles == pytest.approx(seconds * dev.clock_hz, rel=1e-15)
    assert dev.cycles_to_seconds(charge.cycles) == pytest.approx(seconds, rel=1e-15)
    assert (charge.bytes_injected, charge.link_byte_hops, charge.critical_hops) == (nbytes, 0, 0)
    assert charge.overhead_cycles == 0.0  # the link's latency holds its fixed cost


def test_a_transfer_is_one_sequential_communication_record_with_no_start_overhead():
    dev = linked(op_overhead_cycles=50.0)
    ledger = Ledger()
    ledger.charge("x", system_link_charge(dev, nbytes=4096))
    (record,) = ledger.records
    cycles = (LATENCY_S + 4096 / BANDWIDTH) * dev.clock_hz
    assert (
        record.comm_cycles == pytest.approx(cycles) and record.latency_cycles == record.comm_cycles
    )
    assert record.overhead_cycles == 0.0


def test_a_split_prefill_stream_crosses_once_with_every_element_of_its_logical_shape():
    dev = linked()
    length, hidden = 12, 20  # [L_y, D_x] on 3 x 4 cores: tiles [4, 5]
    src, dst = Mesh(dev, 3, 4), Mesh(dev, 3, 4)
    layout = Layout((length, hidden), y_dim=0, x_dim=1)
    x = src.register(torch.arange(240.0).reshape(3, 4, 4, 5), layout, "x")
    ledger = Ledger()
    moved = system_link_hop(dev, x, dst, ledger, op="hop1")
    out, record, into = ledger.records
    assert (out.op, into.op) == ("hop1.io_out", "hop1.io_in")
    nbytes = length * hidden * dev.storage_bytes
    assert (record.op, record.bytes_injected) == ("hop1.system_link", nbytes)
    assert record.comm_cycles == pytest.approx((LATENCY_S + nbytes / BANDWIDTH) * dev.clock_hz)
    assert moved.mesh is dst and torch.equal(moved.data, x.data)
    assert src.sram.live_bytes_max == 0  # the source's copy is freed


def test_a_replicated_decode_stream_crosses_once_then_its_entry_column_multicasts_it():
    dev = linked()
    hidden = 16  # [D_y] on 4 x 3 cores, replicated along X: tiles [4]
    src, dst = Mesh(dev, 4, 3), Mesh(dev, 4, 3)
    layout = Layout((hidden,), y_dim=0)
    data = torch.arange(16.0).reshape(4, 1, 4).expand(4, 3, 4).contiguous()
    x = src.register(data, layout, "x")
    ledger = Ledger()
    moved = system_link_hop(dev, x, dst, ledger, op="hop1")
    link, bcast = ledger.records
    assert (link.op, link.bytes_injected) == ("hop1.system_link", hidden * dev.storage_bytes)
    reference = Ledger()
    broadcast(Mesh(dev, 4, 3), data, axis=Axis.X, root=0, ledger=reference, op="hop1.bcast")
    assert bcast == reference.records[0]
    assert torch.equal(moved.data, data)


def _leg_cycles(dev, hops: int, elements: int) -> float:
    """hops x alpha + the busiest link or ramp's bytes + the operation start overhead."""
    bandwidth = min(dev.link_bytes_per_cycle, dev.ramp_bytes_per_cycle)
    size = elements * dev.storage_bytes / bandwidth
    return hops * dev.hop_latency_cycles + size + dev.op_overhead_cycles


def test_a_split_stream_gathers_at_the_edge_column_and_spreads_again_on_the_next_wafer():
    dev = linked()
    cols, tile = 4, 4 * 5  # [L_y, D_x] = [12, 20] on 3 x 4 cores at column 0: tiles [4, 5]
    x = Mesh(dev, 3, cols).register(
        torch.zeros(3, 4, 4, 5), Layout((12, 20), y_dim=0, x_dim=1), "x"
    )
    ledger = Ledger()
    system_link_hop(dev, x, Mesh(dev, 3, cols), ledger, op="hop1")
    out, _, into = ledger.records
    # every row's 3 other tiles cross the link next to the edge and land on its edge core
    expected = _leg_cycles(dev, hops=cols - 1, elements=(cols - 1) * tile)
    assert out.latency_cycles == pytest.approx(expected, rel=1e-12)
    assert into.latency_cycles == pytest.approx(expected, rel=1e-12)
    assert out.bytes_injected == into.bytes_injected == 3 * (cols - 1) * tile * dev.storage_bytes


def test_a_replicated_stream_far_from_the_edge_pays_its_distance_and_none_at_column_0():
    dev = linked()
    hidden, col0 = 16, 5  # [D_y] on 4 x 3 cores at column 5, replicated along X: tiles [4]
    src = Mesh(dev, 4, 3, origin=(0, col0))
    data = torch.zeros(4, 3, 4)
    x = src.register(data, Layout((hidden,), y_dim=0), "x")
    ledger = Ledger()
    system_link_hop(dev, x, Mesh(dev, 4, 3), ledger, op="hop2")
    assert [r.op for r in ledger.records] == ["hop2.io_out", "hop2.system_link", "hop2.bcast"]
    out = ledger.records[0]
    assert out.latency_cycles == pytest.approx(_leg_cycles(dev, hops=col0, elements=4))
    assert out.critical_hops == col0
    at_edge = Mesh(dev, 4, 3).register(data, Layout((hidden,), y_dim=0), "y")
    assert io_leg_move(at_edge, (0, 0), outbound=True) is None
