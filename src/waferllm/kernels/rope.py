"""RoPE on the mesh: x*cos + rotate_half(x)*sin on every core's head-dim slice (SPEC.md §10.8).

The one slot order is `heads.HeadLayout`'s: each core's slice holds whole (i, i + hd/2) pairs,
first halves then second halves, so no data moves. The cos/sin tables come in that order
(the model builds them from `HeadLayout.rope_pairs`).
Legend: S rotated slice of one core, R its other tile entries.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.vector import (
    ROTATE,
    as_dtype,
    charge_vector,
    lead_count,
)
from waferllm.mesh.cost import Ledger
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.replicas import on_replicas
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode


def rope(
    mesh: Mesh,
    *,
    x: DistTensor,
    cos: DistTensor,
    sin: DistTensor,
    ledger: Ledger,
    op: str = "rope",
    walk: bool = False,
) -> DistTensor:
    """Rotate q or k in place: x*cos + rotate_half(x)*sin on every core's slice, in x's dtype.

    Layout: x's tiles end in one permuted head-dim slice of S entries (first halves, then
    second halves: `heads.HeadLayout`), e.g. [T, n_rep, S]; cos/sin tiles [*T, S] in the
    same order, broadcast over x's extra (head) dims. No communication.
    Cost: R instructions of S, R = x's other tile entries: R*max(floor, 3S/F, 4S*s/S_bw).
    Estimate mode gives the rotated tiles' shape and dtype without the rotation's ops unless
    `walk` (the oracle: the same records and output, tests/kernels/test_rope.py).
    """
    size = x.tile_shape[-1]
    for table in (cos, sin):
        if table.tile_shape[-1] != size or len(table.tile_shape) > len(x.tile_shape):
            raise WaferError(
                f"RoPE table '{table.name}' tiles {table.tile_shape} do not match "
                f"'{x.name}' tiles {x.tile_shape}"
            )
    if size % 2:
        raise WaferError(f"RoPE needs an even slice per core, '{x.name}' has {size}")
    extra = len(x.tile_shape) - len(cos.tile_shape)

    def aligned(t: DistTensor) -> torch.Tensor:
        return as_dtype(t.data.reshape(*t.data.shape[:-1], *([1] * extra), size), x.data.dtype)

    data = x.data
    closed = mesh.mode is Mode.ESTIMATE and not walk
    charge_vector(mesh, ledger, op, rows=lead_count(data, -1), length=size, cost=ROTATE)
    if closed:  # what the ops below give meta tiles: the broadcast shape, x's dtype
        tables = [(*t.data.shape[:-1], *([1] * extra), size) for t in (cos, sin)]
        shape = np.broadcast_shapes(data.shape, *tables)  # not torch's: sympy
        return x.replace(meta_empty(shape, data.dtype))
    signs = _rotation_signs(size, data.dtype, data.device.type)

    def rotated(data: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) * sin = [x2, x1] * ([-1, 1] * sin): (-a)*b and a*(-b) are the same
        swapped = data.roll(size // 2, dims=-1)
        return data * cos + swapped * (sin * signs)

    return x.replace(on_replicas(rotated, data, aligned(cos), aligned(sin)))


@lru_cache(maxsize=64)
def _rotation_signs(size: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[-1] * (size/2) + [1] * (size/2): rotate_half's signs (callers only read it)."""
    half = size // 2
    return torch.tensor([-1.0] * half + [1.0] * half, dtype=dtype, device=device)
