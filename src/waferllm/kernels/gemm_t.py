"""dist-GEMM-T (paper §5.4, code notes §4.3): A @ B^T without moving B to its transpose.

Used for prefill's Q K^T (`attention.py`). A stays in place; B circulates on the Y ring and
each step's partial product is reduced along X onto the column that owns it, the reduces of
consecutive steps streaming through the same chains.
Legend: M, K, N the GEMM dims; Mt, Kt, Nt one core's tile; P cores per side; s storage bytes
per element; F flops/cycle, S SRAM bytes/cycle, W link (= ramp) bytes/cycle of a core;
alpha per hop, beta per stage; mesh axes X (columns), Y (rows).
"""

from __future__ import annotations

import contextlib
import math

import torch

from waferllm.errors import WaferError
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
from waferllm.mesh import rings
from waferllm.mesh.comm import ReduceAlgorithm, reduce
from waferllm.mesh.compute import elementwise, matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis, RingKind, ring_order, ring_position
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import LogicalGrid, from_blocks, pad_last2, to_blocks, to_logical
from waferllm.mesh.virtual import Mesh


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
    grid = ring_grid(mesh, op)
    check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    check_operand(mesh, b, op=op, role="B", dims="B[N_y, K_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-1]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    batch = batch_shape(op, a, b)
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
            a_pad = pad_last2(
                batch_tiles(a, len(batch)), grid.per_row, grid.per_col
            )  # [a*mL, b*kL]
            b_pad = pad_last2(batch_tiles(b, len(batch)), 1, grid.per_col)
            pad_bytes(mesh, f"{op}.a_pad", tile_numel(a_pad), tile_numel(a.data))
            pad_bytes(mesh, f"{op}.b_pad", tile_numel(b_pad), tile_numel(b.data))
            scratch(mesh, f"{op}.b_recv", b_pad)
            a_l, b_l = to_logical(a_pad, grid), to_logical(b_pad, grid)
            c_l = accumulator(mesh, (grid.size, grid.size, *batch, a_l.shape[-2], b_l.shape[-2]))
            blocks = grid.per_row * grid.per_col
            scratch(mesh, f"{op}.partials", (2 * blocks, *c_l.shape[2:]))
            pad_bytes(mesh, f"{op}.c_pad", tile_numel(c_l) * blocks, out_numel)
            c_l = _gemm_t_steps(mesh, grid, a_l, b_l, c_l, ledger)
    c = from_blocks(to_blocks(c_l, grid), grid)[..., :mt, :nt]
    out = finish(mesh, c, out_layout, f"{op}.c", out_key)
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
            num_elements=tile_numel(partial),
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
