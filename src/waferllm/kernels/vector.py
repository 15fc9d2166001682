"""What the transformer's vector ops share: per-element costs, the vector-instruction charge,
padding masks and positions of tile entries, and the small allreduces of norms and softmax.

The ops themselves live in norm, softmax, rope and elementwise; GEMVs in `gemv.py`.
Legend: R vector instructions per core (the other tile entries), L their length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from waferllm.errors import WaferError
from waferllm.kernels.gemv import best_ktree_fanouts
from waferllm.mesh.comm import ReduceAlgorithm, ReduceOp, allreduce, charge_allreduce
from waferllm.mesh.comm_groups import charge_segmented_allreduce, segmented_allreduce
from waferllm.mesh.compute import charge_compute, vector_op_cycles
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode

# Cost of one element of each op: FLOPs, storage elements moved through SRAM (reads + writes of
# streamed operands), and scalar (non-SIMD) instructions, each priced at the device's
# `scalar_cycles_per_element`. The scalar counts are the public decode code's per-element loops
# (code notes §3.4): fast_exp(x) = (1 + x/256)^4 is one multiply-add and two squarings; a
# division is one instruction; 1/sqrt(sum/D + eps) per token is a divide, a square root and a
# reciprocal; SiLU is v / (1 + fast_exp(-v)): vector passes and a divide per element (issue 9
# lists SiLU's divide as its per-element scalar loop). Softmax normalises as the public code
# does (code notes §3.3 step 5 "x 1/sum", §4.2 flag 7): one reciprocal per softmax row, then a
# vector multiply per element.
FAST_EXP_INSTRUCTIONS = 3
SQUARE_ACC = (2, 1, 0)  # acc += x*x: read x
RSQRT = (2, 2, 3)  # r = 1/sqrt(acc/D + eps), one per token: divide, sqrt, reciprocal
SCALE_MUL = (2, 3, 0)  # y = (x * r) * w: read x, w; write y
MAX_ACC = (1, 1, 0)  # m = max(m, x)
EXP_SUB = (2, 2, FAST_EXP_INSTRUCTIONS)  # e = fast_exp(s - m): read s, write e
SUM_ACC = (1, 1, 0)  # acc += e
RECIPROCAL = (1, 2, 1)  # r = 1 / sum, one per softmax row: one divide
NORMALISE = (1, 2, 0)  # p = e * r: read e, write p (r in a register)
MASK_SELECT = (1, 3, 0)  # s = keep ? s : -inf: read s, keep; write s
ROTATE = (3, 4, 0)  # x*cos + rot(x)*sin: read x, cos, sin; write
SILU_MUL = (7, 14, 1)  # gate / (1 + fast_exp(-gate)) * up in SILU_PASSES vector passes over
# gate (fast_exp's multiply-add and two squarings, the add, the final multiply by up) and one
# scalar divide per element (the count: SiLU's divide is its only per-element scalar)
SILU_PASSES = 5
ADD = (1, 3, 0)
SCALE = (1, 2, 0)  # s *= c: read s, write s
COPY = (0, 2, 0)


def charge_vector(
    mesh: Mesh,
    ledger: Ledger,
    op: str,
    *,
    rows: int,
    length: int,
    cost: tuple[int, int, int],
    passes: int = 1,
) -> None:
    """`passes` x `rows` vector instructions of `length` elements on every core (SPEC.md §3
    roofline; `cost`'s FLOPs and SRAM elements per element shared evenly by the passes), plus
    `rows * length * scalar` scalar instructions at `scalar_cycles_per_element` each."""
    if not ledger.prices:
        return
    flops, sram, scalar = cost
    cycles = passes * vector_op_cycles(
        mesh.device,
        num_instructions=rows,
        length=length,
        flops_per_element=flops / passes,
        sram_elements_per_element=sram / passes,
    )
    cycles += rows * length * scalar * mesh.device.scalar_cycles_per_element
    charge_compute(
        mesh,
        ledger,
        op,
        cycles=cycles,
        flops_per_core=rows * length * flops,
        sram_bytes_per_core=rows * length * sram * mesh.device.storage_bytes,
    )


def as_dtype(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`data.to(dtype)` without a call into torch when it already has that dtype."""
    return data if data.dtype == dtype else data.to(dtype)


def axis_of(layout: Layout, dim: int) -> Axis | None:
    for axis in (Axis.Y, Axis.X):
        if layout.dim_of(axis) == dim:
            return axis
    return None


def small_allreduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    ledger: Ledger,
    op: str,
    reduce_op: ReduceOp,
    algorithm: ReduceAlgorithm,
    group_sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Allreduce small per-core vectors: the K-tree (default fan-outs of `gemv`), a chain to the
    middle core then a broadcast (`pipeline`, the prefill plan's X reduce), the ring, or a
    segmented chain per group of consecutive cores (`group_sizes`, per kv-group)."""
    if group_sizes is not None:
        return segmented_allreduce(
            mesh,
            data,
            axis=axis,
            group_sizes=tuple(int(g) for g in group_sizes),
            ledger=ledger,
            op=op,
            reduce_op=reduce_op,
        )
    root, fanouts = _allreduce_plan(mesh, axis, algorithm)
    return allreduce(
        mesh,
        data,
        axis=axis,
        ledger=ledger,
        op=op,
        algorithm=algorithm,
        root=root,
        fanouts=fanouts,
        reduce_op=reduce_op,
    )


def charge_small_allreduce(
    mesh: Mesh,
    *,
    axis: Axis,
    numel: int,
    ledger: Ledger,
    op: str,
    algorithm: ReduceAlgorithm,
    group_sizes: Sequence[int] | None = None,
) -> None:
    """What `small_allreduce` of tiles of `numel` elements configures (routes) and charges,
    without data: the estimate-mode closed forms of rms_norm, softmax and argmax build no
    meta tensor (`comm.charge_allreduce`, `comm_groups.charge_segmented_allreduce`; whatever
    is reduced, only the tile's element count is priced)."""
    if group_sizes is not None:
        sizes = tuple(int(g) for g in group_sizes)
        charge_segmented_allreduce(
            mesh, axis=axis, group_sizes=sizes, numel=numel, ledger=ledger, op=op
        )
        return
    root, fanouts = _allreduce_plan(mesh, axis, algorithm)
    charge_allreduce(
        mesh,
        axis=axis,
        numel=numel,
        ledger=ledger,
        op=op,
        algorithm=algorithm,
        root=root,
        fanouts=fanouts,
    )


def _allreduce_plan(
    mesh: Mesh, axis: Axis, algorithm: ReduceAlgorithm
) -> tuple[int | None, tuple[int, ...] | None]:
    """(root, fan-outs) of a small allreduce: the pipeline's middle core, the K-tree's fan-outs."""
    num = mesh.size(axis)
    fanouts = best_ktree_fanouts(mesh.device, num) if algorithm is ReduceAlgorithm.KTREE else None
    return (num // 2 if algorithm is ReduceAlgorithm.PIPELINE else None), fanouts


def tile_positions(
    tensor: DistTensor, dim: int, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """int64 tensor broadcastable to `tensor.data`: for every tile entry along logical `dim`,
    `positions[i]` of its logical index i (i itself when `positions` is None), -1 on padding.

    Shape: (rows or 1, cols or 1, 1, ..., tile[dim], ..., 1). In estimate mode the values are
    unknown (meta)."""
    mesh, layout = tensor.mesh, tensor.layout
    ndim = len(layout.shape)
    dim = dim % ndim
    tile = tensor.tile_shape[dim]
    axis = axis_of(layout, dim)
    shape = [1, 1] + [1] * ndim
    shape[2 + dim] = tile
    if axis is not None:
        shape[axis.tensor_dim] = mesh.size(axis)
    if mesh.mode is Mode.ESTIMATE:
        return torch.empty(shape, dtype=torch.int64, device="meta")
    index = torch.arange(tile)
    if axis is not None:
        index = torch.arange(mesh.size(axis))[:, None] * tile + index[None, :]
    size = layout.shape[dim]
    valid = index < size
    if positions is not None:
        if tuple(positions.shape) != (size,):
            raise WaferError(f"positions of shape {tuple(positions.shape)} for a dim of {size}")
        values = positions.to(torch.int64)[index.clamp(max=size - 1)]
    else:
        values = index
    out = torch.where(valid, values, torch.full_like(values, -1)).reshape(shape)
    return out.to(mesh.torch_device)


def valid_mask(tensor: DistTensor, dim: int) -> torch.Tensor | None:
    """Bool mask of the non-padding entries along `dim` (None when `dim` has no padding)."""
    layout = tensor.layout
    dim = dim % len(layout.shape)
    if not _is_padded(layout, *tensor.mesh.shape, dim):
        return None
    return tile_positions(tensor, dim) >= 0


@lru_cache(maxsize=1024)
def _is_padded(layout: Layout, rows: int, cols: int, dim: int) -> bool:
    """Whether `dim` is split and its tiles end in zero padding on a rows x cols mesh."""
    padded = layout.padded_shape(rows, cols)[dim]
    return axis_of(layout, dim) is not None and padded != layout.shape[dim]


def plain_layout(shape: tuple[int, ...], placement: dict[Axis | None, int]) -> Layout:
    """A plain layout from {mesh axis: logical dim} (a None key is ignored)."""
    return Layout(shape, y_dim=placement.get(Axis.Y), x_dim=placement.get(Axis.X))


def lead_count(data: torch.Tensor, dim: int) -> int:
    """Vector instructions per core for an op along tile dim `dim`: the other tile dims."""
    tile = data.shape[2:]
    return math.prod(tile) // tile[dim] if tile[dim] else 0
