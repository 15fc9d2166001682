"""Chunked prefill: a prompt longer than the prefill plan holds at once runs in chunks.

Each chunk of `chunk_tokens` positions goes through the prefill layers like a short prompt;
its attention reads the k/v chunks of the earlier chunks, kept on the prefill grid ([T_y,
kv_x] and [T_y, v_x] each, as the layer produced them), and its own causal block
(`kernels.attention_chunked.cached_prefill_attention`). Under a sliding window a cached chunk
that no later query can see is evicted (freed). Sizing a chunk from byte counts lives here too; the
unchunked prefill and the head are in `prefill.py`, the hand-off in `transformer.py`.
Legend: L prompt tokens, T chunk tokens, R x C the prefill grid.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from waferllm.errors import SramOverflowError, WaferError
from waferllm.kernels.attention_chunked import KeyChunk, cached_prefill_attention
from waferllm.kernels.attention_chunked_cost import BlockRecords
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.operands import ring_grid
from waferllm.mesh.budget import OverBudget
from waferllm.mesh.compute import matmul_cycles
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model import vocab
from waferllm.model.budget import prefill_need_bytes
from waferllm.model.chunked_layers import LAYER_SCOPE, LayerRecords
from waferllm.model.layers import LayerContext, charge_rope_tables, prefill_layer, rope_tables
from waferllm.model.placement import Phase, heads_for
from waferllm.model.plan import ModelPlan
from waferllm.model.prefill import enter_region, kept_kv
from waferllm.model.steps import Uncharged
from waferllm.model.transfers import per_layer_hops

if TYPE_CHECKING:
    from waferllm.model.transformer import MeshTransformer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Span:
    """One chunk: positions start .. start + length - 1."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def chunk_spans(length: int, chunk_tokens: int) -> list[Span]:
    """The chunks of a `length`-token prompt, `chunk_tokens` each (the last one shorter)."""
    return [
        Span(start=s, length=min(chunk_tokens, length - s)) for s in range(0, length, chunk_tokens)
    ]


# ---- sizing ------------------------------------------------------------------------------------
def kept_chunks(length: int, chunk_tokens: int, window: int | None) -> int:
    """The most k/v chunks one layer holds at once: every chunk, or under a window W those
    that a chunk's queries can still see (ceil((W - 1)/T) + 1 cached) and its own."""
    count = math.ceil(length / chunk_tokens)
    if window is None:
        return count
    return min(count, math.ceil((window - 1) / chunk_tokens) + 2)


def chunk_need_bytes(plan: ModelPlan, length: int, chunk_tokens: int) -> int:
    """The most any core of the prefill plan needs for a `length`-token prompt in chunks of
    `chunk_tokens` (`budget.prefill_need_bytes` at one chunk): weights, every layer's kept k/v
    chunks, one chunk's layer walk (all query heads at once) plus the online softmax's state
    (G*n*Lt*(Hv + 2)), the head, the vocabulary tables."""
    config, regions = plan.config, plan.prefill
    sb = plan.device.storage_bytes
    rows, cols = regions.grid
    heads = heads_for(config, cols)
    lt = math.ceil(chunk_tokens / rows)
    online = heads.kv_per_tile * heads.n_rep * lt * (heads.value_slots + 2) * sb
    return prefill_need_bytes(
        regions,
        plan.prefill_footprint,
        config,
        sb,
        chunk_tokens,
        head_chunk=heads.n_rep,
        apart=plan.apart[Phase.PREFILL] if plan.apart else None,
        stored=plan.storage.weights,
        kept=kept_chunks(length, chunk_tokens, config.sliding_window),
        attention_extra_bytes=online,
    )


def max_chunk_tokens(plan: ModelPlan, length: int) -> int:
    """The longest chunk, in whole rows of the grid (k*R tokens: a shorter chunk pads every
    core's token tile, and its cached k/v with it), with which a `length`-token prompt fits
    the prefill plan; 0 when none does."""
    cap, rows = plan.device.sram_bytes_per_core, plan.prefill.grid[0]

    def fits(k: int) -> bool:
        return chunk_need_bytes(plan, length, min(k * rows, length)) <= cap

    most = math.ceil(length / rows)
    if not fits(1):
        return 0
    low, high = 1, most + 1  # fits(low); high: not tried or too big
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return min(low * rows, length)


