"""Distributed GEMM costs and structure: the docstrings' closed forms reproduced exactly, the
skew and the ring shifts checked tile by tile, routes and SRAM per core, relayed multicasts,
and estimate-mode ledgers identical to functional ones (SPEC.md §3, §4, §10.6, §10.7)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from waferllm.device import tiny, wse2
from waferllm.errors import SramOverflowError
from waferllm.kernels.gemm import align_a, meshgemm, prealign_b
from waferllm.kernels.gemm_t import gemm_t
from waferllm.kernels.registry import GEMM_KERNELS, store_b_for
from waferllm.mesh import (
    Axis,
    Layout,
    Ledger,
    Mesh,
    Mode,
    RingKind,
    ring_order,
    ring_position,
    rings,
)
from waferllm.mesh.compute import matmul_cycles
from waferllm.mesh.relay import MulticastPlan, plan_multicasts, relayed_multicast_traffic
from waferllm.mesh.tiling import LogicalGrid, padded_k, to_logical

DEVICE = dataclasses.replace(tiny(), step_overhead_cycles=5.0)
S = DEVICE.storage_bytes


def _square(algo: str, p: int, mt: int, kt: int, nt: int, *, device=DEVICE, mode=Mode.FUNCTIONAL):
    """Run `algo` on a P x P mesh with tiles [mt, kt] @ [kt, nt]."""
    mesh = Mesh(device, p, p, mode=mode)
    m, k, n = p * mt, p * kt, p * nt
    meta = mode is Mode.ESTIMATE
    host_a = torch.empty(m, k, device="meta") if meta else torch.randn(m, k)
    host_b = torch.empty(k, n, device="meta") if meta else torch.randn(k, n)
    a = mesh.scatter(host_a, Layout((m, k), y_dim=0, x_dim=1), "a")
    ledger = Ledger()
    if algo == "gemm_t":
        b = mesh.scatter(host_b.T.contiguous(), Layout((n, k), y_dim=0, x_dim=1), "b")
        gemm_t(mesh, a=a, b=b, ledger=ledger)
    else:
        GEMM_KERNELS[algo](mesh, a=a, b=store_b_for(mesh, host_b, algo=algo), ledger=ledger)
    return mesh, ledger


def _size(nbytes: float) -> float:
    return nbytes / min(DEVICE.link_bytes_per_cycle, DEVICE.ramp_bytes_per_cycle)


def _mac(mt: int, kt: int, nt: int) -> float:
    return matmul_cycles(DEVICE, m=mt, k=kt, n=nt)


@pytest.mark.parametrize(("algo", "hops"), [("meshgemm", 2), ("cannon", 5)])
def test_ring_gemm_ledger_equals_the_docstring_closed_form(algo, hops):
    p, mt, kt, nt = 6, 8, 3, 5
    _, ledger = _square(algo, p, mt, kt, nt)
    align, step = ledger.records[0], ledger.records[-1]
    alpha, overhead = DEVICE.hop_latency_cycles, DEVICE.step_overhead_cycles
    assert [r.tag for r in ledger.records] == ["align"] * (p // 2) + [""] * p
    assert align.comm_cycles == hops * alpha + _size(mt * kt * S)
    assert align.overhead_cycles == overhead and align.compute_cycles == 0
    comm = hops * alpha + _size((mt * kt + kt * nt) * S)  # both tiles leave through one ramp
    assert step.compute_cycles == _mac(mt, kt, nt)
    assert step.comm_busy_cycles == comm
    assert step.comm_cycles == max(0.0, comm - _mac(mt, kt, nt))
    assert step.overhead_cycles == overhead
    assert step.flops == 2 * mt * kt * nt * p * p
    totals = ledger.totals()
    # totals sum records in ledger order: equal up to float rounding of non-integer overheads
    assert totals.align_cycles == pytest.approx(
        (p // 2) * (align.comm_cycles + overhead), rel=1e-12
    )
    expected = (p // 2) * (align.comm_cycles + overhead) + p * (
        max(comm, _mac(mt, kt, nt)) + overhead
    )
    assert totals.latency_cycles == pytest.approx(expected, rel=1e-12)


def test_gemm_t_ledger_equals_the_docstring_closed_form():
    p, mt, kt, nt = 5, 4, 6, 3
    _, ledger = _square("gemm_t", p, mt, kt, nt, mode=Mode.ESTIMATE)  # middle steps: one record
    first, middle, last = ledger.records
    d, overhead = DEVICE, DEVICE.step_overhead_cycles
    chain = (p - 1) * d.hop_latency_cycles + (p - 2) * d.stage_latency_cycles
    mac = _mac(mt, kt, nt)
    assert (first.count, middle.count, last.count) == (1, p - 1, 1)
    assert first.comm_busy_cycles == 2 * d.hop_latency_cycles + _size(nt * kt * S)
    assert first.compute_cycles == mac and first.overhead_cycles == overhead
    # an interior root takes two partials into its ramp while b's tile also arrives; the
    # reduce follows the previous step's stream through the chain: only its size is exposed
    assert middle.comm_busy_cycles == 2 * d.hop_latency_cycles + _size((2 * mt * nt + nt * kt) * S)
    assert middle.critical_hops == 2 and middle.critical_stages == 0
    assert middle.latency_cycles == max(mac, middle.comm_busy_cycles) + overhead
    assert last.comm_cycles == chain + _size(2 * mt * nt * S)
    assert last.critical_hops == p - 1 and last.critical_stages == p - 2


def test_summa_ledger_equals_the_docstring_closed_form_with_direct_routes():
    p, mt, kt, nt = 4, 3, 4, 5
    mesh, ledger = _square("summa", p, mt, kt, nt)
    assert mesh.routes.routes_per_core == 2 * p  # one colour per root and axis: it fits
    prologue, *steps = ledger.records
    size = _size((mt * kt + kt * nt) * S)  # every core takes in one A and one B panel
    far = [max(r, p - 1 - r) for r in range(p)]
    assert prologue.comm_cycles == far[0] * DEVICE.hop_latency_cycles + size
    for s, step in enumerate(steps):
        comm = far[s + 1] * DEVICE.hop_latency_cycles + size if s + 1 < p else 0.0
        assert step.comm_busy_cycles == comm
        assert step.compute_cycles == _mac(mt, kt, nt)
        assert step.critical_stages == 0


def test_summa_ledger_equals_the_docstring_closed_form_with_relayed_broadcasts():
    """P = 20 on a 32-route device: 2P direct routes do not fit, so each axis gets 16 routes:
    segments of 14 cores plus 2 neighbour routes, a relay at every segment boundary a
    stream crosses (beta each); the step pays the slower of the two ways to a line end."""
    p, mt, kt, nt, segment = 20, 2, 3, 2, 14
    mesh, ledger = _square("summa", p, mt, kt, nt)
    assert mesh.routes.routes_per_core == 2 * (segment + 2)
    alpha, beta = DEVICE.hop_latency_cycles, DEVICE.stage_latency_cycles

    def latency(root: int) -> float:
        east = sum(1 for q in range(root + 1, p - 1) if q % segment == 0)  # segment starts
        west = sum(1 for q in range(1, root) if (q + 1) % segment == 0)  # segment ends
        return max((p - 1 - root) * alpha + east * beta, root * alpha + west * beta)

    size = _size((mt * kt + kt * nt) * S)  # one A and one B panel through every core's ramp
    prologue, *steps = ledger.records
    assert prologue.comm_cycles == latency(0) + size
    assert max(r.critical_stages for r in ledger.records) == 1
    for s, step in enumerate(steps):
        comm = latency(s + 1) + size if s + 1 < p else 0.0
        assert step.comm_busy_cycles == pytest.approx(comm, rel=1e-12)
        assert step.compute_cycles == _mac(mt, kt, nt)
        assert step.latency_cycles == pytest.approx(
            max(comm, _mac(mt, kt, nt)) + DEVICE.step_overhead_cycles, rel=1e-12
        )


def test_allgather_ledger_equals_the_docstring_closed_form():
    p, mt, kt, nt = 4, 3, 4, 5
    _, ledger = _square("allgather", p, mt, kt, nt)
    gather, mac = ledger.records
    # every core takes in the P-1 other A tiles and P-1 other B tiles through its ramp
    size = _size((p - 1) * (mt * kt + kt * nt) * S)
    assert gather.comm_cycles == (p - 1) * DEVICE.hop_latency_cycles + size
    assert mac.compute_cycles == _mac(mt, p * kt, nt)


@pytest.mark.parametrize("p", [5, 6])
@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
def test_after_the_skew_core_y_x_holds_a_y_kappa_and_b_kappa_x(p, kind):
    """kappa = ringinv((r(x) + r(y)) mod P): code notes §1.5-1.6."""
    mesh = Mesh(tiny(), p, p)
    index = torch.arange(p, dtype=torch.float32)
    a_host = 100 * index[:, None] + index[None, :]  # A[y, k] = 100 y + k, one element per tile
    a = mesh.scatter(a_host, Layout((p, p), y_dim=0, x_dim=1), "a")
    skewed_a = align_a(mesh, a=a, ledger=Ledger(), kind=kind).out.data[..., 0, 0]
    skewed_b = prealign_b(mesh, a_host.T.contiguous(), kind=kind).data[..., 0, 0]  # B[k, x]
    order, pos = ring_order(p, kind), ring_position(p, kind)
    for y in range(p):
        for x in range(p):
            kappa = int(order[(pos[x] + pos[y]) % p])
            assert skewed_a[y, x] == 100 * y + kappa
            assert skewed_b[y, x] == 100 * x + kappa


def test_the_skew_on_a_logical_grid_places_logical_blocks_as_on_a_square_one():
    grid = LogicalGrid(3, 5)  # L = 15: each core plays 5 x 3 logical cores
    size = grid.size
    mesh = Mesh(tiny(), 3, 5)
    index = torch.arange(size, dtype=torch.float32)
    a_host = 100 * index[:, None] + index[None, :]
    a = mesh.scatter(a_host, Layout((size, size), y_dim=0, x_dim=1), "a")
    ledger = Ledger()
    logical = to_logical(align_a(mesh, a=a, ledger=ledger).out.data, grid)[..., 0, 0]
    order, pos = ring_order(size), ring_position(size)
    for y in range(size):
        for x in range(size):
            assert logical[y, x] == 100 * y + int(order[(pos[x] + pos[y]) % size])
    assert sum(r.count for r in ledger.records) == size // 2


@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
@pytest.mark.parametrize("p", [1, 2, 3, 7, 8])
def test_the_skew_rounds_on_the_device_equal_the_host_skew(kind, p):
    grid = LogicalGrid(p, p)
    mesh = Mesh(tiny(), p, p)
    data = torch.arange(p * p, dtype=torch.float32).reshape(p, p, 1, 1)
    for axis in (Axis.X, Axis.Y):
        moved = data
        for i in range(rings.skew_rounds(p, kind)):
            moved = rings.skew_round(
                mesh, grid, moved, axis=axis, kind=kind, round_index=i, ledger=Ledger(), op="s"
            )
        assert torch.equal(moved, rings.skewed(data, axis=axis, kind=kind))


@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
def test_a_ring_step_moves_every_tile_to_its_ring_successor(kind):
    p = 7
    mesh = Mesh(tiny(), 1, p)
    ledger = Ledger()
    data = torch.arange(p, dtype=torch.float32).reshape(1, p, 1)
    moved = rings.ring_step(
        mesh, LogicalGrid(1, p), data, axis=Axis.X, kind=kind, ledger=ledger, op="s"
    )
    successor = rings.ring_successor(p, kind)
    for i in range(p):
        assert moved[0, successor[i], 0] == i
    hops = 2 if kind is RingKind.INTERLEAVED else p - 1
    assert ledger.records[0].critical_hops == hops


@pytest.mark.parametrize("p", [4, 16, 64, 256, 720])
def test_meshgemm_routes_per_core_stay_constant_as_the_mesh_grows(p):
    mesh, _ = _square("meshgemm", p, 2, 2, 2, device=wse2(), mode=Mode.ESTIMATE)
    assert mesh.routes.routes_per_core == 9  # X forward + X reverse (skew) + Y forward
    mesh, _ = _square("gemm_t", p, 2, 2, 2, device=wse2(), mode=Mode.ESTIMATE)
    assert mesh.routes.routes_per_core == 7  # Y ring + X chain


def test_summa_routes_grow_with_p_until_the_budget_forces_relaying():
    budget = wse2().routes_per_core
    stages, routes = {}, {}
    for p in (4, 8, 10, 16, 64):
        mesh, ledger = _square("summa", p, 2, 2, 2, device=wse2(), mode=Mode.ESTIMATE)
        routes[p] = mesh.routes.routes_per_core
        stages[p] = max(r.critical_stages for r in ledger.records)
    assert routes[4] == 8 and routes[8] == 16 and routes[10] == 20  # a colour per root
    assert stages[4] == stages[8] == stages[10] == 0
    assert routes[16] <= budget and routes[64] <= budget  # relayed between segments
    assert 0 < stages[16] < stages[64]


def test_relayed_multicast_counts_the_relays_a_stream_crosses():
    d = tiny()
    shape = (1, 8)

    def path(root: int, segment: int) -> tuple[int, int]:
        t = relayed_multicast_traffic(d, shape, Axis.X, roots=(root,), segment=segment, nbytes=4)
        return t.critical_hops, t.critical_stages

    assert path(0, 8) == (7, 0)  # direct
    assert path(0, 1) == (7, 6)  # every core in between receives and re-sends
    assert path(0, 3) == (7, 2)  # segments start at 3 and 6
    assert path(4, 3) == (4, 1)  # west: 4 hops through the relay at core 2 beats east's 3
    assert MulticastPlan(Axis.X, 8, 3).routes_per_core == 5
    assert MulticastPlan(Axis.X, 8, 8).routes_per_core == 8


def test_multicast_plan_splits_the_free_routes_between_the_axes():
    mesh = Mesh(wse2(), 30, 30, mode=Mode.ESTIMATE)
    mesh.routes.require("already", 5)
    plans = plan_multicasts(mesh, (Axis.X, Axis.Y), name="t")
    assert plans[Axis.X].segment == plans[Axis.Y].segment == (21 - 5) // 2 - 2
    assert mesh.routes.routes_per_core == 5 + 2 * ((21 - 5) // 2)


@pytest.mark.parametrize(
    ("algo", "tiles"),
    [("meshgemm", 5), ("cannon", 5), ("summa", 7), ("gemm_t", 6)],
)
def test_sram_counts_every_live_buffer(algo, tiles):
    """meshgemm: a, b, their receive buffers, c; summa: a, b, two panels each, c;
    gemm_t: a, b, b's receive buffer, two partials, c (all tiles 4 x 4 here)."""
    mesh, _ = _square(algo, 4, 4, 4, 4)
    assert mesh.sram.peak_bytes == tiles * 16 * S
    assert mesh.sram.live_bytes_max == (3 * 16 * S)  # a, b and c stay


