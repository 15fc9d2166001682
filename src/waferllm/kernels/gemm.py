"""Distributed GEMM on the virtual mesh: MeshGEMM (paper §5) and dist-GEMM-T, with the Cannon,
SUMMA and allgather-GEMM baselines, side by side with one signature
`fn(mesh, *, a, b, ledger, op=...) -> KernelResult` (dense oracles in `reference.py`).

Operands are split by their last two dims, the first over rows (Y) and the second over columns
(X); leading dims are a batch every core holds whole (heads). Sizes that do not divide the grid
are zero-padded: padding is stored, moved and multiplied like data. `GEMM_KERNELS` maps the
CLI's names to functions; `load_weights` stores B the way each kernel expects its weights.
Legend: M, K, N the GEMM dims; Mt, Kt, Nt one core's tile; P cores per side; s storage bytes
per element; F flops/cycle, S SRAM bytes/cycle, W link (= ramp) bytes/cycle of a core;
alpha per hop, beta per stage; mesh axes X (columns), Y (rows).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.result import Charged, KernelResult
from waferllm.mesh import rings
from waferllm.mesh.comm import ReduceAlgorithm, reduce
from waferllm.mesh.compute import charge_matmul, elementwise, matmul, matmul_values
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis, RingKind, ring_order, ring_position
from waferllm.mesh.relay import allgather, cross_multicast, plan_multicasts
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import (
    LogicalGrid,
    from_blocks,
    logical_grid,
    pad_last2,
    to_blocks,
    to_logical,
)
from waferllm.mesh.virtual import Mesh, Mode

GemmKernel = Callable[..., KernelResult]

# Layout tags of operands already skewed for a ring kernel (Layout.tag).
A_ALIGNED = {RingKind.INTERLEAVED: "meshgemm_a_aligned", RingKind.PLAIN: "cannon_a_aligned"}
B_ALIGNED = {RingKind.INTERLEAVED: "meshgemm_b_aligned", RingKind.PLAIN: "cannon_b_aligned"}
RING_ALGO = {RingKind.INTERLEAVED: "meshgemm", RingKind.PLAIN: "cannon"}


# ---- shared checks and buffers -----------------------------------------------------------------
def _check_operand(mesh: Mesh, t: DistTensor, *, op: str, role: str, dims: str, tags: set[str]):
    """`t` must live on `mesh`, split its last two dims over (Y, X), and carry one of `tags`."""
    nd = len(t.layout.shape)
    if t.mesh is not mesh:
        raise WaferError(f"{op}: operand {role} lives on {t.mesh!r}, not on {mesh!r}")
    if nd < 2 or (t.layout.y_dim, t.layout.x_dim) != (nd - 2, nd - 1):
        raise WaferError(
            f"{op}: operand {role} must be {dims}: its last two dims split over rows (Y) and "
            f"columns (X); got shape {t.layout.shape} with y_dim={t.layout.y_dim}, "
            f"x_dim={t.layout.x_dim}"
        )
    if t.layout.tag not in tags:
        raise WaferError(
            f"{op}: operand {role} has layout tag {t.layout.tag!r}; expected one of "
            f"{sorted(tags)} (weights for a ring kernel come from prealign_b or load_weights)"
        )


def _batch(op: str, a: DistTensor, b: DistTensor) -> tuple[int, ...]:
    try:
        # numpy's, not torch's: torch.broadcast_shapes imports sympy on first use (~2 s)
        return tuple(int(d) for d in np.broadcast_shapes(a.layout.shape[:-2], b.layout.shape[:-2]))
    except ValueError:
        raise WaferError(
            f"{op}: batch dims {a.layout.shape[:-2]} and {b.layout.shape[:-2]} do not broadcast"
        ) from None


def _tiles(t: DistTensor, num_batch: int) -> torch.Tensor:
    """t's per-core tiles with size-1 batch dims inserted after the mesh dims, so that batch
    dims broadcast against the other operand's and never against the mesh dims."""
    rows, cols, *tile = t.data.shape
    return t.data.reshape(rows, cols, *([1] * (num_batch + 2 - len(tile))), *tile)


def _grid(mesh: Mesh, op: str) -> LogicalGrid:
    return logical_grid(
        mesh.rows,
        mesh.cols,
        algo=op,
        max_rows=mesh.device.mesh_rows,
        max_cols=mesh.device.mesh_cols,
    )