def chunk_candidates(plan: ModelPlan, length: int) -> list[int]:
    """Chunk sizes worth pricing for a prompt the plan cannot hold at once: the fewest equal
    chunks that fit (n = ceil(L / T_max)) and one more (n + 1: smaller, less padding),
    rounded up to whole rows of the grid where that still fits; fewest chunks first."""
    limit = max_chunk_tokens(plan, length)
    if limit == 0:
        return []
    rows = plan.prefill.grid[0]
    fewest = math.ceil(length / limit)
    out: list[int] = []
    for count in (fewest, fewest + 1):
        tokens = math.ceil(length / count)
        whole_rows = math.ceil(tokens / rows) * rows
        tokens = whole_rows if whole_rows <= limit else tokens
        if tokens not in out and tokens < length:
            out.append(tokens)
    return out


def default_chunk_tokens(plan: ModelPlan, length: int) -> int:
    """The chunk a prompt the plan cannot hold at once runs in: the fewest equal chunks that
    fit. Raises when even one token per row does not (the prompt's KV cache alone)."""
    candidates = chunk_candidates(plan, length)
    if candidates:
        return candidates[0]
    grid, most = plan.prefill.grid, plan.max_prompt_tokens
    raise SramOverflowError(
        tensor="prefill activations",
        core=plan.prefill.regions[0].origin,
        needed_bytes=chunk_need_bytes(plan, length, min(grid[0], length)),
        available_bytes=plan.device.sram_bytes_per_core,
        hint=f"a {length}-token prompt does not fit the prefill plan even in chunks of one "
        f"token per row (its KV cache alone); at most {most} tokens fit at once on "
        f"{grid[0]}x{grid[1]} (use a larger prefill grid: --prefill-grid, prefill_grid= in "
        "Python; or a shorter prompt)",
    )


# ---- a floor of any chunk's cost (the estimate layer's pruning) -------------------------------
RING_GEMMS = (  # a prefill layer's ring GEMMs (`layers.prefill_layer`): (op, weight)
    ("q_proj", "wq"),
    ("k_proj", "wk"),
    ("v_proj", "wv"),
    ("o_proj", "wo"),
    ("gate_proj", "w_gate"),
    ("up_proj", "w_up"),
    ("down_proj", "w_down"),
)