def test_allgather_holds_whole_operand_strips():
    mesh, _ = _square("allgather", 4, 4, 4, 4)
    assert mesh.sram.peak_bytes == (3 * 16 + 2 * 4 * 16) * S


def test_a_2k_allgather_fits_48_kb_per_core_from_450x450_and_is_refused_at_360x360():
    """2K GEMMs: 5-wide tiles on 450x450 (2250 padded), 6-wide on 360x360 (2160). Per core:
    a, b, c and the two strips [t, P*t] and [P*t, t], 2 bytes per f16."""
    s, sram = wse2().storage_bytes, wse2().sram_bytes_per_core
    mesh, _ = _square("allgather", 450, 5, 5, 5, device=wse2(), mode=Mode.ESTIMATE)
    assert mesh.sram.peak_bytes == (3 * 25 + 2 * 5 * 450 * 5) * s == 45_150 <= sram
    with pytest.raises(SramOverflowError, match=str((3 * 36 + 2 * 6 * 360 * 6) * s)):
        _square("allgather", 360, 6, 6, 6, device=wse2(), mode=Mode.ESTIMATE)


def test_a_gemm_that_does_not_fit_names_the_buffer():
    mesh = Mesh(wse2(), 8, 8, mode=Mode.ESTIMATE)
    a = mesh.scatter(torch.empty(640, 640, device="meta"), Layout((640, 640), 0, 1), "a")
    b = prealign_b(mesh, torch.empty(640, 640, device="meta"))
    with pytest.raises(SramOverflowError, match="meshgemm"):
        meshgemm(mesh, a=a, b=b, ledger=Ledger())


