"""The mesh transformer reproduces transformers (SPEC.md §10.11) on every plan it supports.

Each case builds a tiny seeded checkpoint whose widths do not divide the grids (hidden 40,
intermediate 88, vocab 301), runs our prefill and 16 teacher-forced decode steps, checks the
criterion on every position from the last prompt token on, and then generates freely.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import DEFAULT_PROMPT_IDS, check_token_identity, reference_run

from waferllm.device import tiny
from waferllm.estimate.decode_walks import DecodeWalks
from waferllm.mesh.cost import Ledger
from waferllm.model.kv_cache import KvPolicy
from waferllm.model.transformer import MeshTransformer
from waferllm.model.weights import load_checkpoint

NEW_TOKENS = 16
PROMPT = list(DEFAULT_PROMPT_IDS)


def build(
    path: Path, prefill: tuple[int, int], decode: tuple[int, int], **kwargs
) -> MeshTransformer:
    ckpt = load_checkpoint(path)
    kwargs.setdefault("device", tiny())
    return MeshTransformer(
        ckpt.config, ckpt.weights, prefill_grid=prefill, decode_grid=decode, **kwargs
    )


def teacher_forced_logits(
    model: MeshTransformer, sequence: tuple[int, ...], prompt_len: int
) -> torch.Tensor:
    """Our logits [T - L + 1, V] for every position from the last prompt token on."""
    out = model.prefill(sequence[:prompt_len], Ledger())
    logits = [out.fetch_logits(Ledger())]
    model.transition(Ledger())
    for token in sequence[prompt_len:]:
        logits.append(model.decode_step(token, Ledger()).fetch_logits(Ledger()))
    return torch.stack(logits)


def greedy(model: MeshTransformer, prompt: list[int], new_tokens: int) -> list[int]:
    """A minimal greedy driver (the engine proper lives in waferllm.engine)."""
    tokens = [model.prefill(prompt, Ledger()).token]
    model.transition(Ledger())
    while len(tokens) < new_tokens:
        tokens.append(model.decode_step(tokens[-1], Ledger()).token)
    return tokens


def assert_matches_transformers(
    path: Path, model: MeshTransformer, prompt: list[int] = PROMPT
) -> None:
    ref = reference_run(path, prompt, NEW_TOKENS)
    ours = teacher_forced_logits(model, ref.sequence_ids, len(prompt))
    report = check_token_identity(ours, ref.logits[len(prompt) - 1 :])
    assert report.num_argmax_checked == NEW_TOKENS
    assert greedy(model, prompt, NEW_TOKENS) == list(ref.generated_ids)


FAMILIES = {
    "llama3_rope": {"family": "llama3_rope"},
    "mistral_window": {"family": "mistral", "sliding_window": 5},  # < the 9-token prompt
    "qwen2_tied": {"family": "qwen2_tied"},  # q/k/v biases and tied embeddings
    "phi3_window": {"family": "phi3", "sliding_window": 6},  # fused q/k/v and gate/up tensors
}
# every grid is covered by some family, every family by the mixed 4x4 -> 2x3 plan
CASES = [
    ("llama3_rope", (1, 1), (1, 1)),
    ("mistral_window", (2, 2), (2, 2)),
    ("qwen2_tied", (3, 3), (3, 3)),
    ("llama3_rope", (4, 4), (4, 4)),
    ("mistral_window", (2, 3), (2, 3)),
    ("qwen2_tied", (2, 3), (2, 3)),
    ("llama3_rope", (4, 4), (2, 3)),
    ("mistral_window", (4, 4), (2, 3)),
    ("qwen2_tied", (4, 4), (2, 3)),
    ("phi3_window", (1, 1), (1, 1)),
    ("phi3_window", (3, 3), (2, 4)),
    ("phi3_window", (4, 4), (2, 3)),
]


@pytest.mark.parametrize(("family", "prefill", "decode"), CASES)
def test_tokens_match_transformers_for_each_family_on_each_grid(
    checkpoint_factory, family, prefill, decode
):
    path = checkpoint_factory(**FAMILIES[family], margin_new_tokens=NEW_TOKENS)
    assert_matches_transformers(path, build(path, prefill, decode))


@pytest.mark.parametrize("kv_heads", [4, 1], ids=["mha", "mqa"])
@pytest.mark.parametrize(("prefill", "decode"), [((2, 3), (2, 3)), ((4, 4), (2, 3))])
def test_tokens_match_transformers_with_mha_and_mqa(checkpoint_factory, kv_heads, prefill, decode):
    # GQA (4 query heads on 2 kv heads) is every checkpoint above
    path = checkpoint_factory("llama", kv_heads=kv_heads, margin_new_tokens=NEW_TOKENS)
    assert_matches_transformers(path, build(path, prefill, decode))


def test_more_columns_than_head_dim_pairs_leave_columns_empty_and_still_match(
    checkpoint_factory,
):
    # head_dim 4 has 2 RoPE pairs: a kv-group of 3 columns leaves one column without any
    path = checkpoint_factory(
        "llama", hidden=24, heads=6, kv_heads=2, head_dim=4, margin_new_tokens=NEW_TOKENS
    )
    assert_matches_transformers(path, build(path, (3, 6), (3, 6)))


SMALL_SRAM = dataclasses.replace(tiny(), sram_bytes_per_core=8192)
SMALL_PROMPT = (0, 37, 102, 25, 17, 88, 64, 99, 5)  # for a 128-token vocabulary


def test_a_model_spread_over_regions_matches_and_estimates_the_same_ledger(checkpoint_factory):
    path = checkpoint_factory(
        "llama",
        layers=4,
        vocab=128,
        with_tokenizer=False,
        margin_prompt_ids=SMALL_PROMPT,
        margin_new_tokens=NEW_TOKENS,
    )
    model = build(path, (4, 4), (4, 4), device=SMALL_SRAM, max_context_tokens=24)
    assert len(model.plan.prefill.regions) >= 2 and len(model.plan.decode.regions) >= 2
    assert_matches_transformers(path, model, list(SMALL_PROMPT))
    config = load_checkpoint(path).config
    estimate = MeshTransformer(
        config,
        None,
        device=SMALL_SRAM,
        prefill_grid=(4, 4),
        decode_grid=(4, 4),
        max_context_tokens=24,
    )
    for m in (model, estimate):
        m.ledgers = [Ledger() for _ in range(5)]
        m.prefill(list(SMALL_PROMPT), m.ledgers[0])
        m.transition(m.ledgers[1])
        for ledger in m.ledgers[2:]:
            m.decode_step(7, ledger)
    for ours, theirs in zip(model.ledgers, estimate.ledgers, strict=True):
        assert ours.expanded() == theirs.expanded()
    assert model.peak_sram_bytes_per_core() == estimate.peak_sram_bytes_per_core()
    assert model.peak_sram_bytes_per_core() <= SMALL_SRAM.sram_bytes_per_core


def test_shift_and_concat_caches_give_the_same_tokens_at_different_decode_costs(
    checkpoint_factory,
):
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    shift = build(path, (3, 3), (3, 3), kv_policy=KvPolicy.SHIFT)
    concat = build(path, (3, 3), (3, 3), kv_policy=KvPolicy.CONCAT)
    assert greedy(shift, PROMPT, NEW_TOKENS) == greedy(concat, PROMPT, NEW_TOKENS)
    # after 15 fed-back tokens the concat cache's last row holds 3 + 15 positions, the shift
    # cache's rows 8 each: the concat step reads a wider window
    costs = []
    for model in (shift, concat):
        ledger = Ledger()
        model.decode_step(5, ledger)
        costs.append(ledger.totals().latency_cycles)
    assert costs[1] > costs[0]


def test_sram_overflow_and_a_prompt_longer_than_the_cache_are_clear_errors(checkpoint_factory):
    from waferllm.errors import SramOverflowError
    from waferllm.model.kv_cache import KvCacheFullError

    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    cramped = dataclasses.replace(tiny(), sram_bytes_per_core=2048)
    with pytest.raises(SramOverflowError, match="bytes per core"):
        build(path, (2, 2), (2, 2), device=cramped)
    model = build(path, (2, 2), (2, 2), max_context_tokens=8)
    assert model.kv_capacity_tokens() == 8  # 2 rows of 4 slots
    with pytest.raises(KvCacheFullError, match="the prompt has 9 tokens"):
        model.prefill(PROMPT, Ledger())
    with pytest.raises(ValueError, match="not in the vocabulary"):
        model.prefill([1, 5000], Ledger())
    model.prefill(PROMPT[:7], Ledger())
    model.decode_step(3, Ledger())  # the 8th position fills the cache
    with pytest.raises(KvCacheFullError, match="full"):
        model.decode_step(3, Ledger())


def test_decode_walks_price_a_step_like_running_it():
    from waferllm.model.config_sources import load_config

    config = load_config("tiny")
    kwargs = {"device": tiny(), "prefill_grid": (3, 3), "decode_grid": (2, 4)}
    running = MeshTransformer(config, None, **kwargs)
    running.prefill([5] * 11, Ledger())
    running.transition(Ledger())
    pricing = DecodeWalks(MeshTransformer(config, None, **kwargs))
    for context in range(12, 18):
        step = Ledger()
        running.decode_step(5, step)
        priced = pricing.decode_step(context)
        assert sorted(map(repr, priced.expanded())) == sorted(map(repr, step.expanded()))


def test_every_layer_costs_what_the_one_priced_layer_costs(checkpoint_factory, monkeypatch):
    # functional runs compute every layer but price the first (the others' shapes are equal):
    # record the others' charges too and compare
    import waferllm.model.decode as decode
    import waferllm.model.prefill as prefill

    walked: list[Ledger] = []

    class Recording(Ledger):
        def __init__(self) -> None:
            super().__init__()
            walked.append(self)

    for walk in (prefill, decode):  # the prefill and decode walks' unpriced layers
        monkeypatch.setattr(walk, "Uncharged", Recording)
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    model = build(path, (2, 3), (3, 2))
    layers = model.config.num_hidden_layers
    model.prefill(PROMPT, Ledger())
    model.transition(Ledger())
    for call in (lambda led: model.prefill(PROMPT, led), lambda led: model.decode_step(5, led)):
        walked.clear()
        ledger = Ledger()
        call(ledger)
        for prefix in ("layer/", "kv_shift"):
            priced = [
                dataclasses.replace(r, count=r.count // layers)
                for r in ledger.records
                if r.op.startswith(prefix)
            ]
            others = [w.records for w in walked if w.records and w.records[0].op.startswith(prefix)]
            assert len(others) == (layers - 1 if priced else 0)
            assert all(records == priced for records in others)
