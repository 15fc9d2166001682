"""The planner's byte budgets against closed forms written out by hand (SPEC.md §10.4, §10.10).

Config `tiny` (D 64, F 176, 4 query heads on 2 kv heads of head_dim 16, V 256, 2 layers) on
small grids, storage 2 bytes. On C = 4 columns each kv head owns 2 columns and 4 of its 8 RoPE
pairs: G = 1 kv head per tile, H = 8 head slots, n_rep = 2, q tile 16, kv tile 8. The last test
compares the plan's bounds with the peaks the estimate-mode walk records in its SRAM trackers.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from waferllm.device import get_device, tiny
from waferllm.estimate.decode_walks import DecodeWalks
from waferllm.mesh.cost import Ledger
from waferllm.model.budget import prefill_need_bytes
from waferllm.model.config_sources import load_config
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    heads_for,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    layer_specs,
    tile_bytes,
    vocab_spec,
)
from waferllm.model.plan import plan_model, wide_enough
from waferllm.model.scratch import decode_scratch_bytes, prefill_scratch
from waferllm.model.transformer import MeshTransformer

SB = 2  # bytes per stored element
CONFIG = load_config("tiny")


def test_decode_scratch_is_the_step_vectors_plus_one_score_per_head_and_slot():
    # 2x4: d_y = 32, f_x = 44, v_x = 64; q 16, kv 8, H 8 per column; the logits twice (this
    # step's and the previous step's, kept on the mesh until this step selects)
    fixed = 6 * 32 + 2 * 16 + 2 * 8 + 2 * 8 + 2 * 44 + 2 * 64 + 2  # x, normed.. ; q/k/v; rope
    assert fixed == 474
    per_slot = 1 * 2  # G * n_rep scores
    assert decode_scratch_bytes(CONFIG, 2, 4, SB) == (fixed * SB, per_slot * SB)


def test_prefill_scratch_peaks_at_the_down_projection_with_every_tile_the_layer_keeps():
    # 4x4, a 10-token prompt: lt = 3 rows of tokens per core, no logical padding (square).
    # The walk keeps a layer's outputs until it ends, so the peak is w_down's step: x, RoPE
    # cos/sin, the two norms' outputs, the three aligned GEMM inputs of width D and the down
    # one of width F, q, k, v, attention's output, o, gate, up, down, and w_down's receive
    # buffers (its [F/4, D/4] tile and the aligned input's)
    lt, d_x, f_x, q_x, kv_w, h = 3, 16, 44, 16, 8, 8
    kept = lt * (7 * d_x + 3 * q_x + 2 * kv_w + 3 * f_x) + 2 * lt * h
    recv = lt * f_x + f_x * d_x
    s = prefill_scratch(CONFIG, 4, 4, SB, 10, head_chunk=2)
    assert s.layer == (kept + recv) * SB == 1808 * SB
    assert s.kv == 2 * lt * kv_w * SB
    # the head: the residual stream and the last hidden state, or that, its norm, the logits
    # (V/4 = 64 per core) and the argmax
    assert s.head == max(lt * d_x + d_x, d_x + 64) * SB


def test_attention_in_passes_holds_one_pass_of_scores_and_the_whole_output():
    # 2 query heads per kv head on 4 columns: G = 1, Kc = 2; lt = 64 for a 256-token prompt,
    # long enough that attention is the layer's peak
    lt, h, kc, q_w = 64, 8, 2, 16

    def attention(n: int) -> int:  # scores, K ring, two partials, P@V acc, V ring, P block
        return n * lt * kc * lt + h * lt + 2 * n * lt * lt + n * lt * h + lt * h + n * lt * lt

    one, two = (prefill_scratch(CONFIG, 4, 4, SB, 256, head_chunk=c) for c in (1, 2))
    before = lt * (4 * 16 + 2 * 8 + 2 * h)  # x, the norm, q_proj's input, q; k, v; RoPE
    assert two.layer == (before + attention(2)) * SB
    assert one.layer == (before + attention(1) + lt * q_w) * SB


def test_the_lean_walk_frees_temporaries_and_holds_one_score_block_and_running_statistics():
    # as above, the lean walk: the norm and q's aligned input already freed; attention
    # key-streamed: K and V ring copies, this step's and the reduced partial, the received
    # probability block, the running max and sum per query row; the output first
    lt, h, q_w = 64, 8, 16

    def streamed(n: int) -> int:
        return 2 * h * lt + 3 * n * lt * lt + 2 * n * lt

    one, two = (prefill_scratch(CONFIG, 4, 4, SB, 256, head_chunk=c, streamed=True) for c in (1, 2))
    before = lt * (2 * 16 + 2 * 8 + 2 * h) + lt * q_w  # x, q; k, v; RoPE; the output
    assert two.layer == (before + streamed(2)) * SB
    assert one.layer == (before + streamed(1) + lt * 8) * SB  # and the pass's own output


def test_decode_layer_bytes_are_the_tiles_of_every_family_row():
    # 2x4: wq [64_y, 64_x] -> 32x16; wk, wv 32x8; wo [64_x, 64_y] -> 16x32; w_gate, w_up
    # 32x44; w_down [176_x, 64_y] -> 44x32; two norms of 32
    tiles = 32 * 16 + 2 * 32 * 8 + 16 * 32 + 3 * 32 * 44 + 2 * 32
    assert layer_bytes_per_core(CONFIG, 2, 4, Phase.DECODE, SB) == tiles * SB


def _plan(**kwargs):
    args = {
        "prefill_grid": (4, 4),
        "decode_grid": (2, 4),
        "placement": PlacementMode.FIT,
        "resident": ResidentLayouts.ONE,
        "max_context_tokens": None,
    }
    return plan_model(CONFIG, tiny(), **{**args, **kwargs})


def test_kv_slots_fill_what_the_weights_vocabulary_and_step_scratch_leave():
    plan = _plan()
    cap = tiny().sram_bytes_per_core
    weights = 2 * 5824 * SB  # two layers (previous test)
    vocab = 32 * 64 * SB  # [D_y, V_x] tile, on the first region (embedding) and the last
    first, last = vocab, vocab + 32 * SB  # the last also holds the final norm
    fixed, score = 474 * SB, 2 * SB
    kv_slot = 2 * 8 * SB  # K and V, one kv tile each
    used = weights + fixed + first + last
    assert len(plan.decode.regions) == 1
    assert plan.kv_slots == (cap - used) // (2 * kv_slot + score)


def test_max_prompt_tokens_is_the_longest_prompt_whose_prefill_need_fits():
    plan = _plan()
    cap = tiny().sram_bytes_per_core
    fp = plan.prefill_footprint
    longest = plan.max_prompt_tokens
    assert longest > 0

    def need(length: int) -> int:  # one query head per pass, dense or key-streamed
        return min(
            prefill_need_bytes(
                plan.prefill, fp, CONFIG, SB, length, head_chunk=1, streamed=s, apart=None
            )
            for s in (False, True)
        )

    assert need(longest) <= cap < need(longest + 1)
    # one region: both layers' weights, the first layer's kept k/v and the second's walk, or
    # both layers' k/v and the head; both vocab tables
    s = prefill_scratch(CONFIG, 4, 4, SB, longest, head_chunk=1, streamed=True)
    assert plan.attention_schedule(longest) == (1, True)  # the longest prompts stream keys
    walk = max(s.kv + s.layer, 2 * s.kv + s.head)
    assert need(longest) == 2 * fp.layer + fp.reserve + walk + fp.first + fp.last
    assert fp.first == 16 * 64 * SB and fp.last == fp.first + 16 * SB  # [D_x, V_y] tiles


# (prefill grid, decode grid, prompt, new tokens): each request fills most of the cache
WALKS = [((4, 4), (2, 4), 20, 10), ((3, 3), (3, 3), 9, 6), ((2, 3), (4, 2), 12, 8)]


@pytest.mark.parametrize(("prefill", "decode", "prompt_len", "output_len"), WALKS)
def test_the_plans_sram_bounds_cover_the_peaks_the_estimate_walk_records(
    prefill, decode, prompt_len, output_len
):
    context = prompt_len + output_len
    model = MeshTransformer(
        CONFIG,
        None,
        device=tiny(),
        prefill_grid=prefill,
        decode_grid=decode,
        max_context_tokens=context,
    )
    model.prefill([0] * prompt_len, Ledger())
    walked_prefill = max(m.sram.peak_bytes for m in model.prefill_state.meshes)
    planned_prefill = model.plan.prefill_need_bytes(prompt_len)
    DecodeWalks(model).decode(prompt_len, output_len)
    walked_decode = max(m.sram.peak_bytes for m in model.decode_state.meshes)
    rows, cols = decode
    fixed, score = decode_scratch_bytes(CONFIG, rows, cols, SB)
    slots = math.ceil(context / rows)  # what max_context_tokens asks each row to hold
    assert model.plan.kv_slots == slots
    planned_decode = _decode_bound(model, slots, fixed, score)
    gaps = (planned_prefill - walked_prefill, planned_decode - walked_decode)
    print(f"{prefill}->{decode}: prefill plan-walk {gaps[0]} B, decode plan-walk {gaps[1]} B")
    # the prefill bound is the walk's peak (the head's scratch may exceed it by the bytes
    # the walk frees before the head runs); decode is a bound within a few vectors
    assert 0 <= gaps[0] <= 0.02 * walked_prefill
    assert 0 <= gaps[1] <= 0.05 * walked_decode


def _decode_bound(model: MeshTransformer, slots: int, fixed: int, score: int) -> int:
    """The planner's decode bytes per core of the one region at `slots` slots per row."""
    rows, cols = model.plan.decode.grid
    weights = layer_bytes_per_core(CONFIG, rows, cols, Phase.DECODE, SB)
    kv_slot = kv_slot_bytes_per_core(CONFIG, cols, SB)
    vocab = tile_bytes(vocab_spec(CONFIG, Phase.DECODE), rows, cols, SB)
    norm = math.ceil(CONFIG.hidden_size / rows) * SB
    layers = CONFIG.num_hidden_layers
    return layers * (weights + slots * kv_slot) + fixed + slots * score + 2 * vocab + norm


