"""Replicated tiles held once: per-core data that is the same on every core of a line.

A collective that leaves every core of a line with the same tile (allreduce, broadcast) and a
host tensor scattered replicated along an axis return it as a stride-0 view along that mesh
dim (`Tensor.expand`) instead of one copy per core. `on_replicas` runs an elementwise kernel
body once per line of such inputs and expands its result: every core's tile goes through the
same ops on the same values, so the numbers are bitwise those of computing every copy, and
host time no longer grows with the replicated axis. No cost accounting here (kernels charge
their per-core work as before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MESH_DIMS = (0, 1)  # (rows, cols) lead every per-core tensor


def held_once(data: torch.Tensor, dim: int) -> bool:
    """Whether `data` holds one tile along mesh dim `dim` (size 1 or a stride-0 view)."""
    return data.dim() > dim and (data.shape[dim] == 1 or data.stride(dim) == 0)


def once(data: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """`data` narrowed to its first tile along each mesh dim of `dims` (a view)."""
    for dim in dims:
        if data.shape[dim] != 1:
            data = data.narrow(dim, 0, 1)
    return data


def spread(data: torch.Tensor, sizes: dict[int, int]) -> torch.Tensor:
    """`data` (size 1 along the mesh dims of `sizes`) expanded to `sizes` there (a view)."""
    shape = list(data.shape)
    for dim, size in sizes.items():
        shape[dim] = size
    return data.expand(shape)


def on_replicas(fn: Callable[..., Any], *inputs: torch.Tensor, across: int | None = None) -> Any:
    """`fn(*inputs)` computed once per line along every mesh dim on which all `inputs` (each
    (rows or 1, cols or 1, ...)) hold one tile, its result (a tensor or a tuple of tensors)
    expanded back over that dim. `fn` treats the mesh dims elementwise, except mesh dim
    `across`, which it may reduce over (never compacted). Inputs of lower rank broadcast
    against the tile dims only; one reaching into the mesh dims computes every copy."""
    rank = max(t.dim() for t in inputs)
    if any(rank - 2 < t.dim() < rank for t in inputs):
        return fn(*inputs)
    tiles = [t for t in inputs if t.dim() == rank]
    sizes = {
        d: max(t.shape[d] for t in tiles)
        for d in MESH_DIMS
        if d != across and all(held_once(t, d) for t in tiles)
    }
    sizes = {d: n for d, n in sizes.items() if n > 1}
    if not sizes:
        return fn(*inputs)
    out = fn(*(once(t, tuple(sizes)) if t.dim() == rank else t for t in inputs))
    if isinstance(out, tuple):
        return tuple(spread(o, sizes) for o in out)
    return spread(out, sizes)
