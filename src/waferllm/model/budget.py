"""The plan's per-core byte budgets: what a prompt's prefill needs on every region, the longest
prompt that fits, the KV cache's slots per row, and the `per-layer` vocabulary regions.

Sizes come from `placement.py` (tensors) and `scratch.py` (the walks' scratch); the regions
from `regions.py`. `plan.py` decides with these; nothing here places a tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from waferllm.errors import SramOverflowError
from waferllm.mesh.storage import StoredDtype
from waferllm.model.config import ModelConfig
from waferllm.model.placement import Phase, norm_spec, tile_bytes, vocab_spec
from waferllm.model.regions import Footprint, PhaseRegions
from waferllm.model.scratch import prefill_scratch


def vocab_bytes(
    config: ModelConfig,
    phase: Phase,
    rows: int,
    cols: int,
    sb: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> int:
    return tile_bytes(vocab_spec(config, phase), rows, cols, sb, stored)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VocabApart:
    """`per-layer`: the vocabulary tables on notional regions of their own beside the layer's
    (SPEC.md §10.10: a per-layer plan holds no vocabulary table). Per-core bytes placed on
    the head's region (LM head, final norm; a tied table serves the embedding too) and on
    the embedding's (0 when tied)."""

    head: int
    embed: int


def vocab_apart(
    config: ModelConfig, phase: Phase, grid: tuple[int, int], sb: int, stored: StoredDtype
) -> VocabApart:
    rows, cols = grid
    table = vocab_bytes(config, phase, rows, cols, sb, stored)
    norm = tile_bytes(norm_spec(config, phase), rows, cols, sb)
    return VocabApart(head=table + norm, embed=0 if config.tie_word_embeddings else table)


def prefill_need_bytes(
    regions: PhaseRegions,
    fp: Footprint,
    config: ModelConfig,
    sb: int,
    length: int,
    *,
    head_chunk: int,
    apart: VocabApart | None,
    stored: StoredDtype = StoredDtype.FLOAT16,
    kept: int = 1,
    attention_extra_bytes: int = 0,
) -> int:
    """The most any core of the prefill plan holds for a prompt of `length` tokens (the walk's
    peak, `scratch.prefill_scratch`): a region's weights and the k/v its layers keep, plus the
    peak of its layers' walk (the layers before the walked one keep their k/v) or, on the last
    region, of the head; the vocabulary tables where they live (`apart`: regions of their own).
    A chunk of a chunked prefill (`chunked.py`): `length` is the chunk's, every layer keeps
    `kept` k/v chunks (its own included) and attention adds `attention_extra_bytes`."""
    rows, cols = regions.grid
    s = prefill_scratch(config, rows, cols, sb, length, head_chunk=head_chunk, stored=stored)
    last = len(regions.regions) - 1
    need = 0
    for i, region in enumerate(regions.regions):
        n = len(region.layers)
        used = n * fp.layer + fp.reserve + (fp.first if i == 0 else 0)
        peak = (n * kept - 1) * s.kv + s.layer + attention_extra_bytes
        if i == last and apart is None:
            used += fp.last
            peak = max(peak, n * kept * s.kv + s.head)
        need = max(need, used + peak)
    if apart is not None:
        lt_d = math.ceil(length / rows) * math.ceil(config.hidden_size / cols)
        need = max(need, apart.head + s.head_apart, apart.embed + lt_d)
    return need


@functools.lru_cache(maxsize=4096)  # every model on a grid asks it again
def max_prompt_tokens(
    regions: PhaseRegions,
    fp: Footprint,
    config: ModelConfig,
    cap: int,
    sb: int,
    apart: VocabApart | None,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> int:
    """The longest prompt whose prefill fits every region, attention one query head per kv
    head at a time (0 if none does)."""

    def fits(length: int) -> bool:
        need = prefill_need_bytes(
            regions, fp, config, sb, length, head_chunk=1, apart=apart, stored=stored
        )
        return need <= cap

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high) and high < 1 << 24:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def kv_slots(
    plan: PhaseRegions,
    fp: Footprint,
    cap: int,
    *,
    weights_per_layer: int,
    other: int,
    fixed: int,
    kv_slot: int,
    score_slot: int,
) -> int:
    """Slots per row that fit beside every region's weights and one step's scratch."""
    best, worst_free, last = None, cap, len(plan.regions) - 1
    for i, region in enumerate(plan.regions):
        layers = len(region.layers)
        used = layers * weights_per_layer + other + fixed
        used += (fp.first if i == 0 else 0) + (fp.last if i == last else 0)
        slots = (cap - used) // (layers * kv_slot + score_slot)
        if best is None or slots < best:
            best, worst_free = slots, cap - used
    assert best is not None
    if best < 1:
        raise SramOverflowError(
            tensor="kv cache",
            core=(0, 0),
            needed_bytes=cap - worst_free + kv_slot + score_slot,
            available_bytes=cap,
            hint="no room for one cached position per row beside the weights; use a larger "
            "decode grid, fewer layers per region or more SRAM",
        )
    return int(best)
