"""A ring GEMM step or skew round already composed is appended again from its remembered
record (`kernels.ring_charges.charge_steps`): the records, routes and SRAM of the closed form
with the memo warm are those of the walk (the oracle, which never uses it), under any scope,
tag and repeat count, across grids, ring kinds, stored formats and devices."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from waferllm.device import tiny, wse2, wse3
from waferllm.kernels import ring_charges
from waferllm.kernels.gemm import _ring_gemm, align_a, prealign_b
from waferllm.mesh import Layout, Ledger, Mesh, Mode, RingKind, rings
from waferllm.mesh.cost import UnpricedLedger
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tiling import padded_k


def _run(device, grid, m, k, n, *, kind, stored, skewed_b, walk, repeat, ledger=None):
    mesh = Mesh(device, *grid, mode=Mode.ESTIMATE)
    k = padded_k(*grid, k)
    a = mesh.scatter(torch.empty(m, k, device="meta"), Layout((m, k), y_dim=0, x_dim=1), "a")
    if skewed_b:
        b = prealign_b(mesh, torch.empty(k, n, device="meta"), name="b", kind=kind, stored=stored)
    else:
        b = mesh.scatter(
            torch.empty(k, n, device="meta"), Layout((k, n), y_dim=0, x_dim=1), "b", stored=stored
        )
    ledger = Ledger() if ledger is None else ledger
    with ledger.scope("layer"), ledger.tag("t"), ledger.repeat(repeat):
        a2 = align_a(mesh, a=a, ledger=ledger, kind=kind, walk=walk).out
        _ring_gemm(mesh, a=a2, b=b, ledger=ledger, op="g", kind=kind, walk=walk)
        _ring_gemm(mesh, a=a, b=b, ledger=ledger, op="h", kind=kind, walk=walk)
    return [repr(r) for r in ledger.records], mesh.routes.routes_per_core, mesh.sram.peak_bytes


DEVICES = [dataclasses.replace(tiny(), step_overhead_cycles=5.0), wse2(), wse3()]


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (6, 4), (2, 2), (1, 3), (7, 7)])
@pytest.mark.parametrize("kind", list(RingKind))
def test_remembered_steps_append_what_charging_them_appends(grid, kind):
    for device, (m, k, n), stored, skewed_b, repeat in itertools.product(
        DEVICES,
        [(8, 16, 8), (13, 40, 27)],
        [StoredDtype.FLOAT16, StoredDtype.INT4],
        [False, True],
        [1, 3],
    ):
        args = (device, grid, m, k, n)
        kw = dict(kind=kind, stored=stored, skewed_b=skewed_b, repeat=repeat)
        want = _run(*args, walk=True, **kw)
        for _ in range(2):  # the second closed run finds every step remembered
            assert _run(*args, walk=False, **kw) == want


def test_a_remembered_step_is_not_charged_again(monkeypatch):
    args = (wse2(), (6, 6), 24, 48, 36)
    kw = dict(kind=RingKind.INTERLEAVED, stored=StoredDtype.FLOAT16, skewed_b=True, repeat=1)
    want = _run(*args, walk=True, **kw)
    _run(*args, walk=False, **kw)

    def charged(*args, **kwargs):
        raise AssertionError("a remembered step was charged")

    monkeypatch.setattr(rings, "charge_ring_step", charged)
    monkeypatch.setattr(rings, "charge_skew_round", charged)
    assert _run(*args, walk=False, **kw) == want
    assert ring_charges._records


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(ring_charges, "_records", {})
    monkeypatch.setattr(ring_charges, "_MAX_RECORDS", 3)
    for n in range(8, 40, 4):
        _run(
            wse2(),
            (4, 4),
            8,
            16,
            n,
            kind=RingKind.INTERLEAVED,
            stored=StoredDtype.INT8,
            skewed_b=False,
            walk=False,
            repeat=1,
        )
        assert len(ring_charges._records) <= 3


class _Watched(Ledger):
    """A ledger that sees each composed step land (as a budget's ledger checks it)."""

    def __init__(self) -> None:
        super().__init__()
        self.appended = 0

    def _append(self, op, charges, fields):
        super()._append(op, charges, fields)
        self.appended += 1


def test_only_a_plain_ledger_takes_remembered_steps():
    args = (wse2(), (5, 5), 20, 40, 30)
    kw = dict(kind=RingKind.INTERLEAVED, stored=StoredDtype.INT8, skewed_b=False, repeat=2)
    want = _run(*args, walk=True, **kw)
    assert _run(*args, walk=False, **kw) == want  # every step now remembered
    unpriced = UnpricedLedger()
    _run(*args, walk=False, ledger=unpriced, **kw)
    assert unpriced.records == []
    watched = _Watched()
    assert _run(*args, walk=False, ledger=watched, **kw) == want
    assert watched.appended == len(watched.records)
