"""FLOPs of a request from the family table, against a direct count and torch's counter."""

from __future__ import annotations

import dataclasses

import torch

from waferllm.estimate.flops import _keys_seen, model_flops
from waferllm.model.config import from_hf_dict

VOCAB = 11
SHAPE = from_hf_dict(
    {
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "vocab_size": VOCAB,
    },
    "shape",
)


def test_model_flops_match_a_direct_count_of_the_layers_matmuls():
    d, f, q, kv, layers, vocab = 8, 12, 8, 4, 2, VOCAB
    per_token = 2 * (d * q + 2 * d * kv + q * d + 3 * d * f)
    # prompt 3 + 2 fed-back tokens: keys 1..5; q.k and p.v: 2 * 2 * q per key
    expected = layers * (5 * per_token + 4 * q * (1 + 2 + 3 + 4 + 5)) + 3 * 2 * d * vocab
    assert model_flops(SHAPE, prompt_len=3, output_len=3) == expected
    windowed = dataclasses.replace(SHAPE, sliding_window=2)
    expected_w = layers * (5 * per_token + 4 * q * (1 + 2 + 2 + 2 + 2)) + 3 * 2 * d * vocab
    assert model_flops(windowed, prompt_len=3, output_len=3) == expected_w


def test_keys_seen_in_closed_form_equal_the_sum_over_positions():
    for positions in range(0, 70):
        for window in (None, 0, 1, 2, 3, 7, 64, 69, 70, 500):
            direct = sum(min(p + 1, window) if window else p + 1 for p in range(positions))
            assert _keys_seen(positions, window) == direct, (positions, window)


def test_model_flops_agree_with_torchs_flop_counter_on_a_transformers_llama():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SHAPE
    config = LlamaConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        vocab_size=shape.vocab_size,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    prompt_len, output_len = 5, 4
    positions = prompt_len + output_len - 1
    counter = FlopCounterMode(display=False)
    # One causal forward over every position whose k/v the request computes, with logits at
    # the positions that feed the sampler: the same work as prefill + O-1 decode steps.
    with torch.no_grad(), counter:
        model(torch.zeros(1, positions, dtype=torch.long), logits_to_keep=output_len)
    # eager attention multiplies the full square and masks; a causal kernel skips the upper half
    q_size = shape.num_attention_heads * shape.head_dim
    masked = 4 * q_size * (positions * positions - positions * (positions + 1) // 2)
    expected = counter.get_total_flops() - shape.num_hidden_layers * masked
    assert model_flops(shape, prompt_len=prompt_len, output_len=output_len) == expected
