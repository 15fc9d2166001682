"""The plan's per-core byte budgets: the scratch it packs regions with (`plan_budget`), what a
prompt's prefill needs on every region, the longest prompt that fits, the KV cache's slots per
row, and the `per-layer` vocabulary regions.

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
from waferllm.model.placement import (
    Phase,
    dequant_chunk_bytes,
    kv_slot_bytes_per_core,
    norm_spec,
    tile_bytes,
    vocab_spec,
)
from waferllm.model.quant import Storage
from waferllm.model.regions import Footprint, PhaseRegions
from waferllm.model.scratch import (
    PrefillScratch,
    decode_logits_bytes,
    decode_scratch_bytes,
    prefill_scratch,
)


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
    streamed: bool = False,
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
    s = prefill_scratch(
        config, rows, cols, sb, length, head_chunk=head_chunk, streamed=streamed, stored=stored
    )
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
    head at a time or with the key blocks streamed (0 if none does)."""

    rows = regions.grid[0]

    def fits(length: int) -> bool:  # the need depends on the token tile ceil(length / R) only
        return fits_tiles(-(-length // rows))

    @functools.cache
    def fits_tiles(tokens_per_row: int) -> bool:  # the usual walk, else the lean one
        return any(
            prefill_need_bytes(
                regions,
                fp,
                config,
                sb,
                tokens_per_row * rows,
                head_chunk=1,
                streamed=s,
                apart=apart,
                stored=stored,
            )
            <= cap
            for s in (False, True)
        )

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanBudget:
    """Per-core byte counts the planner needs beyond the weights (see `plan_model`)."""

    decode_fixed: int  # one decode step's scratch on a region of layers
    score_slot: int  # decode scratch per cached slot
    kv_slot: int  # one cached position, one layer (K and V)
    kv_want: int  # cache slots per row the caller asked for (1 when unspecified)
    prefill: PrefillScratch  # the prefill walk for the planned prompt (1 token when unspecified)


def plan_budget(
    config: ModelConfig,
    grids: dict[Phase, tuple[int, int]],
    sb: int,
    max_context_tokens: int | None,
    apart: bool,
    storage: Storage,
    *,
    lean: bool,
) -> PlanBudget:
    decode_grid = grids[Phase.DECODE]
    fixed, score_slot = decode_scratch_bytes(config, *decode_grid, sb)
    fixed += dequant_chunk_bytes(config, *decode_grid, Phase.DECODE, storage.weights, sb)
    if apart:  # the logits live on the head's region
        fixed -= decode_logits_bytes(config, decode_grid[1], sb)
    # prefill is planned for a prompt of max_context_tokens (1 when unspecified)
    length = max_context_tokens or 1
    return PlanBudget(
        decode_fixed=fixed,
        score_slot=score_slot,
        kv_slot=kv_slot_bytes_per_core(config, decode_grid[1], sb, storage.kv),
        kv_want=1 if max_context_tokens is None else -(-max_context_tokens // decode_grid[0]),
        prefill=prefill_scratch(
            config,
            *grids[Phase.PREFILL],
            sb,
            length,
            head_chunk=1,
            streamed=lean,
            stored=storage.weights,
        ),
    )


def check_apart(
    config: ModelConfig, grids: dict[Phase, tuple[int, int]], sb: int, cap: int, stored: StoredDtype
) -> dict[Phase, VocabApart]:
    """`per-layer`: the vocabulary regions' bytes, checked against SRAM (the head's region
    holds its scratch: prefill's for a 1-token prompt, decode's step vectors and logits)."""
    out = {phase: vocab_apart(config, phase, grid, sb, stored) for phase, grid in grids.items()}
    pre = prefill_scratch(config, *grids[Phase.PREFILL], sb, 1, head_chunk=1, stored=stored)
    dec, _ = decode_scratch_bytes(config, *grids[Phase.DECODE], sb)
    for phase, scratch in ((Phase.PREFILL, pre.head_apart), (Phase.DECODE, dec)):
        need = out[phase].head + scratch
        if need > cap:
            rows, cols = grids[phase]
            raise SramOverflowError(
                tensor=f"{phase.value} LM head region (per-layer)",
                core=(0, 0),
                needed_bytes=need,
                available_bytes=cap,
                hint=f"the vocabulary table alone takes {out[phase].head} bytes per core on "
                f"{rows}x{cols}; use a larger grid or a device with more SRAM per core",
            )
    return out
