"""What every distributed GEMM shares: operand checks, batch dims, output buffers, padding.

Operands are split by their last two dims, the first over rows (Y) and the second over columns
(X); leading dims are a batch every core holds whole (heads). Sizes that do not divide the grid
are zero-padded: padding is stored, moved and multiplied like data, and counted in SRAM here.
No schedule and no communication live here (those are in gemm, gemm_t, gemm_bcast).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import LogicalGrid, logical_grid
from waferllm.mesh.virtual import Mesh, Mode


def check_operand(mesh: Mesh, t: DistTensor, *, op: str, role: str, dims: str, tags: set[str]):
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
            f"{sorted(tags)} (weights for a ring kernel come from prealign_b or store_b_for)"
        )


def batch_shape(op: str, a: DistTensor, b: DistTensor) -> tuple[int, ...]:
    try:
        # numpy's, not torch's: torch.broadcast_shapes imports sympy on first use (~2 s)
        return tuple(int(d) for d in np.broadcast_shapes(a.layout.shape[:-2], b.layout.shape[:-2]))
    except ValueError:
        raise WaferError(
            f"{op}: batch dims {a.layout.shape[:-2]} and {b.layout.shape[:-2]} do not broadcast"
        ) from None


def batch_tiles(t: DistTensor, num_batch: int) -> torch.Tensor:
    """t's per-core tiles (in the compute dtype: `DistTensor.values`) with size-1 batch dims
    inserted after the mesh dims, so that batch dims broadcast against the other operand's
    and never against the mesh dims."""
    rows, cols, *tile = t.data.shape
    return t.values().reshape(rows, cols, *([1] * (num_batch + 2 - len(tile))), *tile)


def ring_grid(mesh: Mesh, op: str) -> LogicalGrid:
    return logical_grid(
        mesh.rows,
        mesh.cols,
        algo=op,
        max_rows=mesh.device.mesh_rows,
        max_cols=mesh.device.mesh_cols,
    )


def accumulator(mesh: Mesh, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros for a running sum: float32 for half-precision compute unless the user asked for
    the hardware's f16 accumulation (SPEC.md §10.2). Kernels add into it in place: besides
    saving copies, an out-of-place add on `meta` tensors makes torch import its compiler
    stack (seconds, once per process), which estimate-mode runs need not pay."""
    half = mesh.compute_dtype in (torch.float16, torch.bfloat16)
    dtype = torch.float32 if half and not mesh.f16_accumulate else mesh.compute_dtype
    return torch.zeros(shape, dtype=dtype, device=mesh.torch_device)


def scratch(mesh: Mesh, name: str, *tiles: torch.Tensor | tuple[int, ...]) -> None:
    """Count per-core buffers (a tensor's tile or a tile shape) in the current SRAM scope."""
    numel = sum(math.prod(t.shape[2:] if isinstance(t, torch.Tensor) else t) for t in tiles)
    if numel:
        mesh.sram.alloc(name, numel * mesh.device.storage_bytes)


def tile_numel(data: torch.Tensor) -> int:
    """Elements of one core's tile."""
    return math.prod(data.shape[2:])


def pad_bytes(mesh: Mesh, name: str, padded_numel: int, stored_numel: int) -> None:
    """Local padding beyond a stored tile lives in SRAM while the kernel runs."""
    extra = padded_numel - stored_numel
    if extra > 0:
        mesh.sram.alloc(name, extra * mesh.device.storage_bytes)


def finish(mesh: Mesh, data: torch.Tensor, layout: Layout, name: str, key: str) -> DistTensor:
    """The output tensor, in the compute dtype, registered under `key` (already allocated)."""
    if data.dtype != mesh.compute_dtype:  # `to` of the same dtype is the tensor itself
        data = data.to(mesh.compute_dtype)
    if mesh.mode is Mode.FUNCTIONAL:
        data = data.contiguous()
    return DistTensor(data, layout, mesh, name, key)