def test_llama2_13b_holds_a_4096_token_prompt_on_one_wse2_by_streaming_the_keys():
    # 40 kv heads on 738 columns: groups of 18-19 columns, Kc = 14 key blocks of Lt = 17;
    # dense, one head per pass, needs ~56.6 KB per core; streamed fits the 48 KB
    device = get_device("wse2")
    plan = plan_model(
        load_config("llama2-13b"),
        device,
        prefill_grid=(246, 738),
        decode_grid=(331, 750),
        placement=PlacementMode.FIT,
        resident=ResidentLayouts.ONE,
        max_context_tokens=None,
    )
    cap = device.sram_bytes_per_core
    assert plan.max_prompt_tokens >= 4096
    assert plan.attention_schedule(4096) == (1, True)
    assert plan.prefill_need_bytes(4096, 1, streamed=False) > cap
    assert plan.prefill_need_bytes(4096) <= cap


def test_the_lean_walk_peaks_at_the_up_projection_with_only_the_tiles_still_read():
    # as the down-projection test, each temporary freed after its last reader: w_up's step
    # holds x, RoPE cos/sin, k and v (kept for the cache), the aligned input of width D,
    # gate and up, and w_up's receive buffers (its [D/4, F/4] tile and the aligned input's)
    lt, d_x, f_x, kv_w, h = 3, 16, 44, 8, 8
    kept = lt * (2 * d_x + 2 * kv_w + 2 * f_x) + 2 * lt * h
    recv = lt * d_x + d_x * f_x
    s = prefill_scratch(CONFIG, 4, 4, SB, 10, head_chunk=2, streamed=True)
    assert s.layer == (kept + recv) * SB == 1208 * SB


