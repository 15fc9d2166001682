"""Batches of sequences on the mesh: every sequence's tokens are transformers' and its own.

A batch of B mixed-length prompts is prefilled one prompt at a time and decoded together (the
GEMVs carry B vectors, each sequence attends to its own KV rows). Each sequence must give
transformers' teacher-forced logits (SPEC.md §10.11) and the tokens it gives when generated
alone; estimate mode must charge exactly what a functional batched step charges; a batch whose
KV cache does not fit is refused before anything runs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.checkpoints import (
    DEFAULT_PROMPT_IDS,
    assert_margins,
    check_token_identity,
    reference_run,
)
from test_transformer import build, greedy

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.estimate.decode_walks import DecodeWalks
from waferllm.mesh.cost import Ledger
from waferllm.model.config_sources import load_config
from waferllm.model.kv_cache import KvCacheFullError, KvPolicy, RowCounts
from waferllm.model.transformer import MeshTransformer

NEW_TOKENS = 8
BASE = list(DEFAULT_PROMPT_IDS)
# mixed lengths (1 to 13 tokens); on every checkpoint below each one's transformers run has
# clear top-2 margins and never wants EOS (which the reference's min_new_tokens suppresses)
PROMPTS = [
    BASE,
    BASE[:4],
    [*BASE, 70, 140, 5, 261],
    BASE[:1],
    [BASE[0], 120, 45, 230, 9, 66],
    [*BASE[:6], 200, 201, 202, 203, 204],
    [BASE[0], 12, 250, 31],
    [*BASE[:5], 190, 45],
]


def _contexts(prompts: list[list[int]]) -> list[int]:
    return [len(p) + NEW_TOKENS - 1 for p in prompts]


def batch_teacher_forced(model: MeshTransformer, refs) -> list[torch.Tensor]:
    """Each sequence's logits [NEW_TOKENS, V] from its last prompt token on, the batch fed the
    references' tokens together."""
    prompts = [list(r.prompt_ids) for r in refs]
    outs = model.prefill_batch(
        prompts, [Ledger() for _ in prompts], context_tokens=_contexts(prompts)
    )
    logits = [[o.fetch_logits(Ledger())] for o in outs]
    model.transition(Ledger())
    for step in range(NEW_TOKENS - 1):
        tokens = [r.sequence_ids[len(r.prompt_ids) + step] for r in refs]
        for b, out in enumerate(model.decode_batch(tokens, Ledger())):
            logits[b].append(out.fetch_logits(Ledger()))
    return [torch.stack(rows) for rows in logits]


def batch_greedy(model: MeshTransformer, prompts: list[list[int]]) -> list[list[int]]:
    outs = model.prefill_batch(
        prompts, [Ledger() for _ in prompts], context_tokens=_contexts(prompts)
    )
    tokens = [[o.token] for o in outs]
    model.transition(Ledger())
    for _ in range(NEW_TOKENS - 1):
        outs = model.decode_batch([t[-1] for t in tokens], Ledger())
        for t, out in zip(tokens, outs, strict=True):
            t.append(out.token)
    return tokens


CASES = [
    ("llama", 1, (2, 2), (2, 2)),
    ("llama", 3, (3, 3), (3, 3)),
    ("llama", 3, (4, 4), (2, 3)),
    ("llama", 8, (2, 3), (2, 3)),
    ("llama", 8, (4, 4), (3, 2)),
    ("mistral_window", 3, (2, 2), (3, 3)),  # window 5: older positions masked per sequence
    ("qwen2_tied", 8, (3, 3), (2, 4)),
]
FAMILIES = {
    "llama": {"family": "llama"},
    "mistral_window": {"family": "mistral", "sliding_window": 5},
    "qwen2_tied": {"family": "qwen2_tied"},
}


@pytest.mark.parametrize(("family", "batch", "prefill", "decode"), CASES)
def test_each_sequence_of_a_mixed_length_batch_matches_transformers_and_itself_alone(
    checkpoint_factory, family, batch, prefill, decode
):
    path = checkpoint_factory(**FAMILIES[family], margin_new_tokens=NEW_TOKENS)
    prompts = PROMPTS[:batch]
    refs = [reference_run(path, p, NEW_TOKENS) for p in prompts]
    for ref in refs:
        logits = ref.logits[len(ref.prompt_ids) - 1 :]
        assert_margins(logits)
        assert logits.argmax(-1).tolist() == list(ref.generated_ids)
    model = build(path, prefill, decode)
    for ours, ref in zip(batch_teacher_forced(model, refs), refs, strict=True):
        report = check_token_identity(ours, ref.logits[len(ref.prompt_ids) - 1 :])
        assert report.num_argmax_checked == NEW_TOKENS
    together = batch_greedy(model, prompts)
    alone = [greedy(model, p, NEW_TOKENS) for p in prompts]
    assert together == alone == [list(r.generated_ids) for r in refs]


def test_a_concat_batch_gives_the_tokens_of_a_shift_batch(checkpoint_factory):
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    prompts = PROMPTS[:3]
    shift = build(path, (3, 3), (3, 3), kv_policy=KvPolicy.SHIFT)
    concat = build(path, (3, 3), (3, 3), kv_policy=KvPolicy.CONCAT)
    assert batch_greedy(shift, prompts) == batch_greedy(concat, prompts)