def chunk_floor_cycles(model: MeshTransformer) -> float:
    """A lower bound of every chunk's latency in an estimate-mode chunked walk, whatever its
    tokens (`mesh.budget.BudgetLedger`'s floor): the chunk's ledger holds its walked layer's
    records times the layer count (`_chunk`), among them each ring GEMM's P = L_grid steps,
    one overlapped record each (`gemm._ring_gemm_closed`) of latency >= its compute + the
    step overhead; that compute multiplies per_row*per_col blocks [m, k] @ [k, n] with k and
    n from the weight's tile, m >= 1 the chunk's rows, and `matmul_cycles` grows with m
    (k*n instructions of max(floor, m*...) cycles): at m = 1 it is a floor. 0.0 when a
    weight is missing or the grid refuses the GEMM (the walk raises that itself)."""
    state = model.prefill_state
    mesh, device = state.meshes[0], model.device
    weights = state.layers[state.regions.regions[0].layers[-1]]
    step_cycles = 0.0
    for op, name in RING_GEMMS:
        b = weights.get(name)
        if b is None:
            return 0.0
        try:
            grid = ring_grid(mesh, op)
        except WaferError:
            return 0.0
        kb, nt = b.data.shape[-2:]
        k = kb * mesh.rows // mesh.cols // grid.per_col  # A's K tile over its logical blocks
        n = -(-nt // grid.per_col)
        blocks = grid.per_row * grid.per_col
        compute = blocks * matmul_cycles(device, m=1, k=k, n=n)
        step_cycles += grid.size * (compute + device.step_overhead_cycles)
    return model.config.num_hidden_layers * step_cycles


# ---- the walk ----------------------------------------------------------------------------------
class ChunkBuffers:
    """The RoPE tables and the placed layers' k/v that a chunk registers on each mesh, kept
    per (mesh, chunk tokens) by one estimate-mode chunked walk: a later chunk of that length
    registers the same tensors again (`Mesh.register_like`: the same names, keys, SRAM peaks
    and failures as registering them one by one) instead of building their meta tiles. The
    key is complete within the walk: the tables' and k/v tiles and layouts follow from the
    mesh (its heads, its columns), the model and the chunk's tokens (only their number: the
    tiles are meta tensors, read for their shapes), the placed layers from the mesh's region
    (one region per mesh). It holds its meshes, so their ids are not reused."""

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int], tuple[DistTensor, DistTensor]] = {}
        self._kept: dict[tuple[int, int], list[KeyChunk]] = {}
        self._meshes: list[Mesh] = []

    def _key(self, mesh: Mesh, span: Span) -> tuple[int, int]:
        if not any(m is mesh for m in self._meshes):
            self._meshes.append(mesh)
        return (id(mesh), span.length)

    def tables(
        self, model: MeshTransformer, mesh: Mesh, heads: HeadLayout, span: Span
    ) -> tuple[DistTensor, DistTensor]:
        """`rope_tables` of the span's positions on `mesh`."""
        key = self._key(mesh, span)
        known = self._tables.get(key)
        if known is None:
            positions = torch.arange(span.start, span.end)
            known = rope_tables(mesh, heads, model.inv_freq, positions, tokens_axis=Axis.Y)
            self._tables[key] = known
            return known
        cos, sin = mesh.register_like(known, ["rope.cos", "rope.sin"])
        return cos, sin

    def kept(
        self, mesh: Mesh, heads: HeadLayout, span: Span, layers: Sequence[int]
    ) -> list[KeyChunk]:
        """`prefill.kept_kv` of `layers` for the span on `mesh`."""
        key = self._key(mesh, span)
        known = self._kept.get(key)
        if known is None:
            known = kept_kv(mesh, heads, start=span.start, length=span.length, layers=layers)
            self._kept[key] = known
            return known
        assert len(known) == len(layers)
        names = [f"prefill.{kv}{i}" for i in layers for kv in "kv"]
        again = mesh.register_like([t for c in known for t in (c.k, c.v)], names)
        return [
            KeyChunk(k=k, v=v, start=span.start, length=span.length)
            for k, v in zip(again[::2], again[1::2], strict=True)
        ]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Reuse:
    """What one estimate-mode chunked walk prices once and reuses across its chunks."""

    blocks: BlockRecords
    layers: LayerRecords
    buffers: ChunkBuffers


def prefill_chunks(
    model: MeshTransformer,
    ids: Sequence[int],
    ledger: Ledger,
    chunk_tokens: int,
    *,
    walk: bool = False,
) -> tuple[DistTensor, Span, dict[int, list[KeyChunk]]]:
    """Run the prompt chunk by chunk: (the last chunk's hidden states, its span, every
    layer's kept k/v chunks). Raises `OverBudget`, every chunk freed, when `ledger` says the
    walk may stop (`mesh.budget.BudgetLedger`: the estimate layer's pruning of chunk sizes).
    Estimate mode prices each size of key block once per walk (`BlockRecords`) and walks
    each region's layer once per chunk size (`LayerRecords`), unless `walk` (the oracle:
    every chunk's layer walked, its attention on meta tensors)."""
    window = model.config.sliding_window
    kv: dict[int, list[KeyChunk]] = {i: [] for i in range(model.config.num_hidden_layers)}
    spans = chunk_spans(len(ids), chunk_tokens)
    reuse = None
    if not walk:
        reuse = _Reuse(blocks=BlockRecords(), layers=LayerRecords(), buffers=ChunkBuffers())
    x: DistTensor | None = None
    for n, span in enumerate(spans):
        if x is not None:
            x.free()
        x = _chunk(model, ids[span.start : span.end], span, kv, ledger, reuse)
        if n + 1 < len(spans) and ledger.over_budget():  # a BudgetLedger: give up, tidily
            x.free()
            _evict(kv, oldest_seen=len(ids))
            raise OverBudget(f"chunked prefill given up after {n + 1} of {len(spans)} chunks")
        if window is not None and n + 1 < len(spans):
            _evict(kv, oldest_seen=span.end - window + 1)
    assert x is not None
    return x, spans[-1], kv


def _evict(kv: dict[int, list[KeyChunk]], *, oldest_seen: int) -> None:
    """Free the chunks whose last position is older than any later query sees."""
    for chunks in kv.values():
        while chunks and chunks[0].start + chunks[0].length <= oldest_seen:
            dead = chunks.pop(0)
            dead.k.free()
            dead.v.free()