def _schedule_by_definition(plan, length: int) -> tuple[int, bool]:
    """Every option's need first, then the first that fits, else the first least needy."""
    cap = plan.device.sram_bytes_per_core
    options = [(c, s) for s in (False, True) for c in range(plan.config.num_kv_groups, 0, -1)]
    needs = [plan.prefill_need_bytes(length, c, streamed=s) for c, s in options]
    fitting = [o for o, need in zip(options, needs, strict=True) if need <= cap]
    return fitting[0] if fitting else options[needs.index(min(needs))]


@pytest.mark.parametrize(
    ("model", "prefill", "decode"),
    [("llama3-8b", (600, 600), (480, 480)), ("llama2-13b", (456, 456), (420, 420))],
)
def test_the_attention_schedule_kept_with_the_plan_is_the_definitions_at_every_length(
    model, prefill, decode
):
    config, device = load_config(model), get_device("wse2")
    plan = plan_model(
        config,
        device,
        prefill_grid=prefill,
        decode_grid=decode,
        placement=PlacementMode.PER_LAYER,
        resident=ResidentLayouts.ONE,
        max_context_tokens=None,
    )
    lengths = [1, 64, 1000, 4096, 9000, plan.max_prompt_tokens, plan.max_prompt_tokens + 1]
    lengths += [2 * plan.max_prompt_tokens, 40000]
    chosen = {length: plan.attention_schedule(length) for length in lengths}
    for length in lengths:  # asked again: the kept answer
        want = _schedule_by_definition(plan, length)
        assert chosen[length] == plan.attention_schedule(length) == want, length
    assert len(set(chosen.values())) > 1  # the lengths reach several schedules


