"""Elementwise and lookup ops on the mesh: the SiLU-gated product, the residual add, the
embedding lookup and the greedy argmax over the vocab.

Each works in both modes, is vectorised over the cores and masks padding where it could leak.
Legend: T tokens, D hidden, V vocab, Vt and Dt their tiles, P_A cores along the vocab axis.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.dequant import charge_dequant
from waferllm.kernels.vector import (
    ADD,
    COPY,
    MAX_ACC,
    SILU_MUL,
    SILU_PASSES,
    as_dtype,
    axis_of,
    charge_small_allreduce,
    charge_vector,
    lead_count,
    plain_layout,
    small_allreduce,
    valid_mask,
)
from waferllm.mesh.comm import ReduceAlgorithm, ReduceOp, broadcast, charge_broadcast
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.replicas import on_replicas
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode


def _check_same_layout(a: DistTensor, b: DistTensor, op: str) -> None:
    if a.layout != b.layout or a.mesh is not b.mesh:
        raise WaferError(f"{op}: '{a.name}' {a.layout} and '{b.name}' {b.layout} must match")


def silu_mul(
    mesh: Mesh, *, gate: DistTensor, up: DistTensor, ledger: Ledger, op: str = "silu_mul"
) -> DistTensor:
    """The gated FFN's SiLU(gate) * up, in place into `gate`'s buffer (free `up` afterwards).

    Layout: gate and up identical (decode: [*T, F] split along X). Zero padding stays zero.
    Cost: 5R vector instructions of the last tile dim (fast_exp's multiply-add and two squarings,
    the add, the multiply by up): 5R*max(floor, 7L/5F, 14L*s/5S), plus RL scalar divides
    (v / (1 + fast_exp(-v)): the divide is the one per-element scalar instruction).
    """
    _check_same_layout(gate, up, op)
    data = meta_pointwise(gate.data, up.data)
    if data is None:
        data = on_replicas(_silu_mul, gate.data, up.data)
    charge_vector(
        mesh,
        ledger,
        op,
        rows=lead_count(data, -1),
        length=gate.tile_shape[-1],
        cost=SILU_MUL,
        passes=SILU_PASSES,
    )
    return gate.replace(data)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate.contiguous()) * up


def add(mesh: Mesh, *, x: DistTensor, y: DistTensor, ledger: Ledger, op: str = "add") -> DistTensor:
    """Residual add x + y, in place into `x`'s buffer (the residual stream). Same layouts.
    Cost: R instructions of the last tile dim: R*max(floor, L/F, 3L*s/S)."""
    _check_same_layout(x, y, op)
    charge_vector(mesh, ledger, op, rows=lead_count(x.data, -1), length=x.tile_shape[-1], cost=ADD)
    data = meta_pointwise(x.data, y.data)
    return x.replace(on_replicas(torch.add, x.data, y.data) if data is None else data)


def meta_pointwise(*tiles: torch.Tensor) -> torch.Tensor | None:
    """Estimate mode: what an elementwise op (add, mul, silu) gives meta tiles, without its
    dispatches: the broadcast shape in the promoted dtype (tiles have the two mesh dims, so
    torch's type promotion is `promote_types`); None for real tiles."""
    if not all(t.is_meta for t in tiles):
        return None
    dtype = tiles[0].dtype
    for t in tiles[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return meta_empty(np.broadcast_shapes(*(tuple(t.shape) for t in tiles)), dtype)


def embed(
    mesh: Mesh,
    *,
    ids: torch.Tensor,
    table: DistTensor,
    ledger: Ledger,
    tokens_axis: Axis | None = None,
    op: str = "embed",
    walk: bool = False,
) -> DistTensor:
    """Embedding lookup on the mesh: the line owning each token's row extracts it and multicasts
    it along the vocab axis A.

    Layout: table[V_A, D_B] (vocab split along A, hidden along the other axis B, or replicated);
    ids[T] on the host -> out[T, D_B] with T replicated along A (decode, `E_y L^x` when A = X)
    or split along A when `tokens_axis` is A (prefill, `L_y E_x` when A = Y).
    Cost (independent of the ids, so estimate mode charges the same): T row copies of Dt on the
    owners, then T pipelined multicasts charged from the end of the line, the worst case:
    T*max(floor, 2Dt*s/S) + (P_A-1)*alpha + T*Dt*s/link.
    Estimate mode charges it from the table's tile shape alone unless `walk` (the oracle: the
    same records, SRAM, routes and output, tests/kernels/test_vocab_closed_form.py).
    """
    if len(table.layout.shape) != 2 or axis_of(table.layout, 0) is None:
        raise WaferError(
            f"embedding table '{table.name}' must be [V, D] with V split: {table.layout}"
        )
    axis = axis_of(table.layout, 0)
    assert axis is not None
    if tokens_axis is not None and tokens_axis is not axis:
        raise WaferError(f"tokens can only be split along the vocab axis {axis.value}")
    vocab = table.layout.shape[0]
    num_tokens = int(ids.shape[0])
    vt, dt = table.tile_shape
    if mesh.mode is Mode.ESTIMATE and not walk:
        return _embed_closed(
            mesh, table=table, ledger=ledger, num_tokens=num_tokens, tokens_axis=tokens_axis, op=op
        )
    if mesh.mode is Mode.FUNCTIONAL:
        if ids.dim() != 1 or ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise WaferError(f"token ids must be a 1-D tensor of values in [0, {vocab})")
        ids = ids.to(table.data.device)
        owner, local = ids // vt, ids % vt
        if axis is Axis.Y:  # [T, cols, Dt] -> [rows, cols, T, Dt]
            picked = table.data[owner, :, local, :].permute(1, 0, 2).unsqueeze(0)
        else:  # [rows, T, Dt] -> [rows, cols, T, Dt]
            picked = table.data[:, owner, local, :].unsqueeze(1)
        picked = picked.to(mesh.compute_dtype)  # a narrower held table: `DistTensor.values`
        rows_data = picked.expand(*mesh.shape, num_tokens, dt)  # held once per line
    else:
        rows_data = torch.empty(
            (*mesh.shape, num_tokens, dt), dtype=table.data.dtype, device="meta"
        )
    _charge_pick(mesh, ledger, table, num_tokens, op)
    # every line holds the same rows now; the multicast is priced from the worst-case root
    rows_data = broadcast(mesh, rows_data, axis=axis, root=0, ledger=ledger, op=f"{op}.bcast")
    layout = _embed_layout(table, num_tokens, tokens_axis)
    if tokens_axis is None:
        return mesh.register(rows_data, layout, f"{op}.out")
    tt = layout.tile_shape(*mesh.shape)[0]
    num = mesh.size(axis)
    padded = torch.nn.functional.pad(rows_data, (0, 0, 0, num * tt - num_tokens))
    blocks = padded.reshape(*mesh.shape, num, tt, dt)
    # core i along A keeps token block i: the diagonal of (core index, block index)
    if axis is Axis.Y:
        mine = blocks.diagonal(0, 0, 2).permute(3, 0, 1, 2)
    else:
        mine = blocks.diagonal(0, 1, 2).permute(0, 3, 1, 2)
    return mesh.register(mine.contiguous(), layout, f"{op}.out")


def _charge_pick(mesh: Mesh, ledger: Ledger, table: DistTensor, num_tokens: int, op: str) -> None:
    """`embed`'s charges before the multicast: the owners' row copies and dequantisation."""
    dt = table.tile_shape[1]
    charge_vector(mesh, ledger, f"{op}.extract", rows=num_tokens, length=dt, cost=COPY)
    # a compressed table's rows are expanded by their owner (groups along D), sent as float16
    charge_dequant(mesh, ledger, f"{op}.dequant", table.stored, reduced=dt, other=num_tokens)


def _embed_layout(table: DistTensor, num_tokens: int, tokens_axis: Axis | None) -> Layout:
    """The lookup's output [T, D]: D split like the table's, T along `tokens_axis` if any."""
    placement = {axis_of(table.layout, 1): 1, tokens_axis: 0}
    return plain_layout((num_tokens, table.layout.shape[1]), placement)


def _embed_closed(
    mesh: Mesh,
    *,
    table: DistTensor,
    ledger: Ledger,
    num_tokens: int,
    tokens_axis: Axis | None,
    op: str,
) -> DistTensor:
    """`embed`'s charges in estimate mode from the table's tile shape (the multicast of T rows
    of Dt, without data), the output registered in the walk's shape (T or its tile)."""
    axis = axis_of(table.layout, 0)
    assert axis is not None
    dt = table.tile_shape[1]
    _charge_pick(mesh, ledger, table, num_tokens, op)
    nbytes = num_tokens * dt * mesh.device.storage_bytes  # `comm.bytes_per_core` of the rows
    charge_broadcast(mesh, axis=axis, root=0, nbytes=nbytes, ledger=ledger, op=f"{op}.bcast")
    layout = _embed_layout(table, num_tokens, tokens_axis)
    tokens = num_tokens if tokens_axis is None else layout.tile_shape(*mesh.shape)[0]
    rows = meta_empty((*mesh.shape, tokens, dt), table.data.dtype)
    return mesh.register(rows, layout, f"{op}.out")


def argmax(
    mesh: Mesh,
    *,
    logits: DistTensor,
    ledger: Ledger,
    op: str = "argmax",
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    walk: bool = False,
) -> DistTensor:
    """Greedy token selection on the mesh: torch.argmax over the last (vocab) dim, ties to the
    lowest index, padded vocab entries -inf.

    Layout: logits[*T, V] with V split along A -> int64 ids[*T] replicated along A (T keeps its
    split along the other axis, if any). Schedule: local max and first index (R instructions of
    Vt); allreduce-max of the values (one per token); each core offers its global index where
    its value equals the maximum; allreduce-max of the negated index (32-bit: two words).
    Cost: R*max(floor, Vt/F, Vt*s/S) + allreduce(R*s) + allreduce(2R*s).
    Estimate mode charges it from the logits' tile shape alone unless `walk` (the oracle: the
    same records, SRAM, routes and output, tests/kernels/test_vocab_closed_form.py).
    """
    v_dim = len(logits.layout.shape) - 1
    axis = axis_of(logits.layout, v_dim)
    vt = logits.tile_shape[-1]
    rows = lead_count(logits.data, -1)
    out_layout = _argmax_layout(logits.layout)
    if mesh.mode is Mode.ESTIMATE and not walk:
        charge_vector(mesh, ledger, f"{op}.local", rows=rows, length=vt, cost=MAX_ACC)
        if axis is not None:
            _argmax_allreduces_closed(mesh, logits, ledger, op, axis, algorithm)
        ids = meta_empty(logits.data.shape[:-1], torch.int64)
        return mesh.register(ids, out_layout, f"{op}.out")
    valid = valid_mask(logits, v_dim)

    def local_max(data: torch.Tensor, *keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = as_dtype(data, torch.float32)
        if keep:
            values = torch.where(keep[0], values, -math.inf)
        best, local = values.max(dim=-1, keepdim=True)
        return best, local

    charge_vector(mesh, ledger, f"{op}.local", rows=rows, length=vt, cost=MAX_ACC)
    inputs = (logits.data,) if valid is None else (logits.data, valid)
    best, local = on_replicas(local_max, *inputs)
    if axis is not None:
        offset = torch.arange(mesh.size(axis), device=local.device) * vt
        shape = [1] * local.dim()
        shape[axis.tensor_dim] = mesh.size(axis)
        index = local + offset.reshape(shape)
        top = small_allreduce(
            mesh,
            best,
            axis=axis,
            ledger=ledger,
            op=f"{op}.allreduce_max",
            reduce_op=ReduceOp.MAX,
            algorithm=algorithm,
        )
        lowest = torch.iinfo(torch.int64).min
        offer = on_replicas(lambda b, t, i: torch.where(b == t, -i, lowest), best, top, index)
        # a 32-bit index travels as two 16-bit words
        offer = offer.expand(*offer.shape[:-1], 2)
        index = -small_allreduce(
            mesh,
            offer,
            axis=axis,
            ledger=ledger,
            op=f"{op}.allreduce_index",
            reduce_op=ReduceOp.MAX,
            algorithm=algorithm,
        )[..., :1]
    else:
        index = local
    ids = on_replicas(lambda i: i.squeeze(-1).contiguous(), index)
    return mesh.register(ids, out_layout, f"{op}.out")


def _argmax_allreduces_closed(
    mesh: Mesh,
    logits: DistTensor,
    ledger: Ledger,
    op: str,
    axis: Axis,
    algorithm: ReduceAlgorithm,
) -> None:
    """`argmax`'s two allreduces in estimate mode, each of the walk's element count: one
    value per token, then the index as two 16-bit words per token."""
    tokens = math.prod(logits.data.shape[2:-1])
    for name, words in (("allreduce_max", 1), ("allreduce_index", 2)):
        charge_small_allreduce(
            mesh,
            axis=axis,
            numel=tokens * words,
            ledger=ledger,
            op=f"{op}.{name}",
            algorithm=algorithm,
        )


def _argmax_layout(logits: Layout) -> Layout:
    """The ids [*T] of logits [*T, V]: T keeps its split, the vocab axis is gone."""
    v_dim = len(logits.shape) - 1
    return Layout(
        logits.shape[:-1],
        y_dim=logits.y_dim if logits.y_dim != v_dim else None,
        x_dim=logits.x_dim if logits.x_dim != v_dim else None,
    )
