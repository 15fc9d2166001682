"""Per-core scratch of the walks, in closed form: what the planner budgets beside the weights.

`prefill_scratch` replays the prefill walk's buffers (`layers.prefill_layer`, the kernels it
calls, the head of `prefill.prefill_logits`) as a running count of live bytes and returns
their actual peak; a test checks it against the peak the estimate-mode walk records, both
ways, another against a replay of every allocation one by one (`test_scratch_replay.py`).
`decode_scratch_bytes` bounds one decode step. Sizes only: no tensors, no costs, no regions.
Legend: Lt tokens per row (Lt' padded to whole logical blocks), G kv heads per column, n query
heads per kv head (n' per attention pass), H head-dim slots, Kc key blocks owned per column.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

from waferllm.kernels.attention_stream import streamed_attention_numel
from waferllm.kernels.dequant import dequant_scratch_bytes
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tiling import padded_k
from waferllm.model.config import ModelConfig
from waferllm.model.placement import Phase, heads_for, layer_specs, tile_bytes, vocab_spec


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrefillScratch:
    """Per-core bytes of a prompt's prefill beyond the weights (storage dtype)."""

    layer: int  # the peak of one layer's walk, with the residual stream and RoPE tables
    head: int  # the peak of the final norm, LM head and argmax, with the residual stream
    head_apart: int  # the same on a region of its own, where only the last hidden state arrives
    kv: int  # one layer's k and v, kept for the cache

    @property
    def peak(self) -> int:
        """A region that walks layers and holds the head: the larger of the two."""
        return max(self.layer, self.head)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Grid:
    """What `prefill_scratch` reads of the grid whatever the prompt (widths per core)."""

    heads: HeadLayout
    widths: _Widths  # the heads' tile widths, read out once
    per_row: int  # logical blocks per row and per column of a ring GEMM
    per_col: int
    d_t: int  # the hidden state's columns per core
    width: Mapping[int, int]  # `gemm_operand`'s K' per column, by K
    nt: Mapping[int, tuple[int, int]]  # a GEMM output's N tile and its padded block, by N
    b_bytes: Mapping[str, int]  # each weight's receive buffers (`_weight_buffers`)
    vocab_chunk: int  # the LM head's float16 chunk, compressed (`_dequant_chunk`)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Widths:
    """A `HeadLayout`'s per-column widths as plain numbers (its properties reduce arrays)."""

    g: int  # G: kv heads per column
    n_rep: int
    h: int  # H: head-dim slots
    hv: int  # Hv: value slots
    q: int  # q_width
    kv: int  # kv_width
    v: int  # v_width
    o: int  # o_width
    smallest_group: int

    @classmethod
    def of(cls, heads: HeadLayout) -> _Widths:
        return cls(
            g=heads.kv_per_tile,
            n_rep=heads.n_rep,
            h=heads.head_slots,
            hv=heads.value_slots,
            q=heads.q_width,
            kv=heads.kv_width,
            v=heads.v_width,
            o=heads.o_width,
            smallest_group=min(heads.group_sizes),
        )