def test_the_grid_part_prefill_scratch_remembers_is_its_definitions():
    """`scratch._grid` (remembered per config, grid, storage bytes and dtype) against each
    number read afresh from its definition: the heads' widths, `padded_k`'s operand widths,
    the GEMM outputs' N tiles and padded blocks, each weight's buffers, the vocabulary chunk;
    models, square and rectangular grids, float16 and compressed weights."""
    from waferllm.mesh.storage import StoredDtype
    from waferllm.mesh.tiling import padded_k
    from waferllm.model import scratch

    compressed = next(s for s in StoredDtype if s.compressed)
    for name in ("llama3-8b", "tiny", "qwen2-72b"):
        config = load_config(name)
        for rows, cols in ((420, 600), (600, 420), (7, 2), (4, 4)):
            heads = heads_for(config, cols)
            for stored in (StoredDtype.FLOAT16, compressed):
                grid = scratch._grid(config, rows, cols, SB, stored)
                w = grid.widths
                assert (w.g, w.n_rep, w.h, w.hv) == (
                    heads.kv_per_tile,
                    heads.n_rep,
                    heads.head_slots,
                    heads.value_slots,
                )
                assert (w.q, w.kv, w.v, w.o) == (
                    heads.q_width,
                    heads.kv_width,
                    heads.v_width,
                    heads.o_width,
                )
                assert w.smallest_group == min(heads.group_sizes)
                lcm = math.lcm(rows, cols)
                assert (grid.per_row, grid.per_col) == (lcm // rows, lcm // cols)
                assert grid.d_t == math.ceil(config.hidden_size / cols)
                for k, width in grid.width.items():
                    assert width == padded_k(rows, cols, k) // cols
                for n, (nt, nt_pad) in grid.nt.items():
                    assert nt == math.ceil(n / cols)
                    assert nt_pad == -(-nt // (lcm // cols)) * (lcm // cols)
                specs = layer_specs(config, rows, cols, Phase.PREFILL)
                assert grid.b_bytes == {
                    k: scratch._weight_buffers(spec, rows, cols, SB, stored)
                    for k, spec in specs.items()
                }
                vocab = vocab_spec(config, Phase.PREFILL)
                assert grid.vocab_chunk == scratch._dequant_chunk(vocab, rows, cols, SB, stored)


def test_a_device_widened_for_notional_regions_is_the_replaced_device_once_per_width():
    device = get_device("wse2")
    assert wide_enough(device, device.mesh_cols) is device
    wider = wide_enough(device, device.mesh_cols + 5)
    assert wider == dataclasses.replace(device, mesh_cols=device.mesh_cols + 5)
    assert wide_enough(device, device.mesh_cols + 5) is wider
