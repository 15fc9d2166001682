"""Decode attention's records from its sizes alone: `decode_attention_cost`, no tensors.

The estimate layer prices a request's narrower cache windows with it instead of re-walking the
attention (`estimate.decode_walks`): the same charges, in the same order, through the same
primitives as `attention.decode_attention` (preceded by the compressed cache's window read,
`KvStore.charge_read`); routes and SRAM are those of the widest window's full walk.
`estimated_decode_attention` is the estimate-mode layer's attention: those records and the
kernel's own SRAM buffers. tests/kernels/test_attention_cost.py compares both with the walk.
"""

from __future__ import annotations

import math

import torch

from waferllm.kernels.attention import (
    attention_output_layout,
    charge_probs_spread,
    head_spread,
    loop_order,
)
from waferllm.kernels.dequant import charge_dequant
from waferllm.kernels.gemv import best_ktree_fanouts
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.vector import (
    EXP_SUB,
    MASK_SELECT,
    MAX_ACC,
    NORMALISE,
    RECIPROCAL,
    SCALE,
    SUM_ACC,
    charge_vector,
)
from waferllm.mesh.comm import charge_allreduce
from waferllm.mesh.comm_groups import charge_segmented_allreduce
from waferllm.mesh.compute import charge_matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh


def decode_attention_cost(
    mesh: Mesh,
    *,
    heads: HeadLayout,
    batch: int,
    width: int,
    stored: StoredDtype,
    ledger: Ledger,
) -> None:
    """Charge `ledger` what one layer's decode attention charges for `batch` sequences reading
    `width` cache slots per row (`attention.decode_attention`'s cost, its docstring's closed
    form): each sequence's window read from a `stored` cache, then with G kv heads of n query
    heads of H slots per column, a = B*G*n (softmax rows per core):
      scores  B*G matmuls [n, H] @ [H, w]         pv  B*G matmuls [n, w] @ [w, Hv]
      scores' group sum: a*w values (a segmented chain, or the row's K-tree with one group)
      softmax along Y: scale, mask, max, exp, sum, normalise on min(a, B*spread) rows of w,
      one instruction of reciprocals, K-tree allreduces of a values (max, sum)
      probabilities gathered to and multicast from the group root: a*w values
      pv's K-tree allreduce along Y: a*Hv values."""
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots
    rows, cols = mesh.shape
    for _ in range(batch):  # KvStore.charge_read
        for what, slots in (("k", h), ("v", hv)):
            charge_dequant(
                mesh, ledger, f"kv_dequant_{what}", stored, reduced=slots, other=g * width
            )
    tile = (rows, cols, batch, g, n)
    scores = batch * g * n * width  # elements per core
    spread = head_spread(heads)
    charge_matmul(
        mesh,
        ledger,
        "scores",
        a_shape=(*tile, h),
        n=width,
        vector=loop_order(mesh, m=n, k=h, n=width),
    )
    if len(heads.group_sizes) == 1:
        charge_allreduce(mesh, axis=Axis.X, numel=scores, ledger=ledger, op="scores.allreduce")
    else:
        charge_segmented_allreduce(
            mesh,
            axis=Axis.X,
            group_sizes=heads.group_sizes,
            numel=scores,
            ledger=ledger,
            op="scores.group",
            broadcast_result=spread is None,
        )
    _softmax_cost(
        mesh,
        ledger,
        rows=batch * g * n if spread is None else min(batch * g * n, batch * spread.rows_per_core),
        length=width,
        numel=batch * g * n,
    )
    if spread is not None:
        charge_probs_spread(mesh, spread, nbytes=scores * mesh.device.storage_bytes, ledger=ledger)
    order = loop_order(mesh, m=n, k=width, n=hv)
    charge_matmul(mesh, ledger, "pv", a_shape=(*tile, width), n=hv, vector=order)
    charge_allreduce(
        mesh, axis=Axis.Y, numel=math.prod((batch, g, n, hv)), ledger=ledger, op="pv.allreduce"
    )


def estimated_decode_attention(
    mesh: Mesh,
    *,
    q: DistTensor,
    heads: HeadLayout,
    batch: int,
    width: int,
    stored: StoredDtype,
    ledger: Ledger,
) -> DistTensor:
    """`attention.decode_attention` (after `KvStore.charge_read`) in estimate mode without its
    tensors: its records (`decode_attention_cost`, whose charges configure the same routes),
    its scores buffer [B, G, n, w] per core held for the kernel (the softmax works in it),
    and its output attn[B, C*G*n*Hv] (meta, q's dtype) registered as the walk registers it."""
    decode_attention_cost(mesh, heads=heads, batch=batch, width=width, stored=stored, ledger=ledger)
    rows, cols = mesh.shape
    g, n = heads.kv_per_tile, heads.n_rep
    with mesh.sram.scope():
        layout = Layout((batch, cols * g, n, rows * width), y_dim=3, x_dim=1, tag="cache_slots")
        scores = torch.empty((rows, cols, batch, g, n, width), dtype=q.data.dtype, device="meta")
        mesh.register(scores, layout, "scores")
    out = torch.empty((rows, cols, batch, heads.o_width), dtype=q.data.dtype, device="meta")
    return mesh.register(out, attention_output_layout(q.layout, heads), "attn")


def _softmax_cost(mesh: Mesh, ledger: Ledger, *, rows: int, length: int, numel: int) -> None:
    """`softmax.softmax`'s charges along Y with a scale and a mask and no padding: `rows`
    instructions of `length` per pass, K-tree allreduces of `numel` values per core."""
    fanouts = best_ktree_fanouts(mesh.device, mesh.rows)
    for name, cost in (("scale", SCALE), ("mask", MASK_SELECT), ("max", MAX_ACC)):
        charge_vector(mesh, ledger, f"softmax.{name}", rows=rows, length=length, cost=cost)
    charge_allreduce(
        mesh, axis=Axis.Y, numel=numel, ledger=ledger, op="softmax.allreduce_max", fanouts=fanouts
    )
    charge_vector(mesh, ledger, "softmax.exp", rows=rows, length=length, cost=EXP_SUB)
    charge_vector(mesh, ledger, "softmax.sum", rows=rows, length=length, cost=SUM_ACC)
    charge_allreduce(
        mesh, axis=Axis.Y, numel=numel, ledger=ledger, op="softmax.allreduce_sum", fanouts=fanouts
    )
    charge_vector(mesh, ledger, "softmax.reciprocal", rows=1, length=rows, cost=RECIPROCAL)
    charge_vector(mesh, ledger, "softmax.normalise", rows=rows, length=length, cost=NORMALISE)


__all__ = ["decode_attention_cost", "estimated_decode_attention"]
