"""MeshGEMM (paper §5) and the Cannon baseline: Cannon's compute-shift loop on a ring.

`meshgemm` runs it on the interleaved ring (neighbours at most 2 hops apart), `cannon` on the
plain ring with its wrap-around link; both take `fn(mesh, *, a, b, ledger, op=...) ->
KernelResult` (dense oracles in `reference.py`). `prealign_b` stores weights pre-skewed
(untimed, as the public code does on the host), `align_a` skews activations on the device once
for several GEMMs. dist-GEMM-T is in `gemm_t.py`, the broadcast baselines in `gemm_bcast.py`.
Legend: M, K, N the GEMM dims; Mt, Kt, Nt one core's tile; P cores per side; s storage bytes
per element; F flops/cycle, S SRAM bytes/cycle, W link (= ramp) bytes/cycle of a core;
alpha per hop, beta per stage; mesh axes X (columns), Y (rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.dequant import dequant_scratch_bytes
from waferllm.kernels.operands import (
    accumulator,
    batch_shape,
    batch_tiles,
    check_operand,
    finish,
    pad_bytes,
    ring_grid,
    scratch,
    tile_numel,
)
from waferllm.kernels.result import Charged, KernelResult
from waferllm.kernels.ring_charges import charge_ring_steps, charge_skew
from waferllm.kernels.ring_sum import ring_products_sum
from waferllm.mesh import rings
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis, RingKind
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import LogicalGrid, from_blocks, pad_last2, to_blocks, to_logical
from waferllm.mesh.virtual import Mesh, Mode

# Layout tags of operands already skewed for a ring kernel (Layout.tag).
A_ALIGNED = {RingKind.INTERLEAVED: "meshgemm_a_aligned", RingKind.PLAIN: "cannon_a_aligned"}
B_ALIGNED = {RingKind.INTERLEAVED: "meshgemm_b_aligned", RingKind.PLAIN: "cannon_b_aligned"}
RING_ALGO = {RingKind.INTERLEAVED: "meshgemm", RingKind.PLAIN: "cannon"}


# ---- weights and activations skewed for the ring kernels --------------------------------------
def prealign_b(
    mesh: Mesh,
    host_b: torch.Tensor,
    *,
    name: str = "b",
    kind: RingKind = RingKind.INTERLEAVED,
    stored: StoredDtype = StoredDtype.FLOAT16,
    dtype: torch.dtype | None = None,
) -> DistTensor:
    """Store weights B[K, N] pre-skewed for MeshGEMM (or Cannon with `kind=PLAIN`), untimed.

    Core (y, x) of the (logical) grid gets B[kappa, x] with
    kappa = ringinv((r(x) + r(y)) mod P): column x rotated back by r(x) ring positions, what
    the public code does on the host when it loads weights (code notes §1.6). In estimate mode
    `host_b` may be a meta tensor: only its shape is used. `stored`: how the tiles are kept
    (compressed weights: codes and scales, `mesh.storage`); `dtype`: the functional tiles'
    dtype (`Mesh.scatter`).
    """
    grid = ring_grid(mesh, RING_ALGO[kind])
    nd = host_b.dim()
    if nd < 2:
        raise WaferError(f"prealign_b: B must have at least two dims, got shape {host_b.shape}")
    layout = Layout(tuple(host_b.shape), y_dim=nd - 2, x_dim=nd - 1)
    plain = mesh.scatter(host_b, layout, name, stored=stored, dtype=dtype)
    logical = to_logical(pad_last2(plain.data, 1, grid.per_col), grid)
    aligned = rings.skewed(logical, axis=Axis.Y, kind=kind)
    plain.free()
    data = from_blocks(to_blocks(aligned, grid), grid)
    return mesh.register(data, layout.with_tag(B_ALIGNED[kind]), name, stored=stored)


def align_a(
    mesh: Mesh,
    *,
    a: DistTensor,
    ledger: Ledger,
    kind: RingKind = RingKind.INTERLEAVED,
    op: str = "align_a",
    walk: bool = False,
) -> KernelResult:
    """Skew activations A[M_y, K_x] on the device once, so several MeshGEMMs can reuse them
    (Q, K and V from one normed input): a ring GEMM returns A to its skewed place after its
    P steps. Costs floor(P/2) rounds of (2*alpha + Mt*Kt*s/W + step_overhead), tag "align".
    Estimate mode charges it from the tile shapes alone unless `walk` (the oracle: the same
    records and SRAM, tests/kernels/test_gemm_closed_form.py)."""
    check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    grid = ring_grid(mesh, RING_ALGO[kind])
    if a.data.shape[-1] % grid.per_col:
        raise WaferError(
            f"{op}: on a {mesh.rows}x{mesh.cols} mesh K must be padded to a multiple of "
            f"{grid.size} (tiling.padded_k); A's K tiles hold {a.data.shape[-1]}"
        )
    closed = mesh.mode is Mode.ESTIMATE and not walk
    with Charged(ledger) as charged, ledger.scope(op), mesh.sram.scope():
        if closed:  # the walk's shapes without its tensors (estimate mode)
            rows, cols, *tile = a.data.shape
            tile[-2] = -(-tile[-2] // grid.per_row) * grid.per_row
            scratch(mesh, f"{op}.a_recv", tuple(tile))  # the skew's double buffer
            a_l = _logical_shape(tile, grid)
            charge_skew(mesh, grid, kind, ledger, a=a_l, b=None, closed=True)
            data = meta_empty((rows, cols, *tile), a.data.dtype)
        else:
            padded = pad_last2(a.data, grid.per_row, 1)
            scratch(mesh, f"{op}.a_recv", padded)  # the skew's double buffer
            logical, _ = _skew(mesh, grid, kind, ledger, a=to_logical(padded, grid), b=None)
    if not closed:
        assert logical is not None
        data = from_blocks(to_blocks(logical, grid), grid)
    layout = a.layout.with_tag(A_ALIGNED[kind])
    if data.shape == a.data.shape:
        return KernelResult(out=a.replace(data, layout), records=charged.records)
    a.free()
    return KernelResult(out=mesh.register(data, layout, a.name), records=charged.records)


def _skew(
    mesh: Mesh,
    grid: LogicalGrid,
    kind: RingKind,
    ledger: Ledger,
    *,
    a: torch.Tensor | None,
    b: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Cannon's skew on the device, timed and tagged "align": A's rows along X, B's columns
    along Y (whichever is given), concurrently, floor(L/2) identical rounds."""
    if a is None and b is None:
        return a, b
    charge_skew(mesh, grid, kind, ledger, a=a, b=b)
    a = None if a is None else rings.skew_moved(a, axis=Axis.X, kind=kind)
    b = None if b is None else rings.skew_moved(b, axis=Axis.Y, kind=kind)
    return a, b


