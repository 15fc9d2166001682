"""The ledger: how charges compose into records, counts, totals and the mean core span."""

from __future__ import annotations

import pytest
import torch

from waferllm.mesh import (
    Axis,
    Charge,
    ChargeKind,
    Ledger,
    Mesh,
    UnpricedLedger,
    broadcast,
    ring_shift,
)
from waferllm.mesh.compute import charge_compute

from .spy import device

ALPHA = 3.0
N = 32


def compute(cycles: float) -> Charge:
    return Charge(kind=ChargeKind.COMPUTE, cycles=cycles, flops=10)


def shift_step(ledger: Ledger, mesh: Mesh) -> None:
    ring_shift(mesh, torch.ones(1, mesh.cols, 16), axis=Axis.X, ledger=ledger, op="shift")


@pytest.mark.parametrize(("compute_cycles", "exposed_comm"), [(100.0, 0.0), (3.0, 11.0)])
def test_an_overlapped_step_costs_max_of_compute_and_comm_plus_the_overhead(
    compute_cycles, exposed_comm
):
    """A ring step costs 2 alpha + n / link = 14 cycles; overlapped with compute, only what
    exceeds the compute is exposed, and the step overhead is always paid."""
    mesh = Mesh(device(), 1, 6)
    ledger = Ledger()
    with ledger.overlap("step", step_overhead_cycles=5.0):
        ledger.charge("mm", compute(compute_cycles))
        shift_step(ledger, mesh)
    (record,) = ledger.records
    assert record.op == "step"
    assert record.latency_cycles == max(compute_cycles, 14.0) + 5.0
    assert (record.compute_cycles, record.comm_cycles) == (compute_cycles, exposed_comm)
    assert (record.overhead_cycles, record.comm_busy_cycles) == (5.0, 14.0)
    assert record.flops == 10 and record.bytes_injected == 6 * N


def test_sequential_charges_add_up_and_host_io_stays_off_the_critical_path():
    mesh = Mesh(device(), 1, 6)
    ledger = Ledger()
    ledger.charge("mm", compute(100.0))
    shift_step(ledger, mesh)
    ledger.charge("io", Charge(kind=ChargeKind.HOST_IO, cycles=1e6, host_bytes=8))
    totals = ledger.totals()
    assert totals.latency_cycles == 114.0
    assert totals.host_io_cycles == 1e6 and totals.host_bytes == 8
    assert totals.compute_fraction == pytest.approx(100.0 / 114.0)


def test_a_repeated_record_counts_n_times_and_expands_to_n_identical_records():
    mesh = Mesh(device(), 1, 6)
    repeated, unrolled = Ledger(), Ledger()
    with repeated.repeat(4):
        shift_step(repeated, mesh)
    for _ in range(4):
        shift_step(unrolled, mesh)
    assert len(repeated.records) == 1 and repeated.records[0].count == 4
    assert repeated.expanded() == unrolled.records
    assert repeated.totals() == unrolled.totals()
    nested = Ledger()
    with nested.repeat(2), nested.repeat(3):
        shift_step(nested, mesh)
    assert nested.records[0].count == 6


def test_repeat_inside_an_overlap_block_is_refused_rather_than_counted_once():
    ledger = Ledger()
    with pytest.raises(AssertionError, match="overlap"), ledger.overlap("step"):
        assert ledger.in_overlap
        with ledger.repeat(3):
            ledger.charge("mm", compute(1.0))
    assert not ledger.in_overlap


def test_a_ring_allreduce_inside_an_overlap_block_runs_its_steps_one_phase_after_another():
    from waferllm.mesh import allreduce

    mesh = Mesh(device(), 1, 4)
    data = torch.ones(1, 4, 16)
    outside, inside = Ledger(), Ledger()
    allreduce(mesh, data, axis=Axis.X, ledger=outside, op="a", algorithm="ring")
    with inside.overlap("step"):
        allreduce(mesh, data, axis=Axis.X, ledger=inside, op="a", algorithm="ring")
    assert inside.totals().comm_cycles == outside.totals().latency_cycles


def test_scopes_prefix_op_names_and_by_op_groups_them():
    mesh = Mesh(device(), 1, 6)
    ledger = Ledger()
    with ledger.scope("layer0"), ledger.scope("attn"):
        shift_step(ledger, mesh)
        ledger.charge("mm", compute(10.0))
    with ledger.scope("layer1"):
        ledger.charge("mm", compute(20.0))
    assert [r.op for r in ledger.records] == ["layer0/attn/shift", "layer0/attn/mm", "layer1/mm"]
    groups = ledger.by_op()
    assert groups["layer0"].latency_cycles == 24.0 and groups["layer1"].latency_cycles == 20.0
    assert ledger.totals(prefix="layer1").compute_cycles == 20.0


