"""RMSNorm on the mesh: a local sum of squares, an allreduce of one scalar per token, a scale.

Exactly transformers' LlamaRMSNorm (the divisor is the true hidden size; padding is masked).
Legend: T tokens, D hidden, Dt its tile; s storage bytes, F flops/cycle, S SRAM bytes/cycle.
"""

from __future__ import annotations

import math

import torch

from waferllm.errors import WaferError
from waferllm.kernels.vector import (
    RSQRT,
    SCALE_MUL,
    SQUARE_ACC,
    as_dtype,
    axis_of,
    charge_small_allreduce,
    charge_vector,
    lead_count,
    small_allreduce,
    valid_mask,
)
from waferllm.mesh.comm import ReduceAlgorithm, ReduceOp
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.replicas import on_replicas
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode


def rms_norm(
    mesh: Mesh,
    *,
    x: DistTensor,
    weight: DistTensor,
    ledger: Ledger,
    eps: float,
    op: str = "rmsnorm",
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    walk: bool = False,
) -> DistTensor:
    """RMSNorm over the last (hidden) dim D, exactly as transformers' LlamaRMSNorm.

    Layout: x[*T, D] with D split along one axis A (or local), any split of T; weight[D] with
    D split along A, replicated along the other axis -> a new tensor in x's layout.
    Schedule: local sum of squares (T instructions of Dt), allreduce of one scalar per token
    along A, r = rsqrt(sum / D_true + eps) (T instructions of 1), y = w * (x * r) (T of Dt).
    Padded entries are masked out of the sum; the divisor is the true D.
    Cost: T*[max(floor, 2Dt/F, Dt*s/S) + floor + 3c + max(floor, 2Dt/F, 3Dt*s/S)] + allreduce(T*s),
    c the scalar instruction (`scalar_cycles_per_element`; the rsqrt's divide, sqrt, reciprocal).
    Estimate mode charges it from x's tile shape alone unless `walk` (the oracle: the same
    records, SRAM and output, tests/kernels/test_norm_softmax_closed_form.py).
    """
    d_dim = len(x.layout.shape) - 1
    axis = axis_of(x.layout, d_dim)
    d_true = x.layout.shape[d_dim]
    if weight.layout.shape != (d_true,) or axis_of(weight.layout, 0) != axis:
        raise WaferError(
            f"RMSNorm weight '{weight.name}' {weight.layout} must be [{d_true}] split like the "
            f"hidden dim of '{x.name}' ({x.layout})"
        )
    dtype = x.data.dtype
    if mesh.mode is Mode.ESTIMATE and not walk:
        return _rms_norm_closed(mesh, x=x, ledger=ledger, op=op, axis=axis, algorithm=algorithm)
    valid = valid_mask(x, d_dim)

    def masked(data: torch.Tensor, *keep: torch.Tensor) -> torch.Tensor:
        xf = as_dtype(data, torch.float32)
        return torch.where(keep[0], xf, 0.0) if keep else xf

    inputs = (x.data,) if valid is None else (x.data, valid)
    xf = on_replicas(masked, *inputs)
    rows, dt = lead_count(x.data, d_dim), x.data.shape[-1]
    charge_vector(mesh, ledger, f"{op}.sum_squares", rows=rows, length=dt, cost=SQUARE_ACC)
    sum_sq = on_replicas(_sum_squares, xf)
    if axis is not None:
        sum_sq = small_allreduce(
            mesh,
            sum_sq,
            axis=axis,
            ledger=ledger,
            op=f"{op}.allreduce",
            reduce_op=ReduceOp.SUM,
            algorithm=algorithm,
        )
    charge_vector(mesh, ledger, f"{op}.rsqrt", rows=rows, length=1, cost=RSQRT)
    w = weight.data  # [Dt] tiles, aligned with x's last dim
    if x.data.dim() > 3:
        w = w.reshape(*mesh.shape, *([1] * (x.data.dim() - 3)), dt)
    charge_vector(mesh, ledger, f"{op}.scale", rows=rows, length=dt, cost=SCALE_MUL)

    def scaled(xf: torch.Tensor, sum_sq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(sum_sq / d_true + eps)
        return as_dtype(w * as_dtype(xf * scale, dtype), dtype)

    out = on_replicas(scaled, xf, sum_sq, w)
    return mesh.register(out, x.layout, f"{op}.out")


def _rms_norm_closed(
    mesh: Mesh,
    *,
    x: DistTensor,
    ledger: Ledger,
    op: str,
    axis: Axis | None,
    algorithm: ReduceAlgorithm,
) -> DistTensor:
    """`rms_norm`'s charges in estimate mode from x's tiles' shape: the allreduce of one
    float32 sum per token (its element count), and the output registered like the walk's."""
    shape = x.data.shape
    rows, dt = lead_count(x.data, len(x.layout.shape) - 1), shape[-1]
    charge_vector(mesh, ledger, f"{op}.sum_squares", rows=rows, length=dt, cost=SQUARE_ACC)
    if axis is not None:
        charge_small_allreduce(  # one float32 sum per token
            mesh,
            axis=axis,
            numel=math.prod(shape[2:-1]),
            ledger=ledger,
            op=f"{op}.allreduce",
            algorithm=algorithm,
        )
    charge_vector(mesh, ledger, f"{op}.rsqrt", rows=rows, length=1, cost=RSQRT)
    charge_vector(mesh, ledger, f"{op}.scale", rows=rows, length=dt, cost=SCALE_MUL)
    out = meta_empty(shape, x.data.dtype)
    return mesh.register(out, x.layout, f"{op}.out")


def _sum_squares(xf: torch.Tensor) -> torch.Tensor:
    return (xf * xf).sum(dim=-1, keepdim=True)
