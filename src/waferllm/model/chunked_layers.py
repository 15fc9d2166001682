"""Estimate mode: a chunked prefill's walked layer (each region's) walked once per chunk size
and walk, the later chunks of that size replayed from its records.

Every full chunk of a chunked prefill runs the same layer on the same shapes; only its
attention sees more cached keys. `LayerRecords` keeps, per (mesh, chunk tokens, cached key
sizes), the layer's records before and after the attention, the SRAM it held above what was
live before it, its query and its k/v; a later such chunk appends those records around its own
attention (priced in closed form, `kernels.attention_chunked_cost`), reaches the same SRAM high
water mark and registers the same k and v. The walk itself is `chunked._chunk`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from waferllm.kernels.attention_chunked_cost import (
    BlockRecords,
    append_records,
    estimated_cached_prefill_attention,
)
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.cost import Ledger, Record
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh
from waferllm.model.layers import Attend

LAYER_SCOPE = "layer"  # what `chunked._chunk` names a layer's records
ATTENTION_SCOPE = "attn"  # what `layers.prefill_layer` names the records of its `attend`
Walk = Callable[..., tuple[DistTensor, DistTensor, DistTensor]]  # (attend=) -> (x, k, v)
_Key = tuple[int, int, frozenset[int]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Walked:
    pre: tuple[Record, ...]  # the layer's records before its attention
    post: tuple[Record, ...]  # and after it
    high_water_bytes: int  # the most it held per core above what was live before it
    q: DistTensor  # its query: the attention's tile sizes and layout (never read as data)
    kv: tuple[tuple[Layout, tuple[int, ...], torch.dtype], ...]  # k and v as registered


class LayerRecords:
    """The walked layers of one chunked walk, by (mesh, chunk tokens, the distinct key sizes
    its attention reads, its own included). The key is complete within the walk: the layer's
    weights, plan and scopes are the walk's; its shapes follow from the chunk's tokens; its
    SRAM profile above what was live before it from those and the distinct key block sizes
    (one block's scratch at a time; a size already priced in the call takes none); the routes
    its first walk configured stay configured until the walk ends. A replay is exact when
    every live buffer's bytes are one number for all cores (the high water mark then moves
    with what is live) and it stays within the SRAM (else the chunk is walked, and raises
    what the walk raises). Made by the walk and dropped with it; it holds its meshes, so
    their ids are not reused."""

    def __init__(self) -> None:
        self._walked: dict[_Key, _Walked] = {}
        self._meshes: list[Mesh] = []

    def layer(
        self,
        mesh: Mesh,
        *,
        x: DistTensor,
        tokens: int,
        cached_rows: Sequence[int],
        heads: HeadLayout,
        ledger: Ledger,
        blocks: BlockRecords,
        attend: Attend,
        walk: Walk,
    ) -> tuple[DistTensor, DistTensor, DistTensor]:
        """The layer of a chunk of `tokens` whose attention reads cached chunks of
        `cached_rows` tokens per row: walked (`walk`, with `attend`) and remembered, or
        replayed."""
        if not any(m is mesh for m in self._meshes):
            self._meshes.append(mesh)
        own_rows = -(-tokens // mesh.rows)  # its own k tile's, a key block like the cached
        key = (id(mesh), tokens, frozenset([*cached_rows, own_rows]))
        known = self._walked.get(key)
        if known is not None and _uniform(mesh):
            live = mesh.sram.live_bytes_max
            if live + known.high_water_bytes <= mesh.sram.capacity_bytes:
                rows = [*cached_rows, known.q.tile_shape[0]]
                return (x, *_replay(known, mesh, rows, heads, ledger, blocks))
        walked, out = _walk(mesh, ledger, attend, walk)
        if walked is not None:
            self._walked[key] = walked
        return out


def _walk(
    mesh: Mesh, ledger: Ledger, attend: Attend, walk: Walk
) -> tuple[_Walked | None, tuple[DistTensor, DistTensor, DistTensor]]:
    """The layer walked, and what a replay needs (None when the live bytes are not uniform)."""
    uniform, before = _uniform(mesh), mesh.sram.live_bytes_max
    marks: list[int] = []
    queries: list[DistTensor] = []

    def marked(q: DistTensor, k: DistTensor, v: DistTensor, into: Ledger) -> DistTensor:
        marks.append(into.mark())
        queries.append(q)
        out = attend(q, k, v, into)
        marks.append(into.mark())
        return out

    start = ledger.mark()
    with mesh.sram.watch() as watch, ledger.scope(LAYER_SCOPE):
        x, k, v = walk(attend=marked)
    if not uniform or len(marks) != 2:
        return None, (x, k, v)
    records = ledger.records
    walked = _Walked(
        pre=tuple(records[start : marks[0]]),
        post=tuple(records[marks[1] :]),
        high_water_bytes=watch.bytes_per_core - before,
        q=queries[0],
        kv=tuple((t.layout, tuple(t.data.shape), t.data.dtype) for t in (k, v)),
    )
    return walked, (x, k, v)


def _replay(
    known: _Walked,
    mesh: Mesh,
    key_rows: Sequence[int],
    heads: HeadLayout,
    ledger: Ledger,
    blocks: BlockRecords,
) -> tuple[DistTensor, DistTensor]:
    """The remembered layer's records around this chunk's attention, its SRAM high water mark
    reached, its k and v registered as the walk registers them."""
    append_records(ledger, known.pre)
    with ledger.scope(LAYER_SCOPE), ledger.scope(ATTENTION_SCOPE), mesh.sram.scope():
        estimated_cached_prefill_attention(
            mesh, q=known.q, key_rows=key_rows, heads=heads, ledger=ledger, blocks=blocks
        )
    high = mesh.sram.alloc("prefill layer (replayed)", known.high_water_bytes)
    mesh.sram.free(high)
    append_records(ledger, known.post)
    k, v = (
        mesh.register(torch.empty(shape, dtype=dtype, device="meta"), layout, f"prefill.{name}")
        for name, (layout, shape, dtype) in zip("kv", known.kv, strict=True)
    )
    return k, v


def _uniform(mesh: Mesh) -> bool:
    """Whether every live buffer holds one number of bytes on every core."""
    return all(type(nbytes) is int for nbytes in mesh.sram.live.values())


__all__ = ["LayerRecords"]