def test_tagged_alignment_is_totalled_apart():
    mesh = Mesh(device(), 1, 6)
    ledger = Ledger()
    with ledger.tag("align"):
        shift_step(ledger, mesh)
    ledger.charge("mm", compute(10.0))
    assert ledger.totals().align_cycles == 14.0
    assert ledger.totals().latency_cycles == 24.0


def test_extend_reuses_a_ledger_count_times_under_a_scope():
    mesh = Mesh(device(), 1, 6)
    layer, model = Ledger(), Ledger()
    shift_step(layer, mesh)
    layer.charge("mm", compute(10.0))
    with model.repeat(2):
        model.extend(layer, count=3, scope="layers")
    assert [r.count for r in model.records] == [6, 6]
    assert model.records[0].op == "layers/shift"
    assert model.totals().latency_cycles == 6 * 24.0


def test_mean_core_cycles_subtracts_how_early_the_average_core_finishes_a_broadcast():
    """From core 0 of 8, core d receives after d hops: the mean core is done
    alpha * mean(7 - d) = 3.5 alpha before the last one."""
    mesh = Mesh(device(), 1, 8)
    ledger = Ledger()
    broadcast(mesh, torch.ones(1, 8, 16), axis=Axis.X, root=0, ledger=ledger, op="b")
    assert ledger.mean_core_cycles() == ledger.totals().latency_cycles - 3.5 * ALPHA


# ---- the per-operation overhead ----------------------------------------------------------------
OP = 40.0


def test_every_sequential_compute_and_comm_record_pays_the_devices_op_overhead():
    """A 100-cycle compute and a 14-cycle ring step, run one after the other, each start once."""
    mesh = Mesh(device(op_overhead_cycles=OP), 1, 6)
    ledger = Ledger()
    charge_compute(mesh, ledger, "mm", cycles=100.0, flops_per_core=1.0)
    shift_step(ledger, mesh)
    assert [r.overhead_cycles for r in ledger.records] == [OP, OP]
    assert [r.latency_cycles for r in ledger.records] == [100.0 + OP, 14.0 + OP]
    assert ledger.totals().overhead_cycles == 2 * OP


def test_an_overlap_block_pays_its_step_overhead_once_and_no_op_overhead():
    mesh = Mesh(device(op_overhead_cycles=OP), 1, 6)
    ledger = Ledger()
    with ledger.overlap("step", step_overhead_cycles=5.0):
        charge_compute(mesh, ledger, "mm", cycles=3.0, flops_per_core=1.0)
        shift_step(ledger, mesh)
    (record,) = ledger.records
    assert record.overhead_cycles == 5.0
    assert record.latency_cycles == 14.0 + 5.0


def test_a_repeated_operation_pays_the_op_overhead_per_repetition():
    mesh = Mesh(device(op_overhead_cycles=OP), 1, 6)
    ledger = Ledger()
    with ledger.repeat(3):
        shift_step(ledger, mesh)
    assert ledger.totals().latency_cycles == 3 * (14.0 + OP)


def test_host_io_and_work_free_charges_pay_no_op_overhead():
    mesh = Mesh(device(op_overhead_cycles=OP), 1, 6)
    ledger = Ledger()
    mesh.charge_host_io(ledger, "io", 1024)
    ledger.charge("nothing", Charge(kind=ChargeKind.COMPUTE, cycles=0.0, overhead_cycles=OP))
    assert [r.overhead_cycles for r in ledger.records] == [0.0, 0.0]


def test_an_unpriced_ledger_records_no_overhead():
    mesh = Mesh(device(op_overhead_cycles=OP), 1, 6)
    ledger = UnpricedLedger()
    charge_compute(mesh, ledger, "mm", cycles=100.0, flops_per_core=1.0)
    shift_step(ledger, mesh)
    assert ledger.records == [] and ledger.totals().latency_cycles == 0.0


def test_totals_asked_again_after_more_records_include_them():
    from waferllm.mesh.cost import Charge, ChargeKind, Ledger

    ledger = Ledger()
    ledger.charge("a", Charge(kind=ChargeKind.COMPUTE, cycles=5.0, flops=3))
    first = ledger.totals()
    assert ledger.totals() is first  # remembered while no record is added
    ledger.charge("b", Charge(kind=ChargeKind.COMPUTE, cycles=2.0, flops=4))
    assert ledger.totals().flops == 7 and ledger.totals(prefix="b").flops == 4
    other = Ledger()
    other.extend(ledger, count=2)
    ledger.extend(other)
    assert ledger.totals().flops == 21 and ledger.totals().compute_cycles == 21.0
