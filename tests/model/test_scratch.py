"""The planner's prefill bound is the walk's peak (SPEC.md §10.10), both ways, and attention in
passes of query heads (the public code's single-head prefill holds one score block per core)
computes what one pass computes.

Config `tiny` (4 query heads on 2 kv heads: n_rep = 2) on the 64 x 64 `tiny` device.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.weights import random_weights

from waferllm.device import tiny
from waferllm.mesh.cost import Ledger
from waferllm.model.config_sources import load_config
from waferllm.model.placement import PlacementMode
from waferllm.model.transformer import MeshTransformer

CONFIG = load_config("tiny")


def _estimate(grid: tuple[int, int], placement: PlacementMode) -> MeshTransformer:
    return MeshTransformer(
        CONFIG, None, device=tiny(), prefill_grid=grid, decode_grid=grid, placement=placement
    )


@pytest.mark.parametrize("grid", [(4, 4), (3, 4), (5, 3)])
@pytest.mark.parametrize("fraction", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("placement", list(PlacementMode))
def test_the_prefill_bound_equals_the_peak_the_estimate_walk_records(grid, fraction, placement):
    model = _estimate(grid, placement)
    length = max(1, round(fraction * model.plan.max_prompt_tokens))
    model.prefill([0] * length, Ledger())
    walked = max(m.sram.peak_bytes for m in model.prefill_state.all_meshes)
    planned = model.plan.prefill_need_bytes(length)
    assert planned >= walked
    assert planned == walked


def test_long_prompts_run_attention_in_passes_and_the_plan_still_equals_the_walk():
    model = _estimate((4, 4), PlacementMode.PER_LAYER)
    longest = model.plan.max_prompt_tokens
    assert model.plan.attention_chunk(longest // 4) == 2  # one pass when SRAM allows
    assert model.plan.attention_chunk(longest) == 1
    model.prefill([0] * longest, Ledger())
    assert model.plan.prefill_need_bytes(longest) == model.peak_sram_bytes_per_core()


def test_attention_in_passes_gives_the_one_pass_logits():
    weights = random_weights(CONFIG)
    length = 256  # long enough that attention is the prefill peak
    roomy = MeshTransformer(CONFIG, weights, device=tiny(), prefill_grid=(4, 4), decode_grid=(4, 4))
    # the least SRAM on which one query head per pass fits this prompt
    need = roomy.plan.prefill_need_bytes(length, head_chunk=1)
    assert need < roomy.plan.prefill_need_bytes(length, head_chunk=2)
    tight_device = dataclasses.replace(tiny(), sram_bytes_per_core=need)
    tight = MeshTransformer(
        CONFIG,
        weights,
        device=tight_device,
        prefill_grid=(4, 4),
        decode_grid=(4, 4),
        max_context_tokens=length,
    )
    assert roomy.plan.attention_chunk(length) == 2
    assert tight.plan.attention_chunk(length) == 1
    ids = [(7 * i) % CONFIG.vocab_size for i in range(length)]
    one = roomy.prefill(ids, Ledger()).fetch_logits(Ledger())
    passes = tight.prefill(ids, Ledger()).fetch_logits(Ledger())
    torch.testing.assert_close(passes, one, rtol=1e-5, atol=1e-5)


def test_prompts_too_long_for_one_head_per_pass_stream_the_keys_and_give_the_same_logits():
    weights = random_weights(CONFIG)
    length = 256
    roomy = MeshTransformer(CONFIG, weights, device=tiny(), prefill_grid=(4, 4), decode_grid=(4, 4))
    streamed = roomy.plan.prefill_need_bytes(length, head_chunk=1, streamed=True)
    assert streamed < roomy.plan.prefill_need_bytes(length, head_chunk=1, streamed=False)
    tight_device = dataclasses.replace(tiny(), sram_bytes_per_core=streamed)
    tight = MeshTransformer(
        CONFIG,
        weights,
        device=tight_device,
        prefill_grid=(4, 4),
        decode_grid=(4, 4),
        max_context_tokens=length,
    )
    assert roomy.plan.attention_schedule(length) == (2, False)
    assert tight.plan.attention_schedule(length) == (1, True)
    ids = [(7 * i) % CONFIG.vocab_size for i in range(length)]
    one = roomy.prefill(ids, Ledger()).fetch_logits(Ledger())
    ledger = Ledger()
    keys = tight.prefill(ids, ledger).fetch_logits(Ledger())
    torch.testing.assert_close(keys, one, rtol=1e-4, atol=1e-4)
    assert any(r.op.endswith("attn.step") for r in ledger.expanded())
    walked = max(m.sram.peak_bytes for m in tight.prefill_state.all_meshes)
    assert walked == tight.plan.prefill_need_bytes(length) <= streamed
