"""MeshGEMM and Cannon in estimate mode from the tile shapes alone (`gemm._ring_gemm_closed`,
`align_a`'s closed form) charge what the walk on meta tensors charges: every record, the SRAM
peak and what stays live, the routes, and an output of the same shape, dtype and layout."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from waferllm.device import tiny, wse2
from waferllm.kernels.gemm import _ring_gemm, align_a, prealign_b
from waferllm.mesh import Layout, Ledger, Mesh, Mode, RingKind
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tiling import padded_k

DEVICE = dataclasses.replace(tiny(), step_overhead_cycles=5.0)


def _run(grid, m, k, n, *, batch, kind, aligned, skewed_b, stored, walk, device=DEVICE):
    """One ring GEMM on a fresh estimate-mode mesh: (ledger, mesh, output)."""
    mesh = Mesh(device, *grid, mode=Mode.ESTIMATE)
    k = padded_k(*grid, k)
    a_shape = (*batch, m, k)
    nd = len(a_shape)
    a = mesh.scatter(
        torch.empty(a_shape, device="meta"), Layout(a_shape, y_dim=nd - 2, x_dim=nd - 1), "a"
    )
    if skewed_b:
        b = prealign_b(mesh, torch.empty(k, n, device="meta"), name="b", kind=kind, stored=stored)
    else:
        b = mesh.scatter(
            torch.empty(k, n, device="meta"), Layout((k, n), y_dim=0, x_dim=1), "b", stored=stored
        )
    ledger = Ledger()
    if aligned:
        a = align_a(mesh, a=a, ledger=ledger, kind=kind, walk=walk).out
    op = "meshgemm" if kind is RingKind.INTERLEAVED else "cannon"
    out = _ring_gemm(mesh, a=a, b=b, ledger=ledger, op=op, kind=kind, walk=walk).out
    return ledger, mesh, out


GRIDS = [(4, 4), (3, 5), (4, 6), (6, 4), (2, 2), (1, 3), (5, 1)]
SIZES = [(8, 16, 8), (13, 40, 27), (3, 7, 50)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("kind", [RingKind.INTERLEAVED, RingKind.PLAIN])
def test_a_ring_gemm_in_closed_form_charges_what_the_walk_charges(grid, kind):
    compared = 0
    for (m, k, n), batch, aligned, skewed_b, stored in itertools.product(
        SIZES,
        [(), (3,)],
        [False, True],
        [False, True],
        [StoredDtype.FLOAT16, StoredDtype.INT8, StoredDtype.INT4],
    ):
        if aligned and batch:
            continue  # align_a takes A[M_y, K_x]
        runs = [
            _run(
                grid,
                m,
                k,
                n,
                batch=batch,
                kind=kind,
                aligned=aligned,
                skewed_b=skewed_b,
                stored=stored,
                walk=walk,
            )
            for walk in (True, False)
        ]
        (walked, w_mesh, w_out), (closed, c_mesh, c_out) = runs
        assert [repr(r) for r in closed.records] == [repr(r) for r in walked.records]
        assert c_mesh.sram.peak_bytes == w_mesh.sram.peak_bytes
        assert c_mesh.sram.live_bytes_max == w_mesh.sram.live_bytes_max
        assert c_mesh.routes.routes_per_core == w_mesh.routes.routes_per_core
        assert c_out.data.shape == w_out.data.shape and c_out.data.dtype == w_out.data.dtype
        assert (c_out.layout, c_out.name, c_out.sram_key) == (
            w_out.layout,
            w_out.name,
            w_out.sram_key,
        )
        compared += len(walked.records)
    assert compared > 100


def test_a_prefill_sized_gemm_in_closed_form_charges_what_the_walk_charges_on_wse2():
    for grid in [(420, 420), (360, 480)]:
        kwargs = dict(batch=(), kind=RingKind.INTERLEAVED, skewed_b=True, device=wse2())
        walked, w_mesh, _ = _run(
            grid, 2000, 4096, 14336, aligned=True, stored=StoredDtype.FLOAT16, walk=True, **kwargs
        )
        closed, c_mesh, _ = _run(
            grid, 2000, 4096, 14336, aligned=True, stored=StoredDtype.FLOAT16, walk=False, **kwargs
        )
        assert [repr(r) for r in closed.records] == [repr(r) for r in walked.records]
        assert c_mesh.sram.peak_bytes == w_mesh.sram.peak_bytes
