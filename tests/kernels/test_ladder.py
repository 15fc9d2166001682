"""Ladder on the mesh (kernels/ladder.py): dense-reference numerics and the closed forms
(3)-(4) of reference/t10-ladder-baselines.md §5 on the pinned test device."""

from __future__ import annotations

import pytest
import torch
from helpers.baselines import ALPHA, LINK
from helpers.baselines import pinned_device as device

from waferllm.kernels.ladder import gemm_tiles, ladder_gemm, ladder_gemv
from waferllm.mesh import Layout, Ledger, Mesh
from waferllm.mesh.compute import matmul_cycles

KB48 = 48 * 1024


def small_sram(**overrides: float):
    return device(**overrides, sram_bytes_per_core=KB48)


def scatter(mesh: Mesh, host: torch.Tensor, name: str, **dims: int):
    return mesh.scatter(host, Layout(tuple(host.shape), **dims), name)


def test_tiles_follow_the_48_kb_rule():
    """A 128x128 f16 C tile is 32 KB; the 16 KB left hold double-buffered A and B chunks of
    t_k = 16 (2 * 256 * 16 * 2 bytes)."""
    tiles = gemm_tiles(Mesh(small_sram(), 4, 4), m=1024, k=4096, n=512)
    assert (tiles.t_m, tiles.t_n, tiles.t_k, tiles.num_active) == (128, 128, 16, 32)


@pytest.mark.parametrize("shape", [(2, 2), (4, 4), (3, 5), (6, 2)])
def test_ladder_gemm_matches_the_dense_product(shape):
    torch.manual_seed(0)
    mesh = Mesh(small_sram(), *shape)
    a_host, b_host = torch.randn(300, 70), torch.randn(70, 130)
    a = scatter(mesh, a_host, "a", y_dim=0, x_dim=1)
    b = scatter(mesh, b_host, "b", y_dim=0, x_dim=1)
    out = ladder_gemm(mesh, a=a, b=b, ledger=Ledger()).out
    torch.testing.assert_close(mesh.gather(out), a_host @ b_host, rtol=1e-4, atol=1e-4)


def test_ladder_gemm_follows_closed_form_three():
    """4x4 region (N_c = 16), M = N = 128, K = 64: one tile, one wave, t_k = 16, 4 chunks.
    Per chunk, the next chunk's loads overlap this chunk's multiply (double buffers): two
    streams through S = 16 cores (15*alpha + chunk/W, chunks of 128*16*2 = 4096 bytes; one
    active core's collective needs 3 routes, within budget: no relay) and T_mm(128, 16, 128).
    Store: core 0 owns the tile's first element already (no flow). SRAM: 48 KB free beside
    A's and B's 1 KB tiles."""
    mesh = Mesh(device(sram_bytes_per_core=KB48 + 2048), 4, 4)
    a = scatter(mesh, torch.ones(128, 64), "a", y_dim=0, x_dim=1)
    b = scatter(mesh, torch.ones(64, 128), "b", y_dim=0, x_dim=1)
    ledger = Ledger()
    ladder_gemm(mesh, a=a, b=b, ledger=ledger)
    chain = 15 * ALPHA + 4096 / LINK
    mac = matmul_cycles(mesh.device, m=128, k=16, n=128)
    assert ledger.totals().latency_cycles == 4 * max(2 * chain, mac)


def test_ladder_gemm_slows_down_as_the_region_grows():
    def latency(p: int) -> float:
        mesh = Mesh(small_sram(), p, p)
        a = scatter(mesh, torch.ones(256, 64), "a", y_dim=0, x_dim=1)
        b = scatter(mesh, torch.ones(64, 256), "b", y_dim=0, x_dim=1)
        ledger = Ledger()
        ladder_gemm(mesh, a=a, b=b, ledger=ledger)
        return ledger.totals().latency_cycles

    assert latency(4) < latency(8) < latency(16)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (4, 4)])
def test_ladder_gemv_matches_the_dense_product(shape):
    torch.manual_seed(2)
    mesh = Mesh(small_sram(), *shape)
    x_host, w_host = torch.randn(1, 50), torch.randn(50, 200)
    x = scatter(mesh, x_host, "x", x_dim=1)
    w = scatter(mesh, w_host, "w", y_dim=0, x_dim=1)
    out = ladder_gemv(mesh, x=x, w=w, ledger=Ledger()).out
    torch.testing.assert_close(mesh.gather(out), x_host @ w_host, rtol=1e-4, atol=1e-4)


def test_ladder_gemv_follows_closed_form_four():
    """One row of 8 cores; K = 32, N = 64: one active core (n_b = 64), 2 chunks of t_k = 16.
    Per chunk: a stream through S = 8 cores with (1 + 64)*16*2 = 2080 bytes (one collective:
    no relay) overlapped with T_mv = 16 instructions of length 64: max(10, 16, 32) = 32 each."""
    mesh = Mesh(small_sram(), 1, 8)
    x = scatter(mesh, torch.ones(1, 32), "x", x_dim=1)
    w = scatter(mesh, torch.ones(32, 64), "w", y_dim=0, x_dim=1)
    ledger = Ledger()
    ladder_gemv(mesh, x=x, w=w, ledger=ledger)
    chain = 7 * ALPHA + 2080 / LINK
    assert ledger.totals().latency_cycles == 2 * max(chain, 16 * 32)
