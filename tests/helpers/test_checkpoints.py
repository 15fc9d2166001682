"""The oracle itself: test checkpoints are reproducible and meaningful, the criterion can fail."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers.checkpoints import (
    DEFAULT_NEW_TOKENS,
    DEFAULT_PROMPT_IDS,
    EOS_ID,
    METADATA_FILE,
    _load_reference_model,
    _run,
    assert_margins,
    check_token_identity,
    make_checkpoint,
    margin_threshold,
    reference_run,
)
from waferllm.model.config import rope_inv_freq
from waferllm.model.weights import ModelWeights, load_checkpoint


def test_the_same_seed_writes_byte_identical_checkpoints_and_the_same_greedy_tokens(tmp_path):
    a = make_checkpoint(tmp_path / "a", "mistral", sliding_window=5)
    b = make_checkpoint(tmp_path / "b", "mistral", sliding_window=5)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    ref_a = reference_run(a, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    ref_b = reference_run(b, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    assert ref_a.generated_ids == ref_b.generated_ids
    assert torch.equal(ref_a.logits, ref_b.logits)


def test_reference_greedy_tokens_are_the_argmax_of_its_teacher_forced_logits(standard_checkpoint):
    ref = reference_run(standard_checkpoint, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    prompt_len = len(DEFAULT_PROMPT_IDS)
    assert len(ref.generated_ids) == DEFAULT_NEW_TOKENS and EOS_ID not in ref.generated_ids
    assert ref.sequence_ids == DEFAULT_PROMPT_IDS + ref.generated_ids[:-1]
    assert ref.logits.shape == (len(ref.sequence_ids), 301) and ref.logits.dtype == torch.float32
    argmax = ref.logits.argmax(-1)[prompt_len - 1 :].tolist()
    assert argmax == list(ref.generated_ids)
    assert_margins(ref.logits)
    assert len(set(ref.generated_ids)) > 2, "a degenerate repeating model tests little"


def test_seed_search_is_recorded_and_margins_hold_for_the_recorded_seed(standard_checkpoint):
    meta = json.loads((standard_checkpoint / METADATA_FILE).read_text())
    assert meta["seed_used"] >= meta["seed_requested"]
    uncached = _run(
        _load_reference_model.__wrapped__(str(standard_checkpoint)),
        DEFAULT_PROMPT_IDS,
        DEFAULT_NEW_TOKENS,
    )
    cached = reference_run(standard_checkpoint, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    assert uncached.generated_ids == cached.generated_ids


def test_attention_in_test_checkpoints_is_far_from_uniform(llama_checkpoint):
    model = _load_reference_model(str(llama_checkpoint.resolve()))
    with torch.no_grad():
        out = model(torch.tensor([DEFAULT_PROMPT_IDS]), output_attentions=True)
    last_row = out.attentions[0][0, :, -1, :]  # [heads, keys] for the last query
    assert float(last_row.max()) > 3.0 / len(DEFAULT_PROMPT_IDS)


def _forward(path, ids):
    model = _load_reference_model(str(path.resolve()))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_the_mistral_sliding_window_masks_only_positions_beyond_it(tmp_path):
    ids = list(range(2, 18))
    windowed = make_checkpoint(tmp_path, "mistral", sliding_window=5, margin_prompt_ids=None)
    full = make_checkpoint(tmp_path, "mistral", sliding_window=None, margin_prompt_ids=None)
    a, b = _forward(windowed, ids), _forward(full, ids)
    assert torch.equal(a[:5], b[:5])
    assert (a[5:] - b[5:]).abs().amax(-1).min() > 1e-3


def test_llama3_rope_scaling_changes_the_logits_within_the_standard_request(tmp_path):
    ids = list(DEFAULT_PROMPT_IDS) + [7] * DEFAULT_NEW_TOKENS
    scaled = make_checkpoint(tmp_path, "llama3_rope", margin_prompt_ids=None)
    plain = make_checkpoint(tmp_path, "llama", margin_prompt_ids=None)
    a, b = _forward(scaled, ids), _forward(plain, ids)
    assert torch.equal(a[0], b[0])  # position 0 is not rotated
    assert float((a - b).abs().max()) > 1e-2 * float(b.abs().max())


def _logits() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 50, generator=generator, dtype=torch.float64) * 3


def test_token_identity_accepts_tiny_differences_and_reports_them():
    ref = _logits()
    report = check_token_identity(ref * (1 + 1e-7), ref)
    assert report.num_positions == 6 and report.num_argmax_checked == 6
    assert 0 < report.max_rel_error < 1e-6


def test_token_identity_rejects_errors_above_the_tolerance_at_any_position():
    ref = _logits()
    ours = ref.clone()
    ours[4, 7] += 2e-4 * ref[4].abs().max()
    with pytest.raises(AssertionError, match=r"positions \[4\]"):
        check_token_identity(ours, ref)
    with pytest.raises(AssertionError, match="shape"):
        check_token_identity(ref[:-1], ref)
    ours = ref.clone()
    ours[2, 3] = float("nan")
    with pytest.raises(AssertionError, match="nan"):
        check_token_identity(ours, ref)


def test_token_identity_checks_the_argmax_only_where_the_reference_margin_is_decisive():
    ref = _logits()
    top2 = ref[1].topk(2).indices
    ref[1, top2[1]] = ref[1, top2[0]] - 0.5 * float(margin_threshold(ref)[1])  # a near-tie
    ours = ref.clone()
    ours[1, top2[1]] = ref[1, top2[0]] + 1e-9  # flips a non-decisive argmax: allowed
    report = check_token_identity(ours, ref, rel_tolerance=1e-3)
    assert report.num_argmax_checked == 5
    with pytest.raises(AssertionError, match=r"positions \[1\]"):
        assert_margins(ref)
    ours = ref.clone()
    top2 = ref[3].topk(2).indices
    ours[3, top2[1]] = ref[3, top2[0]] + 1e-9  # flips a decisive argmax
    with pytest.raises(AssertionError, match=r"argmax differs .* positions \[3\]"):
        check_token_identity(ours, ref, rel_tolerance=1.0)


def _dense_logits(weights: ModelWeights, ids: tuple[int, ...]) -> torch.Tensor:
    """An independent float64 forward pass from the loaded weights (no transformers code)."""
    # Legend: T tokens, N heads, H head dim.
    c = weights.config
    num_tokens = len(ids)

    def linear(x, w, b):
        return x @ w.double().T + (0 if b is None else b.double())

    def rms_norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * w.double()

    def rope(x_NTH):
        angle_TH = torch.arange(num_tokens).double()[:, None] * rope_inv_freq(c).double()
        cos, sin = torch.cat([angle_TH.cos()] * 2, -1), torch.cat([angle_TH.sin()] * 2, -1)
        half = c.head_dim // 2
        rotated = torch.cat([-x_NTH[..., half:], x_NTH[..., :half]], -1)
        return x_NTH * cos + rotated * sin

    query, key = torch.arange(num_tokens)[:, None], torch.arange(num_tokens)[None, :]
    allowed = key <= query
    if c.sliding_window is not None:
        allowed &= key > query - c.sliding_window
    x = weights.embed[list(ids)].double()
    for layer in weights.layers:
        w = layer.get
        h = rms_norm(x, w("attn_norm"))
        q_NTH = linear(h, w("wq"), w("bq")).view(num_tokens, -1, c.head_dim).transpose(0, 1)
        k_NTH = linear(h, w("wk"), w("bk")).view(num_tokens, -1, c.head_dim).transpose(0, 1)
        v_NTH = linear(h, w("wv"), w("bv")).view(num_tokens, -1, c.head_dim).transpose(0, 1)
        k_NTH = rope(k_NTH).repeat_interleave(c.num_kv_groups, 0)
        v_NTH = v_NTH.repeat_interleave(c.num_kv_groups, 0)
        scores = rope(q_NTH) @ k_NTH.transpose(1, 2) / c.head_dim**0.5
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        attn_TD = (probs @ v_NTH).transpose(0, 1).reshape(num_tokens, c.q_size)
        x = x + linear(attn_TD, w("wo"), w("bo"))
        h = rms_norm(x, w("mlp_norm"))
        gate = torch.nn.functional.silu(linear(h, w("w_gate"), w("b_gate")))
        x = x + linear(gate * linear(h, w("w_up"), w("b_up")), w("w_down"), w("b_down"))
    return linear(rms_norm(x, weights.final_norm), weights.lm_head, None)


def test_an_independent_dense_forward_meets_the_token_identity_criterion(standard_checkpoint):
    weights = load_checkpoint(standard_checkpoint).weights
    ref = reference_run(standard_checkpoint, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    report = check_token_identity(_dense_logits(weights, ref.sequence_ids), ref.logits)
    assert report.num_argmax_checked == report.num_positions == len(ref.sequence_ids)
    assert report.max_rel_error < 1e-5


def test_the_criterion_catches_a_forward_pass_without_the_sliding_window(mistral_checkpoint):
    weights = load_checkpoint(mistral_checkpoint).weights
    no_window = dataclasses.replace(
        weights, config=dataclasses.replace(weights.config, sliding_window=None)
    )
    ref = reference_run(mistral_checkpoint, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    with pytest.raises(AssertionError, match="logits differ"):
        check_token_identity(_dense_logits(no_window, ref.sequence_ids), ref.logits)