def _chunk(
    model: MeshTransformer,
    ids: Sequence[int],
    span: Span,
    kv: dict[int, list[KeyChunk]],
    ledger: Ledger,
    reuse: _Reuse | None,
) -> DistTensor:
    """One chunk through every region: the first layer priced, its records times the layers
    (estimate mode walks each region's last layer only, after placing the others' k/v: the
    region's SRAM peak; they cost the same; without `walk_every_region`, the first region's;
    each walked layer through `reuse.layers`)."""
    config, state = model.config, model.prefill_state
    state.meshes[0].charge_host_io(ledger, "host.prompt_in", span.length)
    x = vocab.embed(state, ids, ledger, config=config, device=model.device, tokens_axis=Axis.Y)
    layer_ledger = ledger.per_layer(config.num_hidden_layers)
    estimate = model.mode is Mode.ESTIMATE
    buffers = reuse.buffers if reuse is not None and estimate else ChunkBuffers()
    for r, region in enumerate(state.regions.regions):
        mesh = state.meshes[r]
        if r:  # an on-wafer hop, or the inter-system link to the next device
            x = enter_region(model.device, state, r, x, ledger)
        heads = heads_for(config, mesh.cols)
        charge_rope_tables(mesh, heads, x.tile_shape[0], ledger)
        cos, sin = buffers.tables(model, mesh, heads, span)
        ctx = LayerContext(
            config=config,
            heads=heads,
            cos=cos,
            sin=sin,
            length=span.length,
            head_chunk=heads.n_rep,  # unused: the chunk's attention takes every head at once
        )
        walked = region.layers
        if estimate:
            walked = region.layers[-1:] if r == 0 or model.walk_every_region else region.layers[:0]
            placed = region.layers[: len(region.layers) - len(walked)]
            kept = buffers.kept(mesh, heads, span, placed)
            for i, chunk in zip(placed, kept, strict=True):
                kv[i].append(chunk)
        for j, i in enumerate(walked):
            target = layer_ledger if (r, j) == (0, 0) else Uncharged()
            x = _layer(model, mesh, i, x, ctx, target, span=span, kv=kv, reuse=reuse)
        cos.free()
        sin.free()
    ledger.extend(layer_ledger, count=config.num_hidden_layers)
    per_layer_hops(model.plan, x, ledger)
    return x


def _layer(
    model: MeshTransformer,
    mesh: Mesh,
    i: int,
    x: DistTensor,
    ctx: LayerContext,
    ledger: Ledger,
    *,
    span: Span,
    kv: dict[int, list[KeyChunk]],
    reuse: _Reuse | None,
) -> DistTensor:
    """Layer i of the chunk on `mesh` (its attention against layer i's cached chunks): walked,
    or in estimate mode through `reuse.layers`; its k/v appended to layer i's chunks."""
    attend = functools.partial(
        _attend,
        mesh=mesh,
        heads=ctx.heads,
        span=span,
        cached=tuple(kv[i]),
        window=model.config.sliding_window,
        reuse=reuse,
    )
    walk = functools.partial(prefill_layer, mesh, model.prefill_state.layers[i], x, ctx, ledger)
    if reuse is not None and model.mode is Mode.ESTIMATE:
        x, k, v = reuse.layers.layer(
            mesh,
            x=x,
            tokens=span.length,
            cached_rows=[c.k.tile_shape[0] for c in kv[i]],
            heads=ctx.heads,
            ledger=ledger,
            blocks=reuse.blocks,
            attend=attend,
            walk=walk,
        )
    else:
        with ledger.scope(LAYER_SCOPE):
            x, k, v = walk(attend=attend)
    kv[i].append(KeyChunk(k=k, v=v, start=span.start, length=span.length))
    return x


def _attend(
    q: DistTensor,
    k: DistTensor,
    v: DistTensor,
    ledger: Ledger,
    *,
    mesh: Mesh,
    heads: HeadLayout,
    span: Span,
    cached: tuple[KeyChunk, ...],
    window: int | None,
    reuse: _Reuse | None,
) -> DistTensor:
    own = KeyChunk(k=k, v=v, start=span.start, length=span.length)
    return cached_prefill_attention(
        mesh,
        q=q,
        query_start=span.start,
        query_length=span.length,
        keys=(*cached, own),
        heads=heads,
        sliding_window=window,
        ledger=ledger,
        walk=reuse is None,
        blocks=None if reuse is None else reuse.blocks,
    )
