"""The GEMM baselines that broadcast: SUMMA (Cerebras' default) and allgather-GEMM.

Both take `fn(mesh, *, a, b, ledger, op=...) -> KernelResult` like `gemm.meshgemm`; their
multicasts from many roots are routed under the route budget by `mesh/relay.py`.
Legend: M, K, N the GEMM dims; Mt, Kt, Nt one core's tile; P cores per side; s storage bytes
per element; F flops/cycle, S SRAM bytes/cycle, W link (= ramp) bytes/cycle of a core;
alpha per hop, beta per stage; mesh axes X (columns), Y (rows).
"""

from __future__ import annotations

import math

import torch

from waferllm.errors import WaferError
from waferllm.kernels.operands import (
    accumulator,
    batch_shape,
    batch_tiles,
    check_operand,
    finish,
    scratch,
)
from waferllm.kernels.result import Charged, KernelResult
from waferllm.mesh.compute import matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.relay import allgather, cross_multicast, plan_multicasts
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh


def _panels(k_a_tile: int, k_b_tile: int, rows: int, cols: int) -> list[tuple[int, int]]:
    """K ranges [k0, k1) each held by one column of A and one row of B: the cuts of both
    tilings, up to the shorter padded K (beyond it both hold zeros)."""
    end = min(cols * k_a_tile, rows * k_b_tile)
    cuts = {x * k_a_tile for x in range(cols)} | {y * k_b_tile for y in range(rows)}
    bounds = sorted(c for c in cuts if c < end) + [end]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def summa(
    mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger, op: str = "summa"
) -> KernelResult:
    """SUMMA (Cerebras' default GEMM; baseline).

    Sharding: A[M_y, K_x] @ B[K_y, N_x] -> C[M_y, N_x]; any R x C mesh. Schedule: for each K
    panel (one tile on a square mesh, P panels; the cuts of both tilings otherwise) the column
    owning it multicasts its A panel along X and the row owning it its B panel along Y, then
    every core does c += a_panel @ b_panel; panel s+1's multicasts overlap panel s's multiply
    (double-buffered), panel 0's are exposed. Each step's roots differ, so a direct multicast
    needs a colour per root: R + C routes per core. When they do not fit beside the routes
    already configured, each axis relays between segments of s cores (relay.py).
    Cost on a P x P mesh, per step with root r (d = max(r, P-1-r)):
      max(Kt*Nt * max(floor, 2*Mt/F, 3*Mt*s/S),
          d*alpha + stages(r, s)*beta + (Mt*Kt + Kt*Nt)*s/W) + overhead
    Routes: P per axis direct, s + 2 relayed. SRAM: a, b, two A and two B panels, c.
    """
    check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    check_operand(mesh, b, op=op, role="B", dims="B[K_y, N_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-2]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    batch = batch_shape(op, a, b)
    k_a, k_b = a.data.shape[-1], b.data.shape[-2]
    a_data, b_data = batch_tiles(a, len(batch)), batch_tiles(b, len(batch))
    panels = _panels(k_a, k_b, mesh.rows, mesh.cols)
    width = max(k1 - k0 for k0, k1 in panels)
    mt, nt = a.data.shape[-2], b.data.shape[-1]
    out_layout = Layout(
        (*batch, a.layout.shape[-2], b.layout.shape[-1]), y_dim=len(batch), x_dim=len(batch) + 1
    )

    def fetch(k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_panel = a_data[..., k0 % k_a : k0 % k_a + k1 - k0]  # a_panel: [Mt, w]
        b_panel = b_data[..., k0 % k_b : k0 % k_b + k1 - k0, :]  # b_panel: [w, Nt]
        roots = (k0 // k_a, k0 // k_b)
        return cross_multicast(
            mesh, a_panel, b_panel, plans=plans, roots=roots, ledger=ledger, op="bcast"
        )

    with Charged(ledger) as charged, ledger.scope(op):
        plans = plan_multicasts(mesh, (Axis.X, Axis.Y), name=f"{op}_bcast")
        out_key = mesh.sram.alloc(
            f"{op}.c", math.prod((*batch, mt, nt)) * mesh.device.storage_bytes
        )
        with mesh.sram.scope():
            a_batch, b_batch = a_data.shape[2:-2], b_data.shape[2:-2]
            scratch(mesh, f"{op}.a_panels", (2, *a_batch, mt, width))
            scratch(mesh, f"{op}.b_panels", (2, *b_batch, width, nt))
            acc = accumulator(mesh, (mesh.rows, mesh.cols, *batch, mt, nt))
            with ledger.overlap("bcast"):
                current = fetch(*panels[0])
            for s in range(len(panels)):
                with ledger.overlap("step", step_overhead_cycles=mesh.device.step_overhead_cycles):
                    acc.add_(matmul(mesh, a=current[0], b=current[1], ledger=ledger, op="mac"))
                    if s + 1 < len(panels):
                        current = fetch(*panels[s + 1])
    return KernelResult(
        out=finish(mesh, acc, out_layout, f"{op}.c", out_key), records=charged.records
    )


def allgather_gemm(
    mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger, op: str = "allgather"
) -> KernelResult:
    """Allgather-GEMM (baseline): gather whole operand strips, then one local multiply.

    Sharding: A[M_y, K_x] @ B[K_y, N_x] -> C[M_y, N_x]; any R x C mesh. Schedule: every core
    multicasts its A tile along X and its B tile along Y at once (all roots concurrently, the
    two axes overlapped), so each core holds A[y, :] ([Mt, K]) and B[:, x] ([K, Nt]); then
    c = a_strip @ b_strip. Direct multicasts need a colour per root (R + C routes per core);
    beyond the budget each axis relays between segments (relay.py).
    Cost on a P x P mesh: (P-1)*alpha + stages(s)*beta + (P-1)*(Mt*Kt + Kt*Nt)*s/W (every
    other tile enters each core's ramp), then K*Nt * max(floor, 2*Mt/F, 3*Mt*s/S).
    Routes: P per axis direct, s + 2 relayed. SRAM: a, b, the two strips, c: O(K) per core,
    which is why it stops fitting first.
    """
    check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    check_operand(mesh, b, op=op, role="B", dims="B[K_y, N_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-2]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    batch = batch_shape(op, a, b)
    mt, nt = a.data.shape[-2], b.data.shape[-1]
    k_common = min(a.data.shape[-1] * mesh.cols, b.data.shape[-2] * mesh.rows)
    out_layout = Layout(
        (*batch, a.layout.shape[-2], b.layout.shape[-1]), y_dim=len(batch), x_dim=len(batch) + 1
    )
    with Charged(ledger) as charged, ledger.scope(op):
        plans = plan_multicasts(mesh, (Axis.X, Axis.Y), name=f"{op}_bcast")
        out_key = mesh.sram.alloc(
            f"{op}.c", math.prod((*batch, mt, nt)) * mesh.device.storage_bytes
        )
        with mesh.sram.scope():
            with ledger.overlap("allgather"):
                a_data, b_data = batch_tiles(a, len(batch)), batch_tiles(b, len(batch))
                a_strip = allgather(mesh, a_data, plan=plans[Axis.X], ledger=ledger, op="a")
                b_strip = allgather(mesh, b_data, plan=plans[Axis.Y], ledger=ledger, op="b")
            scratch(mesh, f"{op}.a_strip", a_strip)
            scratch(mesh, f"{op}.b_strip", b_strip)
            # a_strip: [Mt, K], b_strip: [K, Nt]; beyond the shorter padded K both hold zeros
            c = matmul(
                mesh,
                a=a_strip[..., :k_common],
                b=b_strip[..., :k_common, :],
                ledger=ledger,
                op="mac",
            )
    return KernelResult(
        out=finish(mesh, c, out_layout, f"{op}.c", out_key), records=charged.records
    )
