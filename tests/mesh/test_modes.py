"""Estimate mode (meta tensors) records exactly what functional mode records, and the compute
dtype never changes a cost (SPEC.md §3, §10.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from waferllm.device import tiny
from waferllm.mesh import (
    Axis,
    Layout,
    Ledger,
    Mesh,
    Mode,
    allreduce,
    broadcast,
    matmul,
    reduce,
    ring_shift,
    segmented_allreduce,
)
from waferllm.mesh.comm import charge_ring_shift


def program(mesh: Mesh, ledger: Ledger) -> list[torch.Tensor]:
    """A bit of everything: host I/O, a loop of overlapped compute-shift steps, every
    collective, per-line roots, a segmented reduce; returns the outputs."""
    a = mesh.scatter(torch.randn(9, 10), Layout((9, 10), y_dim=0, x_dim=1), "a", ledger=ledger)
    k_tile = a.tile_shape[1]
    b = mesh.scatter(torch.randn(k_tile, 7), Layout((k_tile, 7), x_dim=1), "b", ledger=ledger)
    acc = mesh.empty(Layout((9, 7), y_dim=0, x_dim=1), "acc")
    x, w = a.data, b.data
    for _ in mesh.steps(mesh.cols, ledger):
        with ledger.overlap("step", step_overhead_cycles=2.0):
            acc.data = matmul(mesh, a=x, b=w, ledger=ledger, op="mm", accumulate=acc.data)
            x = ring_shift(mesh, x, axis=Axis.X, ledger=ledger, op="shift_a")
            w = ring_shift(mesh, w, axis=Axis.Y, ledger=ledger, op="shift_b", phase=0)
    outs = [acc.data]
    for algorithm in ("pipeline", "ring", "ktree"):
        outs.append(
            allreduce(mesh, acc.data, axis=Axis.X, ledger=ledger, op=algorithm, algorithm=algorithm)
        )
    roots = np.arange(mesh.rows) % mesh.cols
    line, _ = reduce(
        mesh, acc.data, axis=Axis.X, ledger=ledger, op="r", algorithm="pipeline", root=roots
    )
    outs.append(
        broadcast(mesh, line.expand_as(acc.data), axis=Axis.X, root=roots, ledger=ledger, op="b")
    )
    outs.append(
        segmented_allreduce(
            mesh, acc.data, axis=Axis.Y, group_sizes=(1, mesh.rows - 1), ledger=ledger, op="g"
        )
    )
    outs.append(mesh.gather(acc, ledger=ledger))
    return outs


@pytest.mark.parametrize("grid", [(3, 4), (4, 3), (2, 5), (5, 2)])
def test_estimate_and_functional_ledgers_are_identical_after_expanding_counts(grid):
    results = {}
    for mode in Mode:
        mesh = Mesh(tiny(), *grid, mode=mode)
        ledger = Ledger()
        outs = program(mesh, ledger)
        results[mode] = (ledger, mesh, outs)
    (f_ledger, f_mesh, f_outs), (e_ledger, e_mesh, e_outs) = (
        results[Mode.FUNCTIONAL],
        results[Mode.ESTIMATE],
    )
    assert f_ledger.expanded() == e_ledger.expanded()
    assert f_ledger.totals() == e_ledger.totals()
    assert len(e_ledger.records) < len(f_ledger.records)  # the step loop is one record there
    assert f_mesh.sram.peak_bytes == e_mesh.sram.peak_bytes
    assert f_mesh.routes.sets == e_mesh.routes.sets
    for f, e in zip(f_outs, e_outs, strict=True):
        assert e.device.type == "meta" and f.device.type == "cpu"
        assert f.shape == e.shape


@pytest.mark.parametrize("mode", list(Mode))
def test_a_float16_run_reports_the_same_costs_as_a_float32_run(mode):
    ledgers = []
    for dtype in (torch.float32, torch.float16):
        mesh = Mesh(tiny(), 3, 4, mode=mode, compute_dtype=dtype)
        ledger = Ledger()
        program(mesh, ledger)
        ledgers.append((ledger, mesh.sram.peak_bytes))
    assert ledgers[0][0].expanded() == ledgers[1][0].expanded()
    assert ledgers[0][1] == ledgers[1][1]


def test_the_functional_program_computes_the_dense_product():
    torch.manual_seed(0)
    mesh = Mesh(tiny(), 3, 3)
    a, b = torch.randn(6, 6), torch.randn(6, 6)
    ta = mesh.scatter(a, Layout((6, 6), y_dim=0, x_dim=1), "a")
    tb = mesh.scatter(b, Layout((6, 6), y_dim=0, x_dim=1), "b")
    # Cannon on the plain ring: skew, then P multiply-shift steps
    ledger = Ledger()
    x, w = ta.data, tb.data
    x = torch.stack([x[y].roll(-y, 0) for y in range(3)])
    w = torch.stack([w[:, c].roll(-c, 0) for c in range(3)], 1)
    acc = torch.zeros(3, 3, 2, 2)
    for _ in mesh.steps(3, ledger):
        acc = matmul(mesh, a=x, b=w, ledger=ledger, op="mm", accumulate=acc)
        x = ring_shift(mesh, x, axis=Axis.X, ledger=ledger, op="sa", kind="plain", steps=-1)
        w = ring_shift(mesh, w, axis=Axis.Y, ledger=ledger, op="sb", kind="plain", steps=-1)
    out = mesh.gather(mesh.register(acc, Layout((6, 6), y_dim=0, x_dim=1), "c"))
    assert torch.allclose(out, a @ b, atol=1e-5)


@pytest.mark.parametrize("mode", [Mode.FUNCTIONAL, Mode.ESTIMATE])
def test_charged_steps_run_the_body_once_and_record_what_charging_every_step_records(mode):
    """Steps whose body only charges (their numbers batched elsewhere): the body runs once;
    functional mode appends exactly the records a loop over the steps appends, estimate mode
    the same records with a count; routes are configured either way."""

    def charge(mesh: Mesh, ledger: Ledger) -> None:
        with ledger.overlap("step", step_overhead_cycles=2.0):
            charge_ring_shift(mesh, torch.empty(3, 4, 2, 5), axis=Axis.Y, ledger=ledger, op="s")

    looped_mesh, looped = Mesh(tiny(), 3, 4, mode=mode), Ledger()
    with looped.scope("k"):
        for _ in looped_mesh.steps(5, looped):
            charge(looped_mesh, looped)
    charged_mesh, charged, bodies = Mesh(tiny(), 3, 4, mode=mode), Ledger(), []
    with charged.scope("k"):
        for step in charged_mesh.charged_steps(5, charged):
            bodies.append(step)
            charge(charged_mesh, charged)
    assert bodies == [0]
    assert charged.records == looped.records
    assert [r.count for r in charged.records] == ([1] * 5 if mode is Mode.FUNCTIONAL else [5])
    assert charged_mesh.routes.sets == looped_mesh.routes.sets
    assert list(charged_mesh.charged_steps(0, charged)) == []
