"""`prefill_scratch`'s running count equals a replay of the walk's buffers one allocation at a
time (the form it had before: every alloc, free and kernel-scoped transient in turn).

Hypothesis draws models (tiny, the 135M shape of issue 11, LLaMA3-8B, LLaMA2-13B: n_rep 1),
grids from 1 x 1 to wafer sides, prompt lengths, query heads per pass, the usual and the lean
walk, and every weight storage; the two must agree on every field, bit for bit.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.mesh.storage import StoredDtype
from waferllm.model.config import ModelConfig, from_hf_dict
from waferllm.model.config_sources import load_config
from waferllm.model.scratch import (
    PrefillScratch,
    _attention_numel,
    _grid,
    _head_numel,
    _streamed_numel,
    prefill_scratch,
)

SHAPE_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
CONFIGS = [
    load_config("tiny"),
    from_hf_dict(SHAPE_135M, "smol-135m"),
    load_config("llama3-8b"),
    load_config("llama2-13b"),
]


class _Live:
    """A running count of live bytes per core and its peak (the walk's SRAM tracker)."""

    def __init__(self, start: int = 0) -> None:
        self.now = start
        self.peak = start

    def alloc(self, *numels: int) -> None:
        self.now += sum(numels)
        self.peak = max(self.peak, self.now)

    def free(self, *numels: int) -> None:
        self.now -= sum(numels)

    def transient(self, *numels: int) -> None:
        """Buffers of one kernel's inner scope: live together, freed when it ends."""
        self.alloc(*numels)
        self.free(*numels)


def _kept(*numels: int) -> None:
    """The usual walk: temporaries stay until the layer's SRAM scope ends."""


def replayed_scratch(
    config: ModelConfig,
    rows: int,
    cols: int,
    sb: int,
    length: int,
    *,
    head_chunk: int,
    streamed: bool,
    stored: StoredDtype,
) -> PrefillScratch:
    """The oracle: `prefill_scratch` as it was, each buffer allocated and freed in turn."""
    grid = _grid(config, rows, cols, sb, stored)
    w, d_t = grid.widths, grid.d_t
    lt = math.ceil(length / rows)
    lt_pad = -(-lt // grid.per_row) * grid.per_row
    live = _Live((lt * d_t + 2 * lt * w.h) * sb)

    def operand(k: int) -> int:
        width = grid.width[k]
        live.alloc(lt * width * sb)
        live.transient(lt_pad * width * sb)
        live.free(lt * width * sb)
        live.alloc(lt_pad * width * sb)
        return width

    def gemm(width: int, n: int, weight: str) -> int:
        nt, nt_pad = grid.nt[n]
        live.alloc(lt * nt * sb)
        live.transient((lt_pad * width + lt_pad * nt_pad - lt * nt) * sb, grid.b_bytes[weight])
        return lt * nt * sb

    d, f = config.hidden_size, config.intermediate_size
    q_n, kv_n, v_n, o_n = cols * w.q, cols * w.kv, cols * w.v, cols * w.o
    norm = lt * d_t * sb
    free = live.free if streamed else _kept
    live.alloc(norm)
    width = operand(d)
    free(norm)
    q = gemm(width, q_n, "wq")
    gemm(width, kv_n, "wk")
    gemm(width, v_n, "wv")
    free(lt_pad * width * sb)
    if streamed:
        live.alloc(lt * w.o * sb)
        live.transient(_streamed_numel(grid.heads, lt, head_chunk) * sb)
    else:
        live.transient(_attention_numel(w, rows, lt, head_chunk) * sb)
        live.alloc(lt * w.o * sb)
    free(q)
    width = operand(o_n)
    free(lt * w.o * sb)
    o = gemm(width, d, "wo")
    free(lt_pad * width * sb, o)
    live.alloc(norm)
    width = operand(d)
    free(norm)
    gate = gemm(width, f, "w_gate")
    up = gemm(width, f, "w_up")
    free(lt_pad * width * sb, up)
    width = operand(f)
    free(gate)
    down = gemm(width, d, "w_down")
    free(lt_pad * width * sb, down)
    return PrefillScratch(
        layer=live.peak,
        head=_head_numel(config, rows, lt, d_t) * sb + grid.vocab_chunk,
        head_apart=_head_numel(config, rows, 1, d_t) * sb + grid.vocab_chunk,
        kv=lt * (w.kv + w.v) * sb,
    )


@settings(max_examples=400, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    rows=st.one_of(st.integers(1, 24), st.integers(300, 900)),
    cols=st.one_of(st.integers(1, 24), st.integers(300, 900)),
    length=st.one_of(st.integers(1, 64), st.integers(1, 1 << 17)),
    head_chunk=st.integers(1, 8),
    streamed=st.booleans(),
    stored=st.sampled_from(list(StoredDtype)),
    sb=st.sampled_from([2, 4]),
)
def test_the_running_count_equals_the_replay_of_every_buffer(
    config, rows, cols, length, head_chunk, streamed, stored, sb
):
    args = (config, rows, cols, sb, length)
    kw = {"head_chunk": head_chunk, "streamed": streamed, "stored": stored}
    assert prefill_scratch(*args, **kw) == replayed_scratch(*args, **kw)


def test_the_llama3_8b_wafer_sizings_equal_the_replay_for_every_tile_count():
    # the grid search's and the requests' sides: every token tile a bisection might price
    config = CONFIGS[2]
    for side in (226, 357, 480, 653, 669, 720):
        for lt in (*range(1, 80), 97, 128, 255, 1000):
            for streamed in (False, True):
                kw = {"head_chunk": 1, "streamed": streamed, "stored": StoredDtype.FLOAT16}
                got = prefill_scratch(config, side, side, 2, lt * side, **kw)
                assert got == replayed_scratch(config, side, side, 2, lt * side, **kw)