@functools.lru_cache(maxsize=256)  # a plan bisects the prompt on a few grids
def _grid(config: ModelConfig, rows: int, cols: int, sb: int, stored: StoredDtype) -> _Grid:
    """The length-free part of `prefill_scratch`: a function of these arguments only (the
    config, the grid, the storage bytes and dtype), which its cache key holds."""
    heads = heads_for(config, cols)
    w = _Widths.of(heads)
    d, f = config.hidden_size, config.intermediate_size
    q_n, kv_n, v_n = cols * w.q, cols * w.kv, cols * w.v
    o_n = cols * w.o  # the attention output: W_o's input
    lcm = math.lcm(rows, cols)
    per_col = lcm // cols
    nt = {}
    for n in (q_n, kv_n, v_n, d, f):
        tile = math.ceil(n / cols)
        nt[n] = (tile, -(-tile // per_col) * per_col)
    specs = layer_specs(config, rows, cols, Phase.PREFILL)
    return _Grid(
        heads=heads,
        widths=w,
        per_row=lcm // rows,
        per_col=per_col,
        d_t=math.ceil(d / cols),
        width={k: padded_k(rows, cols, k) // cols for k in (d, o_n, f)},
        nt=nt,
        b_bytes={k: _weight_buffers(spec, rows, cols, sb, stored) for k, spec in specs.items()},
        vocab_chunk=_dequant_chunk(vocab_spec(config, Phase.PREFILL), rows, cols, sb, stored),
    )


@functools.lru_cache(maxsize=8192)  # plans bound the prompt by bisection, grid by grid
def prefill_scratch(
    config: ModelConfig,
    rows: int,
    cols: int,
    storage_bytes: int,
    length: int,
    *,
    head_chunk: int,
    streamed: bool = False,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> PrefillScratch:
    """The prefill walk's live buffers for a prompt of `length` tokens on rows x cols, with
    attention run `head_chunk` query heads per kv head at a time (`attention_passes`), with
    `streamed` the lean walk: key blocks streamed (one score block live,
    `kernels.attention_stream`) and every temporary freed after its last reader,
    the weights stored as `stored` (a compressed tile travels compressed and expands into a
    float16 chunk per step, `kernels.gemm._b_buffers`)."""
    sb = storage_bytes
    grid = _grid(config, rows, cols, sb, stored)
    w, d_t, b_bytes = grid.widths, grid.d_t, grid.b_bytes
    lt = math.ceil(length / rows)
    lt_pad = -(-lt // grid.per_row) * grid.per_row  # a ring GEMM's token tile, whole blocks
    # the live bytes per core (`now`) and their peak, every buffer allocated and freed in the
    # walk's order; a kernel's buffers freed within it count at their largest moment (sizes
    # are never negative: it is the last allocation, before any free)
    now = (lt * d_t + 2 * lt * w.h) * sb  # x, RoPE cos and sin
    peak = now

    def operand(k: int) -> int:
        """`gemm_operand`: the normed input padded to K' and aligned; its tile stays. Its
        peak: the unaligned tile and the skew's double buffer, before the first is freed."""
        nonlocal now, peak
        width = grid.width[k]
        peak = max(peak, now + (lt + lt_pad) * width * sb)
        now += lt_pad * width * sb
        return width

    def gemm(width: int, n: int, weight: str) -> int:
        """`meshgemm`: the output tile stays; receive buffers and C's block padding do not
        (their peak: the padded output block, the aligned input's ring copy, the weight's)."""
        nonlocal now, peak
        nt, nt_pad = grid.nt[n]
        peak = max(peak, now + lt_pad * (width + nt_pad) * sb + b_bytes[weight])
        now += lt * nt * sb
        return lt * nt * sb

    d, f = config.hidden_size, config.intermediate_size
    q_n, kv_n, v_n, o_n = cols * w.q, cols * w.kv, cols * w.v, cols * w.o
    norm, attn = lt * d_t * sb, lt * w.o * sb
    lean = int(streamed)  # 1: the lean walk frees each temporary after its last reader
    now += norm  # attn_norm.out
    peak = max(peak, now)
    width = operand(d)
    now -= lean * norm
    q = gemm(width, q_n, "wq")
    gemm(width, kv_n, "wk")  # k and v stay: the layer's share of the KV cache
    gemm(width, v_n, "wv")
    now -= lean * lt_pad * width * sb
    if streamed:  # the output (one pass: the online softmax's accumulator) comes first
        now += attn
        peak = max(peak, now + _streamed_numel(grid.heads, lt, head_chunk) * sb)
    else:
        peak = max(peak, now + _attention_numel(w, rows, lt, head_chunk) * sb)
        now += attn  # attention's output
        peak = max(peak, now)
    now -= lean * q
    width = operand(o_n)
    now -= lean * attn
    o = gemm(width, d, "wo")
    now -= lean * (lt_pad * width * sb + o)  # o once added to the residual stream
    now += norm  # mlp_norm.out
    peak = max(peak, now)
    width = operand(d)
    now -= lean * norm
    gate = gemm(width, f, "w_gate")
    up = gemm(width, f, "w_up")
    now -= lean * (lt_pad * width * sb + up)  # SiLU(gate) * up lands in gate's buffer
    width = operand(f)
    now -= lean * gate
    gemm(width, d, "w_down")  # the last buffers: what is freed after it never peaks
    return PrefillScratch(
        layer=peak,
        head=_head_numel(config, rows, lt, d_t) * sb + grid.vocab_chunk,
        head_apart=_head_numel(config, rows, 1, d_t) * sb + grid.vocab_chunk,
        kv=lt * (w.kv + w.v) * sb,
    )


def _weight_buffers(spec, rows: int, cols: int, sb: int, stored: StoredDtype) -> int:
    """A MeshGEMM weight's receive buffer per core (its tile as stored) and, compressed, the
    float16 chunk it expands into (`kernels.gemm._b_buffers`)."""
    return tile_bytes(spec, rows, cols, sb, stored) + _dequant_chunk(spec, rows, cols, sb, stored)


def _dequant_chunk(spec, rows: int, cols: int, sb: int, stored: StoredDtype) -> int:
    """The float16 chunk a compressed matrix expands into per use (0 uncompressed)."""
    if not stored.compressed or len(spec.shape) != 2:
        return 0
    kt, nt = spec.layout().tile_shape(rows, cols)
    if spec.gemm_b:
        per_col = math.lcm(rows, cols) // cols
        nt = -(-nt // per_col) * per_col
    return dequant_scratch_bytes(stored, reduced=kt, other=nt, sb=sb)


def attention_passes(config: ModelConfig, cols: int, head_chunk: int) -> int:
    """How many passes prefill attention makes with `head_chunk` query heads per kv head."""
    return -(-heads_for(config, cols).n_rep // head_chunk)


def _attention_numel(heads: _Widths, rows: int, lt: int, head_chunk: int) -> int:
    """One pass of `kernels.attention.prefill_attention` over n' = `head_chunk` query heads
    per kv head: scores [G, n', Lt, Kc*Lt], K's ring copy, the two partial blocks, P@V's
    accumulator, V's ring copy, the multicast probability block; with several passes the
    output of the passes so far [Lt, G*n*Hv] too."""
    g, h, hv = heads.g, heads.h, heads.hv
    n = min(head_chunk, heads.n_rep)
    kc = max(math.ceil(rows / heads.smallest_group), 1)
    one = g * n * lt * kc * lt + g * h * lt + 2 * g * n * lt * lt
    one += g * n * lt * hv + g * lt * hv + g * n * lt * lt
    return one + (lt * heads.o if n < heads.n_rep else 0)


def _streamed_numel(heads, lt: int, head_chunk: int) -> int:
    """One pass of `kernels.attention_stream.prefill_attention_streamed` over n' query heads
    per kv head beside the layer's attention output: its scratch, and with several passes the
    pass's own output [Lt, G*n'*Hv]."""
    n = min(head_chunk, heads.n_rep)
    one = _one_pass(heads, n)
    extra = lt * one.o_width if n < heads.n_rep else 0
    return streamed_attention_numel(one, lt) + extra


@functools.lru_cache(maxsize=64)
def _one_pass(heads: HeadLayout, n: int) -> HeadLayout:
    """`heads` with `n` query heads per kv head (one attention pass's)."""
    return dataclasses.replace(heads, n_rep=n)


def _head_numel(config: ModelConfig, rows: int, lt: int, d_t: int) -> int:
    """`prefill.prefill_logits` and the argmax: the residual stream, then the last hidden
    state, its norm, the logits (V split along Y) and the argmax, each freed once the next
    step has read it; a compressed LM head adds its float16 chunk (`prefill_scratch`)."""
    v_r = math.ceil(config.vocab_size / rows)
    return max(lt * d_t + d_t, 2 * d_t, d_t + v_r, v_r + 1)  # lt = 1: the head's own region


def decode_scratch_bytes(config: ModelConfig, rows: int, cols: int, sb: int) -> tuple[int, int]:
    """(fixed, per cached slot) bytes per core that one decode step holds at its peak: the
    residual and normed vectors, q/k/v, RoPE tables, attention output, the FFN's gate and up,
    this step's logits and the previous step's (kept on the mesh for `fetch_logits` until this
    step selects); plus one score per (head, slot)."""
    heads = heads_for(config, cols)
    d_y = math.ceil(config.hidden_size / rows)
    f_x = math.ceil(config.intermediate_size / cols)
    v_x = math.ceil(config.vocab_size / cols)
    fixed = 6 * d_y + heads.q_width + heads.o_width + heads.kv_width + heads.v_width
    fixed += 2 * heads.head_slots
    fixed += 2 * f_x + 2 * v_x + 2
    return fixed * sb, heads.kv_per_tile * heads.n_rep * sb


def decode_logits_bytes(config: ModelConfig, cols: int, sb: int) -> int:
    """The part of `decode_scratch_bytes` that sits where the LM head is: this step's and the
    previous step's logits (V split along X) and the selected id."""
    return (2 * math.ceil(config.vocab_size / cols) + 2) * sb
