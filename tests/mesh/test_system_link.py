"""The inter-system link (multi-wafer `fit`): one transfer costs latency + bytes / bandwidth,
closed forms on the pinned tiny device, and the residual stream crosses it whole."""

from __future__ import annotations

import pytest
import torch

from waferllm.mesh import Axis, Layout, Ledger, Mesh, broadcast
from waferllm.mesh.cost import ChargeKind
from waferllm.mesh.system_link import system_link_charge, system_link_hop

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
    (record,) = ledger.records
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