def _logical_shape(tile: Sequence[int], grid: LogicalGrid) -> torch.Size:
    """`to_logical`'s shape for physical tiles `tile` (*t, a*p, b*q): (L, L, *t, p, q)."""
    *batch, ap, bq = tile
    return torch.Size((grid.size, grid.size, *batch, ap // grid.per_row, bq // grid.per_col))


# ---- Cannon on a ring: MeshGEMM and the Cannon baseline ---------------------------------------
def _check_ring_operands(
    mesh: Mesh, grid: LogicalGrid, a: DistTensor, b: DistTensor, *, op: str, kind: RingKind
) -> None:
    check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={"", A_ALIGNED[kind]})
    check_operand(mesh, b, op=op, role="B", dims="B[K_y, N_x]", tags={"", B_ALIGNED[kind]})
    if a.layout.shape[-1] != b.layout.shape[-2]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    k_a, k_b = a.data.shape[-1] * mesh.cols, b.data.shape[-2] * mesh.rows
    if k_a != k_b:
        raise WaferError(
            f"{op} on a {mesh.rows}x{mesh.cols} mesh runs a logical {grid.size}x{grid.size} "
            f"grid: A's K tiles cover {k_a} and B's cover {k_b}; pad K to a multiple of "
            f"{grid.size} (tiling.padded_k) before scattering A and B"
        )


def _ring_gemm(
    mesh: Mesh,
    *,
    a: DistTensor,
    b: DistTensor,
    ledger: Ledger,
    op: str,
    kind: RingKind,
    walk: bool = False,
) -> KernelResult:
    """Cannon's compute-shift loop on the `kind` ring of the (logical) grid; in estimate mode
    charged from the tile shapes alone (`_ring_gemm_closed`) unless `walk`."""
    grid = ring_grid(mesh, op)
    _check_ring_operands(mesh, grid, a, b, op=op, kind=kind)
    batch = batch_shape(op, a, b)
    m, n = a.layout.shape[-2], b.layout.shape[-1]
    mt, nt = -(-m // mesh.rows), -(-n // mesh.cols)
    out_layout = Layout((*batch, m, n), y_dim=len(batch), x_dim=len(batch) + 1)
    if mesh.mode is Mode.ESTIMATE and not walk:
        return _ring_gemm_closed(
            mesh, grid, a=a, b=b, ledger=ledger, op=op, kind=kind, out_layout=out_layout
        )
    with Charged(ledger) as charged, ledger.scope(op):
        out_key = mesh.sram.alloc(
            f"{op}.c", math.prod((*batch, mt, nt)) * mesh.device.storage_bytes
        )
        with mesh.sram.scope():
            a_pad = pad_last2(batch_tiles(a, len(batch)), grid.per_row, 1)  # a_tile: [a*mL, Kt]
            b_pad = pad_last2(batch_tiles(b, len(batch)), 1, grid.per_col)  # b_tile: [Kt', b*nL]
            pad_bytes(mesh, f"{op}.a_pad", tile_numel(a_pad), tile_numel(a.data))
            scratch(mesh, f"{op}.a_recv", a_pad)  # double buffers: shifts land here
            _b_buffers(mesh, b, tuple(b_pad.shape[2:]), op)
            a_l, b_l = _skew(
                mesh,
                grid,
                kind,
                ledger,
                a=None if a.layout.tag else to_logical(a_pad, grid),
                b=None if b.layout.tag else to_logical(b_pad, grid),
            )
            a_l = to_logical(a_pad, grid) if a_l is None else a_l
            b_l = to_logical(b_pad, grid) if b_l is None else b_l
            a_blocks, b_blocks = to_blocks(a_l, grid), to_blocks(b_l, grid)
            lead = np.broadcast_shapes(a_blocks.shape[:-2], b_blocks.shape[:-2])
            c_shape = (*lead, a_blocks.shape[-2], b_blocks.shape[-1])
            pad_bytes(mesh, f"{op}.c_pad", math.prod(c_shape[2:]), math.prod((*batch, mt, nt)))
            # the loop's numbers in a few batched ops (ring_sum); the loop below charges it
            c_l = accumulator(mesh, (grid.size, grid.size, *lead[4:], *c_shape[-2:]))
            c_blocks = to_blocks(
                ring_products_sum(mesh, grid=grid, a_l=a_l, b_l=b_l, acc=c_l, kind=kind), grid
            )
            b_kt, b_nt = b_pad.shape[-2:]
            charge_ring_steps(
                mesh,
                grid,
                kind,
                ledger,
                a_l=a_l,
                b_l=b_l,
                b=b,
                a_blocks=a_blocks.shape,
                b_kt=b_kt,
                b_nt=b_nt,
            )
    c = from_blocks(c_blocks, grid)[..., :mt, :nt]
    return KernelResult(
        out=finish(mesh, c, out_layout, f"{op}.c", out_key), records=charged.records
    )


def _ring_gemm_closed(
    mesh: Mesh,
    grid: LogicalGrid,
    *,
    a: DistTensor,
    b: DistTensor,
    ledger: Ledger,
    op: str,
    kind: RingKind,
    out_layout: Layout,
) -> KernelResult:
    """`_ring_gemm` in estimate mode without its tensors: the same SRAM buffers and charges
    in the same order, from the tiles' shapes (batch dims as `batch_tiles` inserts them, the
    padding of `pad_last2`, the logical blocks of `to_logical` and `to_blocks`), and a meta
    output of the walk's shape. tests/kernels/test_gemm_closed_form.py compares it with the
    walk record for record."""
    nb = len(out_layout.shape) - 2
    rows, cols = mesh.shape
    mt, nt = out_layout.shape[-2], out_layout.shape[-1]
    mt, nt = -(-mt // rows), -(-nt // cols)
    a_tile, b_tile = [_batch_tile(t, nb) for t in (a, b)]
    a_pad = (*a_tile[:-2], -(-a_tile[-2] // grid.per_row) * grid.per_row, a_tile[-1])
    b_pad = (*b_tile[:-1], -(-b_tile[-1] // grid.per_col) * grid.per_col)
    a_l, b_l = _logical_shape(a_pad, grid), _logical_shape(b_pad, grid)
    blocks = (rows, cols, grid.per_row, grid.per_col)
    lead = np.broadcast_shapes((*blocks, *a_l[2:-2]), (*blocks, *b_l[2:-2]))
    sb = mesh.device.storage_bytes
    with Charged(ledger) as charged, ledger.scope(op):
        out_key = mesh.sram.alloc(f"{op}.c", math.prod(out_layout.shape[:-2]) * mt * nt * sb)
        with mesh.sram.scope():
            pad_bytes(mesh, f"{op}.a_pad", math.prod(a_pad), tile_numel(a.data))
            scratch(mesh, f"{op}.a_recv", a_pad)  # double buffers: shifts land here
            _b_buffers(mesh, b, b_pad, op)
            charge_skew(
                mesh,
                grid,
                kind,
                ledger,
                a=None if a.layout.tag else a_l,
                b=None if b.layout.tag else b_l,
                closed=True,
            )
            c_block = math.prod((*lead[2:], a_l[-2], b_l[-1]))
            pad_bytes(mesh, f"{op}.c_pad", c_block, math.prod(out_layout.shape[:-2]) * mt * nt)
            a_blocks = torch.Size((*blocks, *a_l[2:]))
            charge_ring_steps(
                mesh,
                grid,
                kind,
                ledger,
                a_l=a_l,
                b_l=b_l,
                b=b,
                a_blocks=a_blocks,
                b_kt=b_pad[-2],
                b_nt=b_pad[-1],
                closed=True,
            )
    c = meta_empty((rows, cols, *lead[4:], mt, nt), mesh.compute_dtype)
    return KernelResult(
        out=finish(mesh, c, out_layout, f"{op}.c", out_key), records=charged.records
    )


def _batch_tile(t: DistTensor, num_batch: int) -> tuple[int, ...]:
    """`batch_tiles(t, num_batch)`'s tile shape: size-1 batch dims before t's tile."""
    tile = tuple(t.data.shape[2:])
    return (*([1] * (num_batch + 2 - len(tile))), *tile)


def _b_buffers(mesh: Mesh, b: DistTensor, b_pad: tuple[int, ...], op: str) -> None:
    """B's local padding and receive buffer (`b_pad`: its padded tile) in its stored format
    (compressed weights travel as codes and scales), and the float16 chunk a compressed B
    expands into each step."""
    if not b.stored.compressed:
        pad_bytes(mesh, f"{op}.b_pad", math.prod(b_pad), tile_numel(b.data))
        scratch(mesh, f"{op}.b_recv", b_pad)
        return
    sb = mesh.device.storage_bytes
    padded = tile_stored_bytes(b.stored, b_pad, sb)
    if padded > b.tile_bytes:
        mesh.sram.alloc(f"{op}.b_pad", padded - b.tile_bytes)
    mesh.sram.alloc(f"{op}.b_recv", padded)
    kt, nt = b_pad[-2:]
    mesh.sram.alloc(
        f"{op}.dequant_chunk", dequant_scratch_bytes(b.stored, reduced=kt, other=nt, sb=sb)
    )


def meshgemm(
    mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger, op: str = "meshgemm"
) -> KernelResult:
    """MeshGEMM (paper §5): Cannon on the interleaved ring.

    Sharding: A[M_y, K_x] @ B[K_y, N_x] -> C[M_y, N_x]; tiles a [Mt, Kt], b [Kt, Nt],
    c [Mt, Nt] (+ leading batch dims). On an R x C mesh it runs the logical L x L grid,
    L = lcm(R, C) <= 4*max(R, C) (tiling.py), each core playing (L/R)*(L/C) logical cores.
    Schedule: A is skewed on the device (timed, tag "align") unless `align_a` already did;
    B is stored skewed by `prealign_b` (weights, untimed) or skewed on the device alongside A.
    The skew runs floor(P/2) identical rounds, every row (column) rotating the shorter way
    round, as the public code does (code notes §1.5). Then P steps of {c += a @ b; shift a one
    ring position along X and b along Y}, communication overlapped with the multiply; the P-th
    shift brings A and B back to their skewed places (reusable weights).
    Cost on a P x P mesh (interleaved neighbours 2 hops apart, 1 when P = 2):
      align: floor(P/2) * (2*alpha + Mt*Kt*s/W + overhead)      [both: (Mt*Kt + Kt*Nt)*s/W]
      steps: P * (max(Kt*Nt * max(floor, 2*Mt/F, 3*Mt*s/S),
                      2*alpha + (Mt*Kt + Kt*Nt)*s/W) + overhead)   [both tiles leave one ramp]
    Routes: 3 per ring direction, X forward, X reverse (skew), Y forward: 9 (12 with B
    skewed on the device, which adds Y reverse), whatever P.
    SRAM: a, b and their receive buffers, c.
    Compressed B (`b.stored` int8/int4): b travels and waits in its stored size (codes and
    scales, `mesh.storage`) and each step adds `kernels.dequant.dequant_cycles(Kt, Nt)` to the
    multiply, with a float16 chunk of min(Kt, 32) x Nt.
    """
    return _ring_gemm(mesh, a=a, b=b, ledger=ledger, op=op, kind=RingKind.INTERLEAVED)


def cannon(
    mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger, op: str = "cannon"
) -> KernelResult:
    """Cannon's algorithm on the plain ring with the wrap-around link (baseline).

    Sharding, schedule and SRAM as `meshgemm`, ring order 0, 1, ..., P-1: the skew rotates row
    y back by y (the shorter way) and every shift's wrap-around message crosses the line.
    Cost on a P x P mesh:
      align: floor(P/2) * ((P-1)*alpha + Mt*Kt*s/W + overhead)
      steps: P * (max(Kt*Nt * max(floor, 2*Mt/F, 3*Mt*s/S),
                      (P-1)*alpha + (Mt*Kt + Kt*Nt)*s/W) + overhead)
    Routes: 3 per ring direction (send, receive, the wrap-around's transit): 9, O(1).
    """
    return _ring_gemm(mesh, a=a, b=b, ledger=ledger, op=op, kind=RingKind.PLAIN)