def _accumulator(mesh: Mesh, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros for a running sum: float32 for half-precision compute unless the user asked for
    the hardware's f16 accumulation (SPEC.md §10.2). Kernels add into it in place: besides
    saving copies, an out-of-place add on `meta` tensors makes torch import its compiler
    stack (seconds, once per process), which estimate-mode runs need not pay."""
    half = mesh.compute_dtype in (torch.float16, torch.bfloat16)
    dtype = torch.float32 if half and not mesh.f16_accumulate else mesh.compute_dtype
    return torch.zeros(shape, dtype=dtype, device=mesh.torch_device)


def _scratch(mesh: Mesh, name: str, *tiles: torch.Tensor | tuple[int, ...]) -> None:
    """Count per-core buffers (a tensor's tile or a tile shape) in the current SRAM scope."""
    numel = sum(math.prod(t.shape[2:] if isinstance(t, torch.Tensor) else t) for t in tiles)
    if numel:
        mesh.sram.alloc(name, numel * mesh.device.storage_bytes)


def _numel(data: torch.Tensor) -> int:
    """Elements of one core's tile."""
    return math.prod(data.shape[2:])


def _pad_bytes(mesh: Mesh, name: str, padded_numel: int, stored_numel: int) -> None:
    """Local padding beyond a stored tile lives in SRAM while the kernel runs."""
    extra = padded_numel - stored_numel
    if extra > 0:
        mesh.sram.alloc(name, extra * mesh.device.storage_bytes)


def _finish(mesh: Mesh, data: torch.Tensor, layout: Layout, name: str, key: str) -> DistTensor:
    """The output tensor, in the compute dtype, registered under `key` (already allocated)."""
    data = data.to(mesh.compute_dtype)
    if mesh.mode is Mode.FUNCTIONAL:
        data = data.contiguous()
    return DistTensor(data, layout, mesh, name, key)


# ---- weights and activations skewed for the ring kernels --------------------------------------
def prealign_b(
    mesh: Mesh, host_b: torch.Tensor, *, name: str = "b", kind: RingKind = RingKind.INTERLEAVED
) -> DistTensor:
    """Store weights B[K, N] pre-skewed for MeshGEMM (or Cannon with `kind=PLAIN`), untimed.

    Core (y, x) of the (logical) grid gets B[kappa, x] with
    kappa = ringinv((r(x) + r(y)) mod P): column x rotated back by r(x) ring positions, what
    the public code does on the host when it loads weights (code notes §1.6). In estimate mode
    `host_b` may be a meta tensor: only its shape is used.
    """
    grid = _grid(mesh, RING_ALGO[kind])
    nd = host_b.dim()
    if nd < 2:
        raise WaferError(f"prealign_b: B must have at least two dims, got shape {host_b.shape}")
    layout = Layout(tuple(host_b.shape), y_dim=nd - 2, x_dim=nd - 1)
    plain = mesh.scatter(host_b, layout, name)
    logical = to_logical(pad_last2(plain.data, 1, grid.per_col), grid)
    aligned = rings.skewed(logical, axis=Axis.Y, kind=kind)
    plain.free()
    data = from_blocks(to_blocks(aligned, grid), grid)
    return mesh.register(data, layout.with_tag(B_ALIGNED[kind]), name)


def align_a(
    mesh: Mesh,
    *,
    a: DistTensor,
    ledger: Ledger,
    kind: RingKind = RingKind.INTERLEAVED,
    op: str = "align_a",
) -> KernelResult:
    """Skew activations A[M_y, K_x] on the device once, so several MeshGEMMs can reuse them
    (Q, K and V from one normed input): a ring GEMM returns A to its skewed place after its
    P steps. Costs floor(P/2) rounds of (2*alpha + Mt*Kt*s/W + step_overhead), tag "align"."""
    _check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    grid = _grid(mesh, RING_ALGO[kind])
    if a.data.shape[-1] % grid.per_col:
        raise WaferError(
            f"{op}: on a {mesh.rows}x{mesh.cols} mesh K must be padded to a multiple of "
            f"{grid.size} (tiling.padded_k); A's K tiles hold {a.data.shape[-1]}"
        )
    with Charged(ledger) as charged, ledger.scope(op), mesh.sram.scope():
        padded = pad_last2(a.data, grid.per_row, 1)
        _scratch(mesh, f"{op}.a_recv", padded)  # the skew's double buffer
        logical, _ = _skew(mesh, grid, kind, ledger, a=to_logical(padded, grid), b=None)
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
    with ledger.tag("align"):
        for i in mesh.steps(rings.skew_rounds(grid.size, kind), ledger):
            with ledger.overlap("align", step_overhead_cycles=mesh.device.step_overhead_cycles):
                if a is not None:
                    a = rings.skew_round(
                        mesh,
                        grid,
                        a,
                        axis=Axis.X,
                        kind=kind,
                        round_index=i,
                        ledger=ledger,
                        op="align_a",
                    )
                if b is not None:
                    b = rings.skew_round(
                        mesh,
                        grid,
                        b,
                        axis=Axis.Y,
                        kind=kind,
                        round_index=i,
                        ledger=ledger,
                        op="align_b",
                    )
    return a, b


# ---- Cannon on a ring: MeshGEMM and the Cannon baseline ---------------------------------------
def _check_ring_operands(
    mesh: Mesh, grid: LogicalGrid, a: DistTensor, b: DistTensor, *, op: str, kind: RingKind
) -> None:
    _check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={"", A_ALIGNED[kind]})
    _check_operand(mesh, b, op=op, role="B", dims="B[K_y, N_x]", tags={"", B_ALIGNED[kind]})
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
    mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger, op: str, kind: RingKind
) -> KernelResult:
    """Cannon's compute-shift loop on the `kind` ring of the (logical) grid."""
    grid = _grid(mesh, op)
    _check_ring_operands(mesh, grid, a, b, op=op, kind=kind)
    batch = _batch(op, a, b)
    m, n = a.layout.shape[-2], b.layout.shape[-1]
    mt, nt = -(-m // mesh.rows), -(-n // mesh.cols)
    out_layout = Layout((*batch, m, n), y_dim=len(batch), x_dim=len(batch) + 1)
    with Charged(ledger) as charged, ledger.scope(op):
        out_key = mesh.sram.alloc(
            f"{op}.c", math.prod((*batch, mt, nt)) * mesh.device.storage_bytes
        )
        with mesh.sram.scope():
            a_pad = pad_last2(_tiles(a, len(batch)), grid.per_row, 1)  # a_tile: [a*mL, Kt]
            b_pad = pad_last2(_tiles(b, len(batch)), 1, grid.per_col)  # b_tile: [Kt', b*nL]
            _pad_bytes(mesh, f"{op}.a_pad", _numel(a_pad), _numel(a.data))
            _pad_bytes(mesh, f"{op}.b_pad", _numel(b_pad), _numel(b.data))
            _scratch(mesh, f"{op}.a_recv", a_pad)  # double buffers: shifts land here
            _scratch(mesh, f"{op}.b_recv", b_pad)
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
            c_blocks = _accumulator(mesh, (*lead, a_blocks.shape[-2], b_blocks.shape[-1]))
            _pad_bytes(mesh, f"{op}.c_pad", _numel(c_blocks), math.prod((*batch, mt, nt)))
            b_moved = b_l.contiguous()  # the layout B's blocks have once a ring step copied them
            for step in mesh.steps(grid.size, ledger):
                with ledger.overlap("step", step_overhead_cycles=mesh.device.step_overhead_cycles):
                    c_blocks.add_(_ring_product(mesh, grid, a_l, b_l, b_moved, step, kind, ledger))
                    a_l = rings.ring_step(
                        mesh, grid, a_l, axis=Axis.X, kind=kind, ledger=ledger, op="shift_a"
                    )
                    rings.charge_ring_step(
                        mesh, grid, b_l, axis=Axis.Y, kind=kind, ledger=ledger, op="shift_b"
                    )
    c = from_blocks(c_blocks, grid)[..., :mt, :nt]
    return KernelResult(
        out=_finish(mesh, c, out_layout, f"{op}.c", out_key), records=charged.records
    )


def _ring_product(
    mesh: Mesh,
    grid: LogicalGrid,
    a_l: torch.Tensor,
    b_l: torch.Tensor,
    b_moved: torch.Tensor,
    step: int,
    kind: RingKind,
    ledger: Ledger,
) -> torch.Tensor:
    """Step `step`'s per-core products a @ b in blocks form (R, C, a, b, *t, p, q).

    B's blocks (the weights, the largest tiles) move by index, not by copy: after `step` ring
    steps along Y, logical row i holds B's row home[i] = ring_index(-step)[i]. The products
    are formed in B's own row order, row r with the A blocks of the row that holds it then
    (ring_index(step)[r]), and put back in row order: every core multiplies exactly the
    tiles the moved B would give it, charged as the blocks-form multiply. `b_moved` is `b_l`
    laid out as a copied B (contiguous), for the steps after the first.
    """
    if step == 0:  # nothing has moved yet
        return matmul(mesh, a=to_blocks(a_l, grid), b=to_blocks(b_l, grid), ledger=ledger, op="mac")
    device = a_l.device.type
    holder = rings.ring_index(grid.size, kind, step, device)
    home = rings.ring_index(grid.size, kind, -step, device)
    products = matmul_values(mesh, a_l.index_select(0, holder), b_moved)  # B's row order
    blocks_shape = (grid.rows, grid.cols, grid.per_row, grid.per_col, *a_l.shape[2:])
    charge_matmul(mesh, ledger, "mac", a_shape=blocks_shape, n=b_l.shape[-1])
    return to_blocks(products.index_select(0, home), grid)


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


# ---- dist-GEMM-T ------------------------------------------------------------------------------
def gemm_t(
    mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger, op: str = "gemm_t"
) -> KernelResult:
    """dist-GEMM-T (paper §5.4, code notes §4.3): A @ B^T without moving B to its transpose.

    Sharding: A[M_y, K_x] @ B[N_y, K_x]^T -> C[M_y, N_x], the normal activation layout (so a
    softmax over N reduces along X); leading batch dims broadcast (q [H, Mt, Kt] against
    k [1, Nt, Kt]). Schedule: A stays; P steps of {partial = a @ b^T over the core's K slice;
    shift b one interleaved-ring position along Y; pipeline reduce-add of the partial along X
    onto its owner column ringinv((r(y) - t) mod P), a different root in every row and step}.
    The public code blocks on each reduce; here step t's reduce runs during step t+1's
    multiply and shift (double-buffered partials), the last one alone. Consecutive reduces
    stream through the same chains one behind the other (each stage forward-adds step t's
    partial, then step t+1's), so a middle step exposes only the reduce's size term and the
    chain latency is paid once, by the last reduce. On an R x C mesh it
    runs the logical L x L grid of `meshgemm` (N padded to a multiple of L).
    Cost on a P x P mesh (every middle step alike: each step's roots cover every column):
      first:  max(Kt*Nt * max(floor, 2*Mt/F, 3*Mt*s/S), 2*alpha + Nt*Kt*s/W) + overhead
      middle: max(same multiply, 2*alpha + (2*Mt*Nt + Nt*Kt)*s/W) + overhead
              [the chain to an interior root brings two partials into its ramp, with b]
      last:   (P-1)*alpha + (P-2)*beta + 2*Mt*Nt*s/W
    Routes: Y ring forward (3) + X chain (4) = 7, whatever P. SRAM: a, b, b's receive buffer,
    two partials, c.
    """
    grid = _grid(mesh, op)
    _check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    _check_operand(mesh, b, op=op, role="B", dims="B[N_y, K_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-1]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    batch = _batch(op, a, b)
    m, n = a.layout.shape[-2], b.layout.shape[-2]
    mt, nt = -(-m // mesh.rows), -(-n // mesh.cols)
    if b.data.shape[-2] * mesh.rows != nt * mesh.cols:
        raise WaferError(
            f"{op} on a {mesh.rows}x{mesh.cols} mesh runs a logical {grid.size}x{grid.size} "
            f"grid: N = {n} must be padded to a multiple of {grid.size} (tiling.padded_k)"
        )
    out_layout = Layout((*batch, m, n), y_dim=len(batch), x_dim=len(batch) + 1)
    out_numel = math.prod((*batch, mt, nt))
    with Charged(ledger) as charged, ledger.scope(op):
        out_key = mesh.sram.alloc(f"{op}.c", out_numel * mesh.device.storage_bytes)
        with mesh.sram.scope():
            a_pad = pad_last2(_tiles(a, len(batch)), grid.per_row, grid.per_col)  # [a*mL, b*kL]
            b_pad = pad_last2(_tiles(b, len(batch)), 1, grid.per_col)  # b_tile: [a*nL, b*kL]
            _pad_bytes(mesh, f"{op}.a_pad", _numel(a_pad), _numel(a.data))
            _pad_bytes(mesh, f"{op}.b_pad", _numel(b_pad), _numel(b.data))
            _scratch(mesh, f"{op}.b_recv", b_pad)
            a_l, b_l = to_logical(a_pad, grid), to_logical(b_pad, grid)
            c_l = _accumulator(mesh, (grid.size, grid.size, *batch, a_l.shape[-2], b_l.shape[-2]))
            blocks = grid.per_row * grid.per_col
            _scratch(mesh, f"{op}.partials", (2 * blocks, *c_l.shape[2:]))
            _pad_bytes(mesh, f"{op}.c_pad", _numel(c_l) * blocks, out_numel)
            c_l = _gemm_t_steps(mesh, grid, a_l, b_l, c_l, ledger)
    c = from_blocks(to_blocks(c_l, grid), grid)[..., :mt, :nt]
    out = _finish(mesh, c, out_layout, f"{op}.c", out_key)
    return KernelResult(out=out, records=charged.records)


def _gemm_t_steps(
    mesh: Mesh,
    grid: LogicalGrid,
    a_l: torch.Tensor,
    b_l: torch.Tensor,
    c_l: torch.Tensor,
    ledger: Ledger,
) -> torch.Tensor:
    """The P steps of `gemm_t`, step t's reduce overlapped with step t+1 (logical blocks in)."""
    a_blocks = to_blocks(a_l, grid)  # a: (R, C, a, b, *t, mL, kL)

    def step(t: int, b_l: torch.Tensor, c_l: torch.Tensor, prev: torch.Tensor | None):
        with ledger.overlap("step", step_overhead_cycles=mesh.device.step_overhead_cycles):
            b_t = to_blocks(b_l, grid).transpose(-1, -2)  # b^T: (R, C, a, b, *t, kL, nL)
            partial = matmul(mesh, a=a_blocks, b=b_t, ledger=ledger, op="mac")
            b_l = rings.ring_step(
                mesh,
                grid,
                b_l,
                axis=Axis.Y,
                kind=RingKind.INTERLEAVED,
                ledger=ledger,
                op="shift_b",
            )
            if prev is not None:
                c_l = _reduce_to_owners(
                    mesh, grid, prev, c_l, step=t - 1, ledger=ledger, follows_stream=True
                )
        return b_l, c_l, partial

    b_l, c_l, partial = step(0, b_l, c_l, None)
    # With one logical row per core every middle step costs the same (each step's roots cover
    # every column); with several, the chains of a line crowd differently from step to step.
    middle = mesh.steps(grid.size - 1, ledger) if grid.per_row == 1 else range(grid.size - 1)
    for i in middle:
        b_l, c_l, partial = step(i + 1, b_l, c_l, partial)
    last = ledger.overlap("reduce") if mesh.cols > 1 else contextlib.nullcontext()
    with last:
        return _reduce_to_owners(
            mesh, grid, partial, c_l, step=grid.size - 1, ledger=ledger, follows_stream=False
        )


def _reduce_to_owners(
    mesh: Mesh,
    grid: LogicalGrid,
    partial: torch.Tensor,
    c_l: torch.Tensor,
    *,
    step: int,
    ledger: Ledger,
    follows_stream: bool,
) -> torch.Tensor:
    """Add every logical row's partials (R, C, a, b, *t, mL, nL) along X into its owner block
    of c_l (L, L, *t, mL, nL): logical row y owns column ringinv((r(y) - step) mod L).

    A core first sums its own b blocks of a row; then each of its a rows runs a pipeline
    chain to the physical column holding the owner, concurrently (charge inside an overlap
    block so they share the network).
    """
    per_row, per_col, size = grid.per_row, grid.per_col, grid.size
    if per_col > 1:
        partial = elementwise(
            mesh,
            lambda p: p.sum(dim=3),
            partial,
            ledger=ledger,
            op="sum_blocks",
            num_elements=_numel(partial),
        )
    else:
        partial = partial.squeeze(3)
    owner = ring_order(size)[(ring_position(size) - step) % size]
    roots = (owner // per_col).reshape(mesh.rows, per_row)
    sums = [
        reduce(
            mesh,
            partial[:, :, i],
            axis=Axis.X,
            ledger=ledger,
            op="reduce",
            algorithm=ReduceAlgorithm.PIPELINE,
            root=roots[:, i],
            follows_stream=follows_stream,
        )[0].squeeze(1)
        for i in range(per_row)
    ]
    values = torch.stack(sums, dim=1).flatten(0, 1)  # (L, *t, mL, nL), logical row y*a + i
    rows = torch.arange(size, device=c_l.device)
    cols = torch.as_tensor(owner, device=c_l.device)
    return c_l.index_put_((rows, cols), values.to(c_l.dtype), accumulate=True)


# ---- baselines that broadcast: SUMMA and allgather-GEMM --------------------------------------
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
    _check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    _check_operand(mesh, b, op=op, role="B", dims="B[K_y, N_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-2]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    batch = _batch(op, a, b)
    k_a, k_b = a.data.shape[-1], b.data.shape[-2]
    a_data, b_data = _tiles(a, len(batch)), _tiles(b, len(batch))
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
            _scratch(mesh, f"{op}.a_panels", (2, *a_batch, mt, width))
            _scratch(mesh, f"{op}.b_panels", (2, *b_batch, width, nt))
            acc = _accumulator(mesh, (mesh.rows, mesh.cols, *batch, mt, nt))
            with ledger.overlap("bcast"):
                current = fetch(*panels[0])
            for s in range(len(panels)):
                with ledger.overlap("step", step_overhead_cycles=mesh.device.step_overhead_cycles):
                    acc.add_(matmul(mesh, a=current[0], b=current[1], ledger=ledger, op="mac"))
                    if s + 1 < len(panels):
                        current = fetch(*panels[s + 1])
    return KernelResult(
        out=_finish(mesh, acc, out_layout, f"{op}.c", out_key), records=charged.records
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
    _check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    _check_operand(mesh, b, op=op, role="B", dims="B[K_y, N_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-2]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    batch = _batch(op, a, b)
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
                a_data, b_data = _tiles(a, len(batch)), _tiles(b, len(batch))
                a_strip = allgather(mesh, a_data, plan=plans[Axis.X], ledger=ledger, op="a")
                b_strip = allgather(mesh, b_data, plan=plans[Axis.Y], ledger=ledger, op="b")
            _scratch(mesh, f"{op}.a_strip", a_strip)
            _scratch(mesh, f"{op}.b_strip", b_strip)
            # a_strip: [Mt, K], b_strip: [K, Nt]; beyond the shorter padded K both hold zeros
            c = matmul(
                mesh,
                a=a_strip[..., :k_common],
                b=b_strip[..., :k_common, :],
                ledger=ledger,
                op="mac",
            )
    return KernelResult(
        out=_finish(mesh, c, out_layout, f"{op}.c", out_key), records=charged.records
    )


# ---- registry and weight loading --------------------------------------------------------------
GEMM_KERNELS: dict[str, GemmKernel] = {
    "meshgemm": meshgemm,
    "cannon": cannon,
    "summa": summa,
    "allgather": allgather_gemm,
}
WEIGHT_SKEW = {"meshgemm": RingKind.INTERLEAVED, "cannon": RingKind.PLAIN}


def load_weights(mesh: Mesh, host_b: torch.Tensor, *, algo: str, name: str = "b") -> DistTensor:
    """Store B[K, N] as kernel `algo` expects its weights: pre-skewed for the ring kernels
    (untimed, like the public code's host-side skew), the plain block layout otherwise."""
    if algo not in GEMM_KERNELS:
        raise WaferError(f"unknown GEMM algorithm {algo!r}; choose from {', '.join(GEMM_KERNELS)}")
    if algo in WEIGHT_SKEW:
        return prealign_b(mesh, host_b, name=name, kind=WEIGHT_SKEW[algo])
    nd = host_b.dim()
    return mesh.scatter(host_b, Layout(tuple(host_b.shape), y_dim=nd - 2, x_dim=nd - 1), name)
