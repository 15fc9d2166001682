"""Softmax on the mesh (allreduce-max from -inf, true exp, allreduce-sum) and the causal and
sliding-window masks it applies.

The reductions run along the axis the softmax dim is split on, or segmented per group of
consecutive cores (kv-groups). Attention itself is in `attention.py`.
Legend: R softmax rows per core, St the tile of the softmax dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from waferllm.errors import WaferError
from waferllm.kernels.vector import (
    EXP_SUB,
    MASK_SELECT,
    MAX_ACC,
    NORMALISE,
    RECIPROCAL,
    SCALE,
    SUM_ACC,
    as_dtype,
    axis_of,
    charge_small_allreduce,
    charge_vector,
    lead_count,
    small_allreduce,
    tile_positions,
    valid_mask,
)
from waferllm.mesh.comm import ReduceAlgorithm, ReduceOp
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode


def softmax(
    mesh: Mesh,
    *,
    scores: DistTensor,
    ledger: Ledger,
    dim: int = -1,
    axis: Axis | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    group_sizes: Sequence[int] | None = None,
    op: str = "softmax",
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    rows_per_core: int | None = None,
    walk: bool = False,
) -> DistTensor:
    """Softmax over logical `dim` of `scores`, in place (the output reuses the scores' buffer).

    Layout: any; `dim`'s tiles are combined along `axis` (default: the axis `dim` is split on;
    None there means a local softmax). `group_sizes` makes the reductions segmented: each run of
    consecutive cores along `axis` (e.g. one kv-group's columns) is its own softmax.
    Schedule (true exp, max from -inf): [s *= scale]; [s = keep ? s : -inf]; local max;
    allreduce-max (one value per softmax row); e = exp(s - max); local sum; allreduce-sum;
    p = e / sum. `mask` (bool, broadcastable to `scores.data`, True = keep) and the padding of
    `dim` are -inf; a row with nothing kept gives zeros. Computed in float32, stored in the
    compute dtype (transformers' eager attention does the same).
    Cost: R instructions of St per pass, R = other tile entries (or `rows_per_core` when the
    caller spreads replicated rows over the cores that hold them), St = tile of `dim`:
    R*[max-acc + exp + sum-acc + normalise (+ scale, + select)] + one instruction of R
    reciprocals + 2 allreduces of R*s bytes; scalar instructions: 3*R*St (fast_exp) + R (one
    reciprocal per row; code notes §3.3 multiplies by 1/sum).
    Estimate mode charges it from the scores' tile shape alone unless `walk` (the oracle: the
    same records, tests/kernels/test_norm_softmax_closed_form.py).
    """
    ndim = len(scores.layout.shape)
    dim = dim % ndim
    if axis is None:
        axis = axis_of(scores.layout, dim)
    tile_dim = 2 + dim
    rows, length = lead_count(scores.data, dim), scores.tile_shape[dim]
    if rows_per_core is not None:
        rows = min(rows, rows_per_core)

    def reduce_line(local: torch.Tensor, reduce_op: ReduceOp, name: str) -> torch.Tensor:
        if axis is None:
            return local
        return small_allreduce(
            mesh,
            local,
            axis=axis,
            ledger=ledger,
            op=f"{op}.{name}",
            reduce_op=reduce_op,
            algorithm=algorithm,
            group_sizes=group_sizes,
        )

    def charge_line(numel: int, name: str) -> None:
        if axis is not None:
            charge_small_allreduce(
                mesh,
                axis=axis,
                numel=numel,
                ledger=ledger,
                op=f"{op}.{name}",
                algorithm=algorithm,
                group_sizes=group_sizes,
            )

    closed = mesh.mode is Mode.ESTIMATE and not walk  # from the tile shape alone
    if scale is not None:
        charge_vector(mesh, ledger, f"{op}.scale", rows=rows, length=length, cost=SCALE)
    if mask is not None:
        charge_vector(mesh, ledger, f"{op}.mask", rows=rows, length=length, cost=MASK_SELECT)
    if closed:
        # one float32 per softmax row: the tile's elements over its length along `dim`
        numel = math.prod(scores.data.shape[2:]) // scores.data.shape[tile_dim]
        _closed_rest(mesh, ledger, op, rows, length, numel, charge_line)
        return scores.replace(scores.data)
    s = as_dtype(scores.data, torch.float32)
    if scale is not None:
        s = s * scale
    keep = valid_mask(scores, dim)
    if mask is not None:
        keep = mask if keep is None else keep & mask
    if keep is not None:
        s = torch.where(keep, s, -math.inf)

    charge_vector(mesh, ledger, f"{op}.max", rows=rows, length=length, cost=MAX_ACC)
    row_max = reduce_line(s.amax(dim=tile_dim, keepdim=True), ReduceOp.MAX, "allreduce_max")
    row_max = torch.nan_to_num(row_max, nan=0.0, posinf=0.0, neginf=0.0)  # no finite max: 0
    charge_vector(mesh, ledger, f"{op}.exp", rows=rows, length=length, cost=EXP_SUB)
    e = torch.exp(s - row_max)
    charge_vector(mesh, ledger, f"{op}.sum", rows=rows, length=length, cost=SUM_ACC)
    total = reduce_line(e.sum(dim=tile_dim, keepdim=True), ReduceOp.SUM, "allreduce_sum")
    charge_vector(mesh, ledger, f"{op}.reciprocal", rows=1, length=rows, cost=RECIPROCAL)
    charge_vector(mesh, ledger, f"{op}.normalise", rows=rows, length=length, cost=NORMALISE)
    p = e / torch.where(total > 0, total, 1.0)
    return scores.replace(as_dtype(p, scores.data.dtype))


def _closed_rest(
    mesh: Mesh,
    ledger: Ledger,
    op: str,
    rows: int,
    length: int,
    numel: int,
    charge_line: Callable[[int, str], None],
) -> None:
    """`softmax`'s charges after the scale and the mask, in its order, each allreduce of
    `numel` elements (the float32 row values the walk's reductions hold)."""
    charge_vector(mesh, ledger, f"{op}.max", rows=rows, length=length, cost=MAX_ACC)
    charge_line(numel, "allreduce_max")
    charge_vector(mesh, ledger, f"{op}.exp", rows=rows, length=length, cost=EXP_SUB)
    charge_vector(mesh, ledger, f"{op}.sum", rows=rows, length=length, cost=SUM_ACC)
    charge_line(numel, "allreduce_sum")
    charge_vector(mesh, ledger, f"{op}.reciprocal", rows=1, length=rows, cost=RECIPROCAL)
    charge_vector(mesh, ledger, f"{op}.normalise", rows=rows, length=length, cost=NORMALISE)


# ---- attention masks ----------------------------------------------------------------------------
def causal_mask(
    *,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Which (query, key) pairs attend: 0 <= key <= query and, with a window W, query - key < W
    (transformers' causal mask and sliding-window overlay). Positions are int64 tensors
    broadcastable to each other (from `tile_positions`, or a KV cache's per-slot positions);
    -1 marks padding or an empty slot and never attends. Free: the hardware applies it through
    the select in `softmax`, which is charged there.
    """
    if sliding_window is not None and sliding_window < 1:
        raise WaferError(f"sliding_window must be >= 1, got {sliding_window}")
    keep = (key_positions >= 0) & (query_positions >= 0) & (key_positions <= query_positions)
    if sliding_window is not None:
        keep = keep & (query_positions - key_positions < sliding_window)
    return keep


def score_mask(
    scores: DistTensor,
    *,
    query_dim: int,
    key_dim: int,
    query_positions: torch.Tensor | None = None,
    key_positions: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal (and sliding-window) mask of a score tensor's tiles, e.g. prefill's S[Tq, Tk]
    blocks: positions default to the logical indices of `query_dim` and `key_dim`."""
    return causal_mask(
        query_positions=tile_positions(scores, query_dim, query_positions),
        key_positions=tile_positions(scores, key_dim, key_positions),
        sliding_window=sliding_window,
    )
