"""Chunked prefill and sliding-window eviction reproduce transformers (SPEC.md §10.11).

The 9-token prompt is forced into small chunks so that each chunk's attention reads the cached
k/v of the earlier ones; with Mistral's window of 5 the oldest chunk is evicted during the
prefill and the decode cache evicts from the hand-off on. Estimate mode charges the same
ledgers as the functional run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import DEFAULT_PROMPT_IDS, check_token_identity, reference_run

from waferllm.device import tiny
from waferllm.mesh.cost import Ledger
from waferllm.model.chunked import chunk_need_bytes, chunk_spans
from waferllm.model.transformer import MeshTransformer
from waferllm.model.weights import load_checkpoint

NEW_TOKENS = 16
PROMPT = list(DEFAULT_PROMPT_IDS)


def build(path: Path, prefill: tuple[int, int], decode: tuple[int, int], **kwargs):
    ckpt = load_checkpoint(path)
    return MeshTransformer(
        ckpt.config, ckpt.weights, device=tiny(), prefill_grid=prefill, decode_grid=decode, **kwargs
    )


def run(model: MeshTransformer, sequence, prompt_len: int, chunk_tokens: int):
    """Teacher-forced logits from the last prompt token on, and every call's ledger."""
    ledgers = [Ledger() for _ in range(2 + len(sequence) - prompt_len)]
    out = model.prefill(sequence[:prompt_len], ledgers[0], chunk_tokens=chunk_tokens)
    logits = [out.fetch_logits(Ledger())]
    model.transition(ledgers[1])
    for token, ledger in zip(sequence[prompt_len:], ledgers[2:], strict=True):
        logits.append(model.decode_step(token, ledger).fetch_logits(Ledger()))
    return torch.stack(logits), ledgers


CASES = [
    ("llama", None, (2, 2), (2, 2), 4),
    ("llama", None, (3, 3), (2, 3), 3),
    ("mistral", 5, (2, 2), (2, 2), 4),  # chunk 0 evicted before the last chunk
    ("mistral", 5, (2, 3), (2, 3), 2),
    ("qwen2_tied", None, (4, 4), (2, 3), 5),
]


@pytest.mark.parametrize(("family", "window", "prefill", "decode", "chunk"), CASES)
def test_chunked_prompts_match_transformers_with_and_without_a_window(
    checkpoint_factory, family, window, prefill, decode, chunk
):
    path = checkpoint_factory(family, sliding_window=window, margin_new_tokens=NEW_TOKENS)
    ref = reference_run(path, PROMPT, NEW_TOKENS)
    model = build(path, prefill, decode)
    assert model.plan.max_prompt_tokens >= len(PROMPT)  # chunked by choice, not need
    ours, _ = run(model, ref.sequence_ids, len(PROMPT), chunk)
    report = check_token_identity(ours, ref.logits[len(PROMPT) - 1 :])
    assert report.num_argmax_checked == NEW_TOKENS
    tokens = [model.prefill(PROMPT, Ledger(), chunk_tokens=chunk).token]
    model.transition(Ledger())
    while len(tokens) < NEW_TOKENS:
        tokens.append(model.decode_step(tokens[-1], Ledger()).token)
    assert tokens == list(ref.generated_ids)


def test_estimate_mode_charges_the_chunked_prefill_like_the_functional_run(checkpoint_factory):
    path = checkpoint_factory("mistral", sliding_window=5, margin_new_tokens=NEW_TOKENS)
    functional = build(path, (2, 3), (2, 3))
    config = load_checkpoint(path).config
    estimate = MeshTransformer(config, None, device=tiny(), prefill_grid=(2, 3), decode_grid=(2, 3))
    sequence = tuple(PROMPT) + (7,) * 8
    _, ours = run(functional, sequence, len(PROMPT), 2)
    _, theirs = run(estimate, sequence, len(PROMPT), 2)
    for a, b in zip(ours, theirs, strict=True):
        assert a.expanded() == b.expanded()
    assert functional.peak_sram_bytes_per_core() == estimate.peak_sram_bytes_per_core()
    need = chunk_need_bytes(estimate.plan, len(PROMPT), 2)
    assert estimate.prefill_state.meshes[0].sram.peak_bytes <= need


def test_chunks_cover_the_prompt_with_a_shorter_last_one():
    spans = chunk_spans(9, 4)
    assert [(s.start, s.length) for s in spans] == [(0, 4), (4, 4), (8, 1)]