def test_finished_sequences_leave_the_batch_and_the_others_go_on(checkpoint_factory):
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    model = build(path, (2, 3), (2, 3))
    prompts = PROMPTS[:3]
    outs = model.prefill_batch(prompts, [Ledger() for _ in prompts])
    tokens = [[o.token] for o in outs]
    model.transition(Ledger())
    live = [0, 1, 2]
    for step in range(NEW_TOKENS - 1):
        if step == 2:  # sequence 1 stops after 3 tokens
            model.retire(1)
            live = [0, 2]
        outs = model.decode_batch([tokens[b][-1] for b in live], Ledger(), seqs=live)
        for b, out in zip(live, outs, strict=True):
            tokens[b].append(out.token)
    assert tokens[0] == greedy(model, prompts[0], NEW_TOKENS)
    assert tokens[2] == greedy(model, prompts[2], NEW_TOKENS)
    assert tokens[1] == greedy(model, prompts[1], 3)


def test_a_batch_whose_kv_cache_does_not_fit_is_refused_before_it_runs(checkpoint_factory):
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    small = dataclasses.replace(tiny(), sram_bytes_per_core=20000)
    model = build(path, (3, 3), (2, 2), device=small)
    assert model.plan.kv_slots == 113  # 2 rows of 113 slots: 226 tokens
    prompts = [BASE, BASE, BASE]  # 120 positions each: 60 slots per row each, 180 > 113
    with pytest.raises(KvCacheFullError, match="does not fit") as caught:
        model.prefill_batch(prompts, [Ledger() for _ in prompts], context_tokens=[120] * 3)
    assert isinstance(caught.value, WaferError)
    assert "180 slots per row" in str(caught.value)
    # each sequence's step scratch takes room too (the plan sized the cache for one):
    # 2 x 56 slots do not fit beside a second step's scratch; the closed form's share does
    budget = model.kv_budget
    room = 113 * (budget.slot_bytes[0] + budget.score_bytes) - budget.step_bytes
    share = room // (2 * (budget.slot_bytes[0] + budget.score_bytes))
    assert budget.equal_share(2) == share < 56
    assert model.admits([9, 9], [2 * share, 2 * share])
    assert not model.admits([9, 9], [2 * share + 2, 2 * share + 2])
    # a sequence that outgrows its share stops with the cache-full error
    outs = model.prefill_batch([BASE[:4], BASE[:4]], [Ledger(), Ledger()], context_tokens=[5, 12])
    model.transition(Ledger())
    model.decode_batch([o.token for o in outs], Ledger())  # 5 positions: its 3 x 2 slots hold 6
    model.decode_batch([1, 1], Ledger())
    with pytest.raises(KvCacheFullError, match="full"):
        model.decode_batch([1, 1], Ledger())


@pytest.mark.parametrize(("prefill", "decode"), [((3, 3), (2, 4)), ((2, 2), (3, 3))])
def test_estimate_mode_charges_a_batched_step_exactly_as_running_it(
    checkpoint_factory, prefill, decode
):
    path = checkpoint_factory("llama", margin_new_tokens=NEW_TOKENS)
    prompts = PROMPTS[:3]
    functional = build(path, prefill, decode)
    estimate = MeshTransformer(
        functional.config, None, device=tiny(), prefill_grid=prefill, decode_grid=decode
    )
    ledgers = {}
    for name, model in (("functional", functional), ("estimate", estimate)):
        ledgers[name] = [Ledger() for _ in range(len(prompts) + 4)]
        model.prefill_batch(prompts, ledgers[name][:3], context_tokens=_contexts(prompts))
        model.transition(ledgers[name][3])
        for ledger in ledgers[name][4:]:
            model.decode_batch([7, 8, 9], ledger)
    for ours, theirs in zip(ledgers["functional"], ledgers["estimate"], strict=True):
        assert ours.expanded() == theirs.expanded()
    decode_peaks = [
        [mesh.sram.peak_bytes for mesh in m.decode_state.meshes] for m in (functional, estimate)
    ]
    assert decode_peaks[0] == decode_peaks[1]


@pytest.mark.parametrize("batch", [2, 5])
def test_decode_walks_price_a_batched_step_like_running_it(batch):
    config = load_config("tiny")
    kwargs = {"device": tiny(), "prefill_grid": (3, 3), "decode_grid": (2, 4)}
    running = MeshTransformer(config, None, **kwargs)
    share = running.kv_budget.equal_share(batch)
    running.prefill_batch([[5] * 11] * batch, [Ledger() for _ in range(batch)])
    running.transition(Ledger())
    pricing = DecodeWalks(MeshTransformer(config, None, **kwargs), batch=batch)
    assert pricing.share == share
    for context in range(12, 18):
        step = Ledger()
        running.decode_batch([5] * batch, step)
        priced = pricing.decode_step(context)
        assert sorted(map(repr, priced.expanded())) == sorted(map(repr, step.expanded()))


def test_a_batched_step_shares_the_collectives_and_scales_the_local_work():
    config = load_config("tiny")
    model = MeshTransformer(config, None, device=tiny(), prefill_grid=(3, 3), decode_grid=(2, 4))
    rows, slots = 2, model.plan.kv_slots
    steps = {}
    for batch in (1, 4):
        counts = [RowCounts.balanced(KvPolicy.SHIFT, rows, slots // batch, 6)] * batch
        records = model.decode_records([c.copy() for c in counts])
        steps[batch] = {r.op: r for r in records.layer.pre.records}
    one, four = steps[1], steps[4]
    local, reduce = "layer/qkv.local", "layer/qkv.allreduce.reduce"
    # the local GEMV runs four times the instructions; the allreduce is one message 4x longer
    assert four[local].compute_cycles == pytest.approx(4 * one[local].compute_cycles)
    assert four[reduce].bytes_injected == 4 * one[reduce].bytes_injected
    assert four[reduce].critical_hops == one[reduce].critical_hops
    assert four[reduce].critical_stages == one[reduce].critical_stages
    assert dataclasses.replace(four[reduce], count=1).op == one[reduce].op