GRIDS = [(1, 1), (3, 3), (4, 4), (3, 5), (2, 4), (1, 3)]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("algo", [*sorted(GEMM_KERNELS), "gemm_t"])
def test_estimate_and_functional_ledgers_are_identical(algo, grid):
    def run(mode: Mode):
        mesh = Mesh(tiny(), *grid, mode=mode)
        m, k, n = 9, padded_k(*grid, 11), padded_k(*grid, 7)

        def host(*shape: int) -> torch.Tensor:
            return (
                torch.randn(shape) if mode is Mode.FUNCTIONAL else torch.empty(shape, device="meta")
            )

        a = mesh.scatter(host(m, k), Layout((m, k), y_dim=0, x_dim=1), "a")
        ledger = Ledger()
        if algo == "gemm_t":
            b = mesh.scatter(host(n, k), Layout((n, k), y_dim=0, x_dim=1), "b")
            gemm_t(mesh, a=a, b=b, ledger=ledger)
        else:
            b = store_b_for(mesh, host(k, n), algo=algo)
            GEMM_KERNELS[algo](mesh, a=a, b=b, ledger=ledger)
        return ledger, mesh

    (functional, f_mesh), (estimate, e_mesh) = run(Mode.FUNCTIONAL), run(Mode.ESTIMATE)
    assert functional.expanded() == estimate.expanded()
    assert f_mesh.sram.peak_bytes == e_mesh.sram.peak_bytes
    assert f_mesh.routes.routes_per_core == e_mesh.routes.routes_per_core


def test_estimate_mode_meshgemm_at_full_wafer_scale_is_two_records_and_fast():
    """720 x 720 cores, 8K x 8K x 8K: one skew record and one step record with counts."""
    _square("meshgemm", 8, 2, 2, 2, device=wse2(), mode=Mode.ESTIMATE)  # torch's meta warm-up
    start = time.perf_counter()
    _, ledger = _square("meshgemm", 720, 12, 12, 12, device=wse2(), mode=Mode.ESTIMATE)
    wall_s = time.perf_counter() - start
    assert [(r.tag, r.count) for r in ledger.records] == [("align", 360), ("", 720)]
    assert wall_s < 2.0  # typically ~0.05 s; generous for a shared CI machine