def test_a_prompt_longer_than_the_plan_holds_is_chunked_by_itself_and_still_matches(
    checkpoint_factory,
):
    # 8,768 B per core on 3x3: two regions, at most 6 prompt tokens at once (with the lean
    # schedule's streamed keys and early frees: 9,792 B would hold 18)
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    device = dataclasses.replace(tiny(), sram_bytes_per_core=8768)
    ckpt = load_checkpoint(path)
    grids = {"prefill_grid": (3, 3), "decode_grid": (3, 3)}
    model = MeshTransformer(ckpt.config, ckpt.weights, device=device, **grids)
    assert model.plan.max_prompt_tokens < len(PROMPT) and len(model.plan.prefill.regions) == 2
    chunk = model.default_chunk_tokens(len(PROMPT))
    assert chunk < len(PROMPT)
    ref = reference_run(path, PROMPT, NEW_TOKENS)
    ours, ledgers = run(model, ref.sequence_ids, len(PROMPT), chunk)
    check_token_identity(ours, ref.logits[len(PROMPT) - 1 :])
    auto = Ledger()
    assert model.prefill(PROMPT, auto).token == ref.generated_ids[0]  # no chunk_tokens given
    assert auto.expanded() == ledgers[0].expanded()
    estimate = MeshTransformer(ckpt.config, None, device=device, **grids)
    _, theirs = run(estimate, ref.sequence_ids, len(PROMPT), chunk)
    for a, b in zip(ledgers, theirs, strict=True):
        assert a.expanded() == b.expanded()
    assert model.peak_sram_bytes_per_core() <= device.sram_bytes_per_core


BATCH_NEW_TOKENS = 8
# the batch tests' prompts (tests/model/test_batch.py checks their margins on these checkpoints)
MIXED = [PROMPT, PROMPT[:4], [*PROMPT, 70, 140, 5, 261]]


def batch_teacher_forced(model: MeshTransformer, refs, chunks) -> list[torch.Tensor]:
    """Each sequence's logits from its last prompt token on, prompts chunked as `chunks` says,
    the batch fed the references' tokens together; each sequence's ledgers too."""
    prompts = [list(r.prompt_ids) for r in refs]
    contexts = [len(p) + BATCH_NEW_TOKENS - 1 for p in prompts]
    ledgers = [Ledger() for _ in prompts]
    outs = model.prefill_batch(prompts, ledgers, context_tokens=contexts, chunk_tokens=chunks)
    logits = [[o.fetch_logits(Ledger())] for o in outs]
    model.transition(Ledger())
    for step in range(BATCH_NEW_TOKENS - 1):
        tokens = [r.sequence_ids[len(r.prompt_ids) + step] for r in refs]
        for b, out in enumerate(model.decode_batch(tokens, Ledger())):
            logits[b].append(out.fetch_logits(Ledger()))
    return [torch.stack(rows) for rows in logits]


@pytest.mark.parametrize(
    ("family", "window", "prefill", "decode"),
    [("llama", None, (3, 3), (3, 3)), ("mistral", 5, (2, 2), (3, 3))],
)
def test_a_batch_mixing_chunked_and_whole_prompts_matches_transformers_per_sequence(
    checkpoint_factory, family, window, prefill, decode
):
    # mistral: every sequence's share holds its window, so the 9- and 13-token prompts are
    # evicted down to 5 positions at the hand-off and each decode step evicts per sequence
    path = checkpoint_factory(family, sliding_window=window, margin_new_tokens=BATCH_NEW_TOKENS)
    refs = [reference_run(path, p, BATCH_NEW_TOKENS) for p in MIXED]
    model = build(path, prefill, decode)
    ours = batch_teacher_forced(model, refs, chunks=[4, None, 3])
    for logits, ref in zip(ours, refs, strict=True):
        report = check_token_identity(logits, ref.logits[len(ref.prompt_ids) - 1 :])
        assert report.num_argmax_checked == BATCH_NEW_TOKENS
    if window is not None:
        assert all(seq.counts.evicted > 0 for seq in model._seqs if seq.prompt_len > window)


def test_a_batch_chunks_only_the_prompts_longer_than_the_plan_holds(checkpoint_factory):
    # 8,304 B per core: the 4x4 prefill plan holds at most 8 prompt tokens at once (lean
    # schedule included), so the 9-token prompt runs in chunks and the 4-token one whole; the
    # 5x5 decode plan holds both sequences' KV caches
    path = checkpoint_factory("llama", margin_new_tokens=BATCH_NEW_TOKENS)
    device = dataclasses.replace(tiny(), sram_bytes_per_core=8304)
    ckpt = load_checkpoint(path)
    grids = {"prefill_grid": (4, 4), "decode_grid": (5, 5)}
    model = MeshTransformer(ckpt.config, ckpt.weights, device=device, **grids)
    assert 4 <= model.max_prompt_tokens < 9
    prompts = MIXED[:2]
    refs = [reference_run(path, p, BATCH_NEW_TOKENS) for p in prompts]
    ours = batch_teacher_forced(model, refs, chunks=None)
    assert [seq.chunk_tokens for seq in model._seqs] == [model.default_chunk_tokens(9), None]
    for logits, ref in zip(ours, refs, strict=True):
        check_token_identity(logits, ref.logits[len(ref.prompt_ids) - 1 :])
    # estimate mode charges each sequence's prefill (chunked or not) as the functional run
    estimate = MeshTransformer(ckpt.config, None, device=device, **grids)
    contexts = [len(p) + BATCH_NEW_TOKENS - 1 for p in prompts]
    charged = {}
    for mode, m in (("functional", model), ("estimate", estimate)):
        ledgers = [Ledger(), Ledger()]
        m.prefill_batch(prompts, ledgers, context_tokens=contexts)
        m.transition(ledgers[0])
        charged[mode] = [ledger.expanded() for ledger in ledgers]
    assert charged["functional"] == charged["estimate"]
