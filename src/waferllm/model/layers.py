"""One decoder layer's math on one mesh: the prefill plan and the decode plan (STYLE.md §3).

Each function reads like a single-device transformer layer; the layouts come from
`placement.py`, the kernels from `waferllm.kernels`, attention from `attention.py`, the cache
from `kv_cache.py`. Temporaries live in an SRAM scope; the residual stream `x` (allocated by the
caller) is updated in place, and prefill's k and v outlive the layer (they become the cache).
Legend: L tokens, D model dim, F ffn dim, q/kv/v/o the padded head features of `HeadLayout`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from waferllm.kernels.elementwise import add, silu_mul
from waferllm.kernels.gemm import align_a, meshgemm
from waferllm.kernels.gemv import meshgemv
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.norm import rms_norm
from waferllm.kernels.rope import rope
from waferllm.mesh.comm import ReduceAlgorithm
from waferllm.mesh.compute import charge_compute, charge_fixed, elementwise, vector_op_cycles
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import padded_k
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.attention import prefill_attention_passes
from waferllm.model.config import ModelConfig
from waferllm.model.decode_attention import ATTEND
from waferllm.model.kv_cache import Append, RowCounts
from waferllm.model.kv_store import KvStore
from waferllm.model.placement import PlacedLayer

# Prefill's reductions along X chain to the middle column and broadcast back (SPEC.md §10.7's
# prefill budget: the X chain and broadcast colours, shared with dist-GEMM-T's reduce).
PREFILL_REDUCE = ReduceAlgorithm.PIPELINE


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerContext:
    """What every layer of one call shares: the model, the heads on this grid, RoPE tables."""

    config: ModelConfig
    heads: HeadLayout
    cos: DistTensor  # prefill [L, C*H] (L_y), decode [B, C*H]; RoPE slots in the heads' order
    sin: DistTensor
    length: int  # prefill: prompt tokens; decode: the batch's sequences B
    head_chunk: int  # prefill attention: query heads per kv head in one pass
    streamed: bool = False  # prefill attention: key blocks streamed, online softmax


# ---- shared helpers ------------------------------------------------------------------------------
def charge_layer_fixed(mesh: Mesh, ledger: Ledger) -> None:
    """The device's `layer_fixed_cycles`, once per decoder layer per pass (prefill or decode
    step): what a layer costs whatever its widths and grid (its steps' control and
    synchronisation; see the constant's source)."""
    charge_fixed(ledger, "layer_fixed", cycles=mesh.device.layer_fixed_cycles)


def view(t: DistTensor, layout: Layout) -> DistTensor:
    """The same tiles under another logical layout (a per-core reshape, no copy; meta tiles
    of the new shape in estimate mode, without the reshape's dispatch)."""
    rows, cols = t.mesh.shape
    shape = (rows, cols, *layout.tile_shape(rows, cols))
    if t.data.is_meta:
        assert math.prod(shape) == t.data.numel(), (shape, t.data.shape)
        data = meta_empty(shape, t.data.dtype)
    else:
        data = t.data.reshape(shape)
    return DistTensor(data, layout, t.mesh, t.name, t.sram_key)


def add_bias(mesh: Mesh, y: DistTensor, bias: DistTensor | None, ledger: Ledger, op: str):
    """y += bias, the bias split like y's last dim and broadcast over its other dims."""
    if bias is None:
        return y
    tile = bias.data.reshape(*mesh.shape, *([1] * (len(y.tile_shape) - 1)), bias.tile_shape[-1])
    data = elementwise(mesh, torch.add, y.data, tile, ledger=ledger, op=op)
    return y.replace(data.to(y.data.dtype))


def gemm_operand(mesh: Mesh, x: DistTensor, ledger: Ledger, op: str) -> DistTensor:
    """x[M_y, K_x] as MeshGEMM's A, aligned once for the GEMMs that share it.

    On a non-square mesh K must be a multiple of lcm(R, C) (mesh.tiling.padded_k): each
    core's K tile is zero-padded at its end, and the weights' rows were placed to match
    (`placement.pad_k_rows`). A per-core copy, no communication."""
    rows, cols = mesh.shape
    m, k = x.layout.shape
    width = padded_k(rows, cols, k) // cols
    data = x.data
    if width != data.shape[-1] and data.is_meta:  # estimate mode: the padded shape
        data = meta_empty((*data.shape[:-1], width), data.dtype)
    elif width != data.shape[-1]:
        data = torch.nn.functional.pad(data, (0, width - data.shape[-1]))
    a = mesh.register(data, Layout((m, width * cols), y_dim=0, x_dim=1), f"{op}.a")
    return align_a(mesh, a=a, ledger=ledger, op=f"{op}.align").out


# ---- prefill (L_y E_x) -------------------------------------------------------------------------
# attention of a prefill chunk against cached keys: (q, k, v, ledger) -> attn in q's layout
Attend = Callable[[DistTensor, DistTensor, DistTensor, Ledger], DistTensor]


def prefill_layer(
    mesh: Mesh,
    w: PlacedLayer,
    x: DistTensor,
    ctx: LayerContext,
    ledger: Ledger,
    *,
    attend: Attend | None = None,
) -> tuple[DistTensor, DistTensor, DistTensor]:
    """x[L_y, D_x] -> (x + attn + mlp in x's buffer, this layer's k [L_y, kv_x] and v [L_y,
    v_x]).
    `attend` replaces the whole prompt's causal attention (a chunk against cached keys).
    Temporaries live to the layer's end, or in the lean schedule (`ctx.streamed`) are freed
    once their last reader is done (`scratch.prefill_scratch` replays the same buffers)."""
    cfg = ctx.config
    done = _early_free if ctx.streamed else _kept
    charge_layer_fixed(mesh, ledger)
    with mesh.sram.scope():
        h = rms_norm(
            mesh,
            x=x,
            weight=w["attn_norm"],
            ledger=ledger,
            eps=cfg.rms_norm_eps,
            op="attn_norm",
            algorithm=PREFILL_REDUCE,
        )
        a = gemm_operand(mesh, h, ledger, "qkv")
        done(h)
        q = meshgemm(mesh, a=a, b=w["wq"], ledger=ledger, op="q_proj").out
        k = meshgemm(mesh, a=a, b=w["wk"], ledger=ledger, op="k_proj").out
        v = meshgemm(mesh, a=a, b=w["wv"], ledger=ledger, op="v_proj").out
        done(a)
        q = add_bias(mesh, q, w.get("bq"), ledger, "q_bias")
        k = add_bias(mesh, k, w.get("bk"), ledger, "k_bias")
        v = add_bias(mesh, v, w.get("bv"), ledger, "v_bias")
        q = _rope(mesh, q, ctx, ledger, "q_rope", tokens_axis=Axis.Y)
        k = _rope(mesh, k, ctx, ledger, "k_rope", tokens_axis=Axis.Y)
        with ledger.scope("attn"):
            if attend is not None:
                o = attend(q, k, v, ledger)
            else:
                o = prefill_attention_passes(
                    mesh,
                    q=q,
                    k=k,
                    v=v,
                    heads=ctx.heads,
                    length=ctx.length,
                    sliding_window=cfg.sliding_window,
                    head_chunk=ctx.head_chunk,
                    streamed=ctx.streamed,
                    ledger=ledger,
                )
        done(q)
        a = gemm_operand(mesh, o, ledger, "o")
        done(o)
        o = meshgemm(mesh, a=a, b=w["wo"], ledger=ledger, op="o_proj").out
        done(a)
        o = add_bias(mesh, o, w.get("bo"), ledger, "o_bias")
        x = add(mesh, x=x, y=o, ledger=ledger, op="attn_residual")
        done(o)
        x = _prefill_mlp(mesh, w, x, cfg, ledger, done)
        k_data, v_data = k.data, v.data
    # k and v outlive the layer's scratch: they are this layer's share of the KV cache
    return (
        x,
        mesh.register(k_data, k.layout, "prefill.k"),
        mesh.register(v_data, v.layout, "prefill.v"),
    )


def _early_free(t: DistTensor) -> None:
    t.free()


def _kept(t: DistTensor) -> None:
    """Freed by the layer's SRAM scope when it ends."""


def _prefill_mlp(
    mesh: Mesh,
    w: PlacedLayer,
    x: DistTensor,
    cfg: ModelConfig,
    ledger: Ledger,
    done: Callable[[DistTensor], None],
) -> DistTensor:
    h = rms_norm(
        mesh,
        x=x,
        weight=w["mlp_norm"],
        ledger=ledger,
        eps=cfg.rms_norm_eps,
        op="mlp_norm",
        algorithm=PREFILL_REDUCE,
    )
    a = gemm_operand(mesh, h, ledger, "gate_up")
    done(h)
    gate = meshgemm(mesh, a=a, b=w["w_gate"], ledger=ledger, op="gate_proj").out
    up = meshgemm(mesh, a=a, b=w["w_up"], ledger=ledger, op="up_proj").out
    done(a)
    gate = add_bias(mesh, gate, w.get("b_gate"), ledger, "gate_bias")
    up = add_bias(mesh, up, w.get("b_up"), ledger, "up_bias")
    act = silu_mul(mesh, gate=gate, up=up, ledger=ledger)  # in gate's buffer
    done(up)
    a = gemm_operand(mesh, act, ledger, "down")
    done(act)
    down = meshgemm(mesh, a=a, b=w["w_down"], ledger=ledger, op="down_proj").out
    done(a)
    down = add_bias(mesh, down, w.get("b_down"), ledger, "down_bias")
    x = add(mesh, x=x, y=down, ledger=ledger, op="mlp_residual")
    done(down)
    return x


def _rope(
    mesh: Mesh, t: DistTensor, ctx: LayerContext, ledger: Ledger, op: str, tokens_axis: Axis | None
) -> DistTensor:
    """Rotate q or k [T, features]: the tiles viewed as [T, G, (n,) H] against [T, H] tables,
    T split along `tokens_axis` (prefill's Y) or replicated (decode's batch)."""
    heads = ctx.heads
    features = t.layout.shape[-1]
    per_slot = features // (heads.num_cols * heads.kv_per_tile * heads.head_slots)
    inner = (per_slot, heads.head_slots) if per_slot > 1 else (heads.head_slots,)
    shape = (ctx.length, heads.num_cols * heads.kv_per_tile, *inner)
    shaped = Layout(shape, y_dim=0, x_dim=1) if tokens_axis is not None else Layout(shape, x_dim=1)
    rotated = rope(mesh, x=view(t, shaped), cos=ctx.cos, sin=ctx.sin, ledger=ledger, op=op)
    return view(rotated, t.layout)


# ---- decode (E_y L^x) --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheStep:
    """This step's cache update for the batch's B sequences (`seqs`, their indices in the
    store): where each token goes, the counts before it, and the batch's mask."""

    store: KvStore
    seqs: tuple[int, ...]
    counts: tuple[RowCounts, ...]
    appends: tuple[Append, ...]
    slot_mask: torch.Tensor  # (R, 1, B, 1, 1, w)
    kv_ledger: Ledger  # the one-hop shifts are charged here (their cost varies step to step)

    @property
    def width(self) -> int:
        """Slots read per row: the batch's widest window (narrower ones are padded, masked)."""
        return max(int(a.counts_after.max()) for a in self.appends)

    def write(self, layer: int, k: DistTensor, v: DistTensor, ledger: Ledger) -> None:
        """Each sequence's k, v [B, kv_x] into its own rows (its own shift; a compressed
        cache's quantisation charged to `ledger`)."""
        heads, (rows, cols) = self.store.heads, self.store.mesh.shape
        shape = (rows, cols, len(self.seqs), heads.kv_per_tile)
        k_tiles = k.data.reshape(*shape, heads.head_slots)
        v_tiles = v.data.reshape(*shape, heads.value_slots)
        for b, seq in enumerate(self.seqs):
            self.store.charge_write(ledger)
            self.store.write(
                layer,
                k_tiles[:, :, b],
                v_tiles[:, :, b],
                self.appends[b],
                self.counts[b],
                self.kv_ledger,
                seq=seq,
            )

    def charge_read(self, ledger: Ledger) -> None:
        """A compressed cache's windows expanded for attention (each padded to w)."""
        for _ in self.seqs:
            self.store.charge_read(self.width, ledger)

    def window(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K (R, C, B, G, H, w) and V (R, C, B, G, w, Hv): every sequence's first w slots."""
        width = self.width
        pairs = [self.store.window(layer, width, seq=seq) for seq in self.seqs]
        if len(pairs) == 1:  # one sequence: its window as it is (a view)
            return pairs[0][0].unsqueeze(2), pairs[0][1].unsqueeze(2)
        return torch.stack([k for k, _ in pairs], dim=2), torch.stack([v for _, v in pairs], dim=2)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class LayerLedgers:
    """Where one decode layer's records go: before its attention, the attention (the only
    part that reads the cache window), after it. A step charges all three to one ledger; the
    estimate layer keeps them apart to re-price the attention at other windows."""

    pre: Ledger
    attn: Ledger
    post: Ledger

    @classmethod
    def single(cls, ledger: Ledger) -> LayerLedgers:
        return cls(pre=ledger, attn=ledger, post=ledger)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """`name` as a scope of every distinct ledger."""
        with contextlib.ExitStack() as stack:
            for ledger in {id(x): x for x in (self.pre, self.attn, self.post)}.values():
                stack.enter_context(ledger.scope(name))
            yield


def decode_layer(
    mesh: Mesh,
    w: PlacedLayer,
    x: DistTensor,
    ctx: LayerContext,
    index: int,
    cache: CacheStep,
    ledgers: LayerLedgers,
) -> DistTensor:
    """x[B, D_y] (replicated along X) -> x + attn + mlp, in place; the paper's sequence. The
    GEMVs carry the B vectors together (one allreduce of B partial sums each); attention reads
    each sequence's own rows."""
    cfg, heads = ctx.config, ctx.heads
    ledger = ledgers.pre
    charge_layer_fixed(mesh, ledger)
    with mesh.sram.scope():
        h = rms_norm(
            mesh, x=x, weight=w["attn_norm"], ledger=ledger, eps=cfg.rms_norm_eps, op="attn_norm"
        )
        q, k, v = meshgemv(
            mesh, x=h, w=[w["wq"], w["wk"], w["wv"]], ledger=ledger, reduce_axis=Axis.Y, op="qkv"
        ).outs
        q = add_bias(mesh, q, w.get("bq"), ledger, "q_bias")
        k = add_bias(mesh, k, w.get("bk"), ledger, "k_bias")
        v = add_bias(mesh, v, w.get("bv"), ledger, "v_bias")
        q = _rope(mesh, q, ctx, ledger, "q_rope", tokens_axis=None)
        k = _rope(mesh, k, ctx, ledger, "k_rope", tokens_axis=None)
        cache.write(index, k, v, ledger)
        with ledgers.attn.scope("attn"):
            attn = ATTEND[mesh.mode](mesh, q, cache, index, heads, ledgers.attn)
        ledger = ledgers.post
        o = meshgemv(mesh, x=attn, w=w["wo"], ledger=ledger, reduce_axis=Axis.X, op="o_proj").out
        o = add_bias(mesh, o, w.get("bo"), ledger, "o_bias")
        x = add(mesh, x=x, y=o, ledger=ledger, op="attn_residual")
        h = rms_norm(
            mesh, x=x, weight=w["mlp_norm"], ledger=ledger, eps=cfg.rms_norm_eps, op="mlp_norm"
        )
        gate, up = meshgemv(
            mesh, x=h, w=[w["w_gate"], w["w_up"]], ledger=ledger, reduce_axis=Axis.Y, op="gate_up"
        ).outs
        gate = add_bias(mesh, gate, w.get("b_gate"), ledger, "gate_bias")
        up = add_bias(mesh, up, w.get("b_up"), ledger, "up_bias")
        act = silu_mul(mesh, gate=gate, up=up, ledger=ledger)
        down = meshgemv(
            mesh, x=act, w=w["w_down"], ledger=ledger, reduce_axis=Axis.X, op="down_proj"
        ).out
        down = add_bias(mesh, down, w.get("b_down"), ledger, "down_bias")
        return add(mesh, x=x, y=down, ledger=ledger, op="mlp_residual")


def decode_slot_mask(
    mesh: Mesh,
    counts: Sequence[RowCounts],
    appends: Sequence[Append],
    window: int | None,
) -> torch.Tensor:
    """(R, 1, B, 1, 1, w): the filled slots each sequence's new token attends, w the widest
    window of the batch (the narrower windows' extra slots masked)."""
    width = max(int(a.counts_after.max()) for a in appends)
    batch = len(appends)
    if mesh.mode is Mode.ESTIMATE:
        return meta_empty((mesh.rows, 1, batch, 1, 1, width), torch.bool)
    keep = np.zeros((mesh.rows, batch, width), dtype=bool)
    for b, (c, a) in enumerate(zip(counts, appends, strict=True)):
        rows = c.slot_mask(a.counts_after, width)
        if window is not None:
            rows &= c.end - c.positions_after(a, width) < window
        keep[:, b] = rows
    mask = torch.as_tensor(keep, device=mesh.torch_device)
    return mask.reshape(mesh.rows, 1, batch, 1, 1, width)


# ---- RoPE tables -------------------------------------------------------------------------------
def rope_tables(
    mesh: Mesh,
    heads: HeadLayout,
    inv_freq: torch.Tensor,
    positions: torch.Tensor,
    *,
    tokens_axis: Axis | None,
) -> tuple[DistTensor, DistTensor]:
    """cos/sin for `positions` in the heads' slot order, as transformers builds them (float32,
    emb = cat(freqs, freqs)). Prefill: [L_y, (C*H)_x]; decode: [B, (C*H)_x] (one position per
    sequence, replicated along Y). The cores compute them once per call for all their layers:
    `charge_rope_tables` prices that."""
    width = heads.num_cols * heads.head_slots
    if tokens_axis is Axis.Y:
        layout = Layout((len(positions), width), y_dim=0, x_dim=1)
    else:
        layout = Layout((len(positions), width), x_dim=1)
    host: list[torch.Tensor | None] = [None, None]
    if mesh.mode is Mode.FUNCTIONAL:
        pairs = torch.as_tensor(heads.rope_pairs().reshape(-1))  # (C*H,)
        angle = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[pairs][None, :]
        host = [angle.cos(), angle.sin()]
    tables = []
    for name, table in zip(("rope.cos", "rope.sin"), host, strict=True):
        data = table if table is not None else meta_empty(layout.shape)
        tables.append(mesh.scatter(data, layout, name))
    return tables[0], tables[1]


def charge_rope_tables(mesh: Mesh, heads: HeadLayout, tokens: int, ledger: Ledger) -> None:
    """Each core computes cos and sin of (position x frequency) for its `tokens` x H slots:
    two vector instructions of tokens * H elements (a multiply and the function each)."""
    length = tokens * heads.head_slots
    cycles = vector_op_cycles(
        mesh.device,
        num_instructions=2,
        length=length,
        flops_per_element=2.0,
        sram_elements_per_element=1.0,
    )
    charge_compute(mesh, ledger, "rope.tables", cycles=cycles, flops_per_core=4.0 * length)
