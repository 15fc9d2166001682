"""Chunked prefill attention in estimate mode from its sizes alone: no meta tensors.

`estimated_cached_prefill_attention` charges what `attention_chunked.cached_prefill_attention`
charges (the same records in the same order through the same pricing primitives, the same
SRAM buffers, routes and output), one key block at a time from (Lt, Lk); the walk stays the
oracle (`walk=True`, tests/kernels/test_attention_chunked_cost.py). `BlockRecords` lets the
blocks of one chunked walk reuse each other's records across chunks.
Legend as in `attention.py`: R rows, C columns, Lt query tokens per row, Lk key tokens per row,
G kv heads per column, n query heads per kv head, H q/k slots, Hv v slots per column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import torch

from waferllm.kernels.attention import attention_output_layout, scratch_buffer
from waferllm.kernels.gemm_t import BlockOwners, block_owners, step_owners
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
from waferllm.mesh.charges import charge_multicast, charge_reduce_to_owners
from waferllm.mesh.comm import charge_ring_shift
from waferllm.mesh.comm_groups import charge_segmented_allreduce
from waferllm.mesh.compute import charge_matmul
from waferllm.mesh.cost import Ledger, Record
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh

RESCALE_ADD = (2, 3, 0)  # acc = acc * alpha + x: read acc, x; write acc (per element)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Block:
    """One key block's records: its Q K^T and softmax part, then its P V part (each charged
    after the scratch buffers it allocates)."""

    scores: tuple[Record, ...]
    pv: tuple[Record, ...]


_BlockKey = tuple[int, bool, int, int, int, int, tuple[int, ...], int, int]


class BlockRecords:
    """The key blocks one chunked prefill walk has priced, by (mesh, whether the ledger
    prices, the head layout's sizes, Lt, Lk): a later chunk's block of the same sizes on the
    same mesh appends these records instead of pricing them again. The key is complete
    within one walk: a block's charges read the mesh (device, grid), G, n, H, Hv, the kv-group
    sizes, Lt and Lk and nothing else; every chunk's attention charges into a fresh layer
    ledger under the same scopes with count 1; the routes the first pricing configured stay
    configured on that mesh until the walk ends. Made by the walk and dropped with it
    (`model.chunked.prefill_chunks`): it holds its meshes, so their ids are not reused."""

    def __init__(self) -> None:
        self._blocks: dict[_BlockKey, _Block] = {}
        self._meshes: list[Mesh] = []

    def key(self, mesh: Mesh, ledger: Ledger, heads: HeadLayout, lt: int, lk: int) -> _BlockKey:
        if not any(m is mesh for m in self._meshes):
            self._meshes.append(mesh)
        sizes = (heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots)
        return (id(mesh), ledger.prices, *sizes, tuple(heads.group_sizes), lt, lk)

    def get(self, key: _BlockKey) -> _Block | None:
        return self._blocks.get(key)

    def put(self, key: _BlockKey, block: _Block) -> None:
        self._blocks[key] = block


def estimated_cached_prefill_attention(
    mesh: Mesh,
    *,
    q: DistTensor,
    key_rows: Sequence[int],
    heads: HeadLayout,
    ledger: Ledger,
    blocks: BlockRecords | None = None,
) -> DistTensor:
    """`cached_prefill_attention` of q (tile [Lt, G*n*H]) against key chunks of `key_rows`
    tokens per row each (Lk), from the sizes: the online state [G, n, Lt, Hv + 2] in scratch;
    per key block, its scratch and `_charge_scores` then `_charge_pv` (a block of sizes
    already charged in this call replays its records, as the walk does; one in `blocks`
    appends them); one instruction of G*n*Lt reciprocals and G*n*Lt of Hv (the normalise);
    the output attn [T_y, (C*G*n*Hv)_x] (meta, q's dtype) registered as the walk does."""
    g, n, lt = heads.kv_per_tile, heads.n_rep, q.tile_shape[0]
    walked: dict[int, tuple[int, int]] = {}
    with mesh.sram.scope():
        scratch_buffer(mesh, "online.state", (g, n, lt, heads.value_slots + 2))
        for lk in key_rows:
            if lk in walked:
                ledger.replay(*walked[lk])
                continue
            start = ledger.mark()
            with mesh.sram.scope():
                _block(mesh, heads=heads, lt=lt, lk=lk, ledger=ledger, blocks=blocks)
            walked[lk] = (start, ledger.mark())
        charge_vector(mesh, ledger, "online.reciprocal", rows=1, length=g * n * lt, cost=RECIPROCAL)
        charge_vector(
            mesh,
            ledger,
            "online.normalise",
            rows=g * n * lt,
            length=heads.value_slots,
            cost=NORMALISE,
        )
    out = torch.empty((*mesh.shape, lt, heads.o_width), dtype=q.data.dtype, device="meta")
    return mesh.register(out, attention_output_layout(q.layout, heads), "attn")


def _block(
    mesh: Mesh,
    *,
    heads: HeadLayout,
    lt: int,
    lk: int,
    ledger: Ledger,
    blocks: BlockRecords | None,
) -> None:
    """One key block (`attention_chunked._online_block`): its scratch and records, priced or
    appended from `blocks`."""
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots
    owners = block_owners(heads.group_sizes, mesh.rows)
    key = None if blocks is None else blocks.key(mesh, ledger, heads, lt, lk)
    known = None if blocks is None or key is None else blocks.get(key)
    scratch_buffer(mesh, "scores", (g, n, lt, owners.per_col * lk))
    scratch_buffer(mesh, "qk.b_ring", (g * h * lk,))  # gemm_t_steps: K's circulating copy
    scratch_buffer(mesh, "qk.partial", (2 * g * n * lt * lk,))  # this step's and the last one's
    start = ledger.mark()
    if known is None:
        _charge_scores(mesh, heads=heads, owners=owners, lt=lt, lk=lk, ledger=ledger)
    else:
        append_records(ledger, known.scores)
    middle = ledger.mark()
    scratch_buffer(mesh, "pv.acc", (g, n, lt, hv))
    scratch_buffer(mesh, "v_ring", (g, 1, lk, hv))
    scratch_buffer(mesh, "p_block", (g, n, lt, lk))
    if known is not None:
        append_records(ledger, known.pv)
        return
    _charge_pv(mesh, heads=heads, owners=owners, lt=lt, lk=lk, ledger=ledger)
    if blocks is not None and key is not None:
        priced = ledger.records
        blocks.put(key, _Block(scores=tuple(priced[start:middle]), pv=tuple(priced[middle:])))


def append_records(ledger: Ledger, records: Sequence[Record]) -> None:
    """Append records priced in another chunk's layer ledger of the same walk (under the same
    scopes, count 1) as they are (`Ledger.extend`: a budget ledger checks them)."""
    held = Ledger()
    held.records = list(records)
    ledger.extend(held)


def _charge_scores(
    mesh: Mesh, *, heads: HeadLayout, owners: BlockOwners, lt: int, lk: int, ledger: Ledger
) -> None:
    """The block's Q K^T (`gemm_t_steps` on q [G, n, Lt, H] and k^T [G, 1, H, Lk]) and its
    online softmax up to P V: scale, mask, max and exp and sum over G*n*Lt rows of Kc*Lk,
    the max and the sum allreduced (G*n*Lt values) within the kv-group, the state update's
    max, exp and multiply-add over G*n*Lt rows of one element."""
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    lines, length = g * n * lt, owners.per_col * lk
    a_shape = (*mesh.shape, g, n, lt, h)
    _charge_gemm_t(mesh, a_shape=a_shape, b_numel=g * h * lk, lk=lk, owners=owners, ledger=ledger)

    def vector(op: str, cost: tuple[int, int, int], width: int = length) -> None:
        charge_vector(mesh, ledger, f"softmax.{op}", rows=lines, length=width, cost=cost)

    def reduce(name: str) -> None:
        charge_segmented_allreduce(
            mesh,
            axis=Axis.X,
            group_sizes=tuple(int(s) for s in heads.group_sizes),
            numel=lines,
            ledger=ledger,
            op=f"softmax.{name}",
        )

    vector("scale", SCALE)
    vector("mask", MASK_SELECT)
    vector("max", MAX_ACC)
    reduce("allreduce_max")
    vector("online.max", MAX_ACC, width=1)
    vector("exp", EXP_SUB)
    vector("sum", SUM_ACC)
    reduce("allreduce_sum")
    vector("online.exp", EXP_SUB, width=1)
    vector("online.sum", RESCALE_ADD, width=1)


def _charge_gemm_t(
    mesh: Mesh,
    *,
    a_shape: tuple[int, ...],
    b_numel: int,
    lk: int,
    owners: BlockOwners,
    ledger: Ledger,
) -> None:
    """`gemm_t_steps`'s charges in estimate mode (op "qk"): R overlapped steps of {local
    multiply, shift of b along Y, from the second on the previous block's chain reduce
    within the group}, the last reduce after them (groups of 2+ columns only)."""
    b = torch.empty((*mesh.shape, b_numel), device="meta")  # the bytes of one core's b tile
    nbytes = math.prod(a_shape[2:-1]) * lk * mesh.device.storage_bytes  # a block [G, n, Lt, Lk]
    owner0 = step_owners(owners, mesh.rows, 0)
    overhead = mesh.device.step_overhead_cycles

    def reduce(*, follows: bool) -> None:
        if owners.shared:
            charge_reduce_to_owners(
                mesh,
                axis=Axis.X,
                owner=owner0,
                nbytes=nbytes,
                ledger=ledger,
                op="qk.reduce",
                follows_stream=follows,
            )

    def step(*, first: bool) -> None:
        with ledger.overlap("qk.step", step_overhead_cycles=overhead):
            charge_matmul(mesh, ledger, "qk.local", a_shape=a_shape, n=lk)
            charge_ring_shift(mesh, b, axis=Axis.Y, ledger=ledger, op="qk.shift")
            if not first:
                reduce(follows=True)

    step(first=True)
    for _ in mesh.charged_steps(mesh.rows - 1, ledger):
        step(first=False)
    with ledger.overlap("qk.reduce_last") if owners.shared else contextlib.nullcontext():
        reduce(follows=False)


def _charge_pv(
    mesh: Mesh, *, heads: HeadLayout, owners: BlockOwners, lt: int, lk: int, ledger: Ledger
) -> None:
    """`pv_steps`'s charges in estimate mode, then the output's rescale: R overlapped steps of
    {the owner's multicast of the P block [G, n, Lt, Lk] within the group, local P V, shift
    of v [G, 1, Lk, Hv] along Y}; G*n*Lt rows of a multiply-add of Hv."""
    g, n, hv = heads.kv_per_tile, heads.n_rep, heads.value_slots
    v = torch.empty((*mesh.shape, g * lk * hv), device="meta")  # the bytes of one core's v tile
    nbytes = g * n * lt * lk * mesh.device.storage_bytes
    owner0 = step_owners(owners, mesh.rows, 0)
    for _ in mesh.charged_steps(mesh.rows, ledger):
        with ledger.overlap("pv.step", step_overhead_cycles=mesh.device.step_overhead_cycles):
            if owners.shared:
                charge_multicast(
                    mesh, axis=Axis.X, owner=owner0, nbytes=nbytes, ledger=ledger, op="pv.bcast"
                )
            charge_matmul(mesh, ledger, "pv.local", a_shape=(*mesh.shape, g, n, lt, lk), n=hv)
            charge_ring_shift(mesh, v, axis=Axis.Y, ledger=ledger, op="pv.shift")
    charge_vector(
        mesh, ledger, "softmax.online.rescale", rows=g * n * lt, length=hv, cost=RESCALE_ADD
    )


__all__ = ["RESCALE_ADD", "BlockRecords", "append_records", "estimated_cached_prefill_attention"]
