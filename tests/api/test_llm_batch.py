"""`LLM.generate` with several prompts: wafer batches, vLLM's list arguments, admission.

Several prompts run as batches decoded together; each output must be the one its prompt gives
alone (and transformers'), its report must say the batch size, and its TPOT is the batch's
step. Lists of SamplingParams go one per prompt, as in vLLM.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.checkpoints import DEFAULT_PROMPT_IDS, reference_run

from waferllm import LLM, SamplingParams
from waferllm.errors import WaferError

BASE = list(DEFAULT_PROMPT_IDS)
PROMPTS = [BASE, BASE[:4], [BASE[0], 120, 45, 230, 9, 66]]
NEW = 6


@pytest.fixture(scope="module")
def llm(llama_checkpoint: Path) -> LLM:
    return LLM(llama_checkpoint, device="tiny", grid="2x3")


def test_a_list_of_prompts_runs_as_one_batch_with_each_prompts_own_tokens(llama_checkpoint, llm):
    params = SamplingParams(max_tokens=NEW, ignore_eos=True)
    together = llm.generate(PROMPTS, params)
    alone = [llm.generate([p], params)[0] for p in PROMPTS]
    refs = [reference_run(llama_checkpoint, p, NEW) for p in PROMPTS]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert [o.token_ids for o in together] == [list(r.generated_ids) for r in refs]
    assert [o.report.batch_size for o in together] == [3, 3, 3]
    assert [o.report.batch_size for o in alone] == [1, 1, 1]
    # one shared decode step: every sequence's TPOT is the batch's, longer than one alone's
    tpots = {o.metrics.tpot_s for o in together}
    assert len(tpots) == 1
    assert tpots.pop() > max(o.metrics.tpot_s for o in alone)


def test_a_list_of_sampling_params_goes_one_per_prompt(llm):
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (2, 5, 3)]
    outs = llm.generate(PROMPTS, params)
    assert [len(o.token_ids) for o in outs] == [2, 5, 3]
    for out, prompt, q in zip(outs, PROMPTS, params, strict=True):
        assert out.token_ids == llm.generate([prompt], q)[0].token_ids


def test_a_params_list_of_the_wrong_length_is_a_clear_error(llm):
    with pytest.raises(WaferError, match="one per prompt"):
        llm.generate(PROMPTS, [SamplingParams(max_tokens=2)] * 2)


def test_prompts_the_kv_cache_cannot_hold_together_run_in_successive_batches(llama_checkpoint):
    small = {"sram_bytes_per_core": 20000}  # 2 rows of 113 slots: 226 tokens of KV cache
    llm = LLM(
        llama_checkpoint,
        device="tiny",
        prefill_grid="3x3",
        decode_grid="2x2",
        device_overrides=small,
    )
    assert llm.model.plan.kv_slots == 113
    long = SamplingParams(max_tokens=120, ignore_eos=True)  # 64 and 62 slots per row
    outs = llm.generate([BASE, BASE, BASE[:4]], long)
    assert [o.report.batch_size for o in outs] == [1, 1, 1]
    short = SamplingParams(max_tokens=3, ignore_eos=True)
    outs = llm.generate([BASE, BASE, BASE[:4]], short)
    assert [o.report.batch_size for o in outs] == [3, 3, 3]
