"""`LLM.generate` end to end on tiny checkpoints: transformers' tokens, stops, sampling, errors.

The grids and families are the transformer's tests (tests/model); these drive the engine and
the vLLM-style API around it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from helpers.checkpoints import DEFAULT_NEW_TOKENS, DEFAULT_PROMPT_IDS, reference_run

from waferllm import LLM, RequestOutput, SamplingParams, tiny
from waferllm.engine.tokenizer import load_tokenizer
from waferllm.errors import GridError, SramOverflowError, WaferError
from waferllm.estimate.capacity import whole_model_capacity
from waferllm.estimate.cost import Setup
from waferllm.estimate.search import DEFAULT_CONTEXT_TOKENS, default_grids
from waferllm.model.kv_cache import KvPolicy
from waferllm.model.placement import PlacementMode, ResidentLayouts
from waferllm.model.plan import plan_model

PROMPT = list(DEFAULT_PROMPT_IDS)
GREEDY = SamplingParams(max_tokens=DEFAULT_NEW_TOKENS, temperature=0.0)


@pytest.fixture(scope="module")
def llm(llama_checkpoint: Path) -> LLM:
    return LLM(llama_checkpoint, device="tiny", grid="2x3")


def test_the_readme_snippet_works_as_written(llama_checkpoint):
    llm = LLM(str(llama_checkpoint), device="tiny")  # grid chosen automatically
    out = llm.generate(["The wafer"], SamplingParams(max_tokens=32, temperature=0.0))
    assert isinstance(out[0], RequestOutput)
    assert isinstance(out[0].text, str)
    assert out[0].metrics.ttft_s > 0 and out[0].metrics.tpot_s > 0
    assert 1 <= len(out[0].token_ids) <= 32


def test_greedy_generation_reproduces_transformers_tokens(llama_checkpoint, llm):
    ref = reference_run(llama_checkpoint, PROMPT, DEFAULT_NEW_TOKENS)
    out = llm.generate([PROMPT], GREEDY)[0]
    assert out.token_ids == list(ref.generated_ids)
    assert out.finish_reason == "length"
    assert out.prompt_token_ids == PROMPT and out.prompt is None


@pytest.mark.parametrize(
    "grids",
    [
        {},  # the default: the smallest square holding the model
        {"prefill_grid": "3x3", "decode_grid": "2x3", "kv_cache": "concat"},
        {"grid": 2, "resident_layouts": "both"},
    ],
    ids=["default-grid", "3x3-to-2x3-concat", "2x2-both-layouts"],
)
def test_every_api_path_gives_transformers_tokens(qwen2_tied_checkpoint, grids):
    ref = reference_run(qwen2_tied_checkpoint, PROMPT, DEFAULT_NEW_TOKENS)
    out = LLM(qwen2_tied_checkpoint, **grids).generate(PROMPT, GREEDY)[0]
    assert out.token_ids == list(ref.generated_ids)


def test_a_second_request_starts_from_an_empty_cache(llm):
    first = llm.generate([PROMPT[:4]], GREEDY)[0]
    second = llm.generate([PROMPT], GREEDY)[0]
    batch = llm.generate([PROMPT[:4], PROMPT], GREEDY)  # a batch of both in between
    again = llm.generate([PROMPT], GREEDY)[0]
    assert [o.token_ids for o in batch] == [first.token_ids, second.token_ids]
    assert second.token_ids == again.token_ids
    assert second.metrics == again.metrics


def test_text_prompts_are_tokenised_and_outputs_detokenised(llama_checkpoint, llm):
    tokenizer = load_tokenizer(llama_checkpoint)
    out = llm.generate("Keys and values", SamplingParams(max_tokens=6))[0]
    assert out.prompt == "Keys and values"
    assert out.prompt_token_ids == tokenizer.encode("Keys and values")
    assert out.text == tokenizer.decode(out.token_ids)
    by_ids = llm.generate([out.prompt_token_ids], SamplingParams(max_tokens=6))[0]
    assert by_ids.token_ids == out.token_ids


def test_streamed_pieces_add_up_to_the_text_and_the_last_carries_the_output(llm):
    chunks = list(llm.stream("The wafer is a mesh", SamplingParams(max_tokens=9)))
    assert [c.output is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1].output
    assert final is not None
    assert "".join(c.text for c in chunks) == final.text
    assert [c.token_id for c in chunks] == final.token_ids
    assert [c.step.index for c in chunks] == list(range(len(chunks)))


def eos_checkpoint(source: Path, tmp_path: Path, eos: int) -> Path:
    """A copy of `source` whose config names `eos` as its end-of-sequence token."""
    target = tmp_path / f"{source.name}-eos{eos}"
    shutil.copytree(source, target)
    for name in ("config.json", "generation_config.json"):
        path = target / name
        if path.is_file():
            raw = json.loads(path.read_text())
            raw["eos_token_id"] = eos
            path.write_text(json.dumps(raw))
    return target


def test_generation_stops_at_eos_unless_ignore_eos(llama_checkpoint, tmp_path):
    ref = reference_run(llama_checkpoint, PROMPT, DEFAULT_NEW_TOKENS).generated_ids
    stop_at = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])
    llm = LLM(eos_checkpoint(llama_checkpoint, tmp_path, ref[stop_at]), grid=2)
    stopped = llm.generate(PROMPT, GREEDY)[0]
    assert stopped.token_ids == list(ref[: stop_at + 1])
    assert stopped.finish_reason == "stop"
    assert stopped.report.output_len == stop_at + 1
    assert stopped.report.breakdown["decode"]["steps"] == stop_at
    ignored = llm.generate(PROMPT, dataclasses.replace(GREEDY, ignore_eos=True))[0]
    assert ignored.token_ids == list(ref) and ignored.finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_costs_what_greedy_costs(llm):
    def sample(seed: int) -> RequestOutput:
        params = SamplingParams(max_tokens=8, temperature=3.0, top_p=0.95, seed=seed)
        return llm.generate(PROMPT, dataclasses.replace(params, ignore_eos=True))[0]

    runs = [sample(seed) for seed in (11, 11, 12, 13)]
    assert runs[0].token_ids == runs[1].token_ids
    assert len({tuple(r.token_ids) for r in runs[1:]}) > 1
    greedy = llm.generate(PROMPT, SamplingParams(max_tokens=8, ignore_eos=True))[0]
    # the logits' trips to the host are host I/O: in the breakdown, in no modelled metric
    assert runs[0].metrics == greedy.metrics
    assert runs[0].report.breakdown["sampling_host_io"]["host_io_bytes"] > 0
    assert greedy.report.breakdown["sampling_host_io"]["host_io_bytes"] == 0


def test_float16_reports_the_same_costs_as_float32(llama_checkpoint):
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    f32 = LLM(llama_checkpoint, grid=2).generate(PROMPT, params)[0]
    f16 = LLM(llama_checkpoint, grid=2, dtype="float16").generate(PROMPT, params)[0]
    assert f16.metrics == f32.metrics
    assert f16.report.breakdown["dtype"] == "float16"


def test_the_report_describes_the_request(llm):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=3, ignore_eos=True))[0]
    report = out.report.to_dict()
    assert report["kind"] == "generate" and report["modelled"] is True
    assert (report["prompt_len"], report["output_len"]) == (len(PROMPT), 3)
    assert report["prefill_grid"] == report["decode_grid"] == [2, 3]
    assert report["token_ids"] == out.token_ids and report["text"] == out.text
    model = llm.model
    # the whole model over the best tiling of the whole device (SPEC.md §10.10): at least
    # what this plan's own cache holds
    setup = Setup(config=model.config, device=model.device)
    capacity, room = whole_model_capacity(setup, (2, 3), (2, 3), len(PROMPT))
    assert report["kv_capacity_tokens"] == {"shift": capacity.shift, "concat": capacity.concat}
    assert report["max_new_tokens"]["shift"] == room.shift
    assert capacity.shift >= model.kv_capacity_tokens(KvPolicy.SHIFT, prompt_len=len(PROMPT))
    assert room.shift >= model.max_new_tokens(len(PROMPT))
    assert 0 < report["metrics"]["utilization"] < 1
    assert report["metrics"]["peak_sram_bytes_per_core"] <= tiny().sram_bytes_per_core
    assert report["metrics"]["routes_per_core"] <= tiny().routes_per_core


def test_the_default_grid_is_the_smallest_square_holding_the_model_with_room_for_context(
    llama_checkpoint,
):
    small = {"sram_bytes_per_core": 16384}
    llm = LLM(llama_checkpoint, device="tiny", device_overrides=small)
    plan = llm.model.plan
    side = plan.prefill.grid[0]
    want = DEFAULT_CONTEXT_TOKENS
    assert plan.prefill.grid == plan.decode.grid == (side, side) and side > 1
    assert len(plan.prefill.regions) == len(plan.decode.regions) == 1

    def room(prefill: int, decode: int) -> tuple[bool, bool]:
        """(prefill, decode) each in one region with room for the default context."""
        try:
            plan = plan_model(
                llm.config,
                llm.device,
                prefill_grid=(prefill, prefill),
                decode_grid=(decode, decode),
                placement=PlacementMode.FIT,
                resident=ResidentLayouts.ONE,
                max_context_tokens=None,
            )
        except SramOverflowError:
            return (False, False)
        return (
            len(plan.prefill.regions) == 1 and plan.max_prompt_tokens >= want,
            len(plan.decode.regions) == 1 and plan.kv_slots * decode >= want,
        )

    assert room(side, side) == (True, True)
    assert all(room(s, s) != (True, True) for s in range(1, side))
    assert llm.model.kv_capacity_tokens() >= want and llm.model.max_prompt_tokens >= want
    # a given prefill grid is kept; the decode grid is the smallest square for decode alone
    given = side + 1
    prefill, decode = default_grids(
        llm.config,
        llm.device,
        prefill=(given, given),
        decode=None,
    )
    smallest = next(s for s in range(1, 65) if room(given, s)[1])
    assert prefill == (given, given) and decode == (smallest, smallest)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"grid": 2, "prefill_grid": 3}, GridError, "either grid or prefill_grid"),
        ({"grid": "3x"}, GridError, "malformed grid"),
        ({"grid": (2, 0)}, GridError, "at least one row"),
        ({"grid": 65}, GridError, "65x65 is larger than the tiny device's 64x64 mesh"),
        ({"prefill_grid": "64x65"}, GridError, "larger than the tiny device"),
        ({"dtype": "float8"}, WaferError, "dtype='float8'"),
        ({"kv_cache": "paged"}, WaferError, "kv_cache='paged' is not one of shift, concat"),
        ({"device": "wse9"}, ValueError, "unknown device 'wse9'"),
        ({"grid": 1, "device_overrides": {"sram_bytes_per_core": 4096}}, SramOverflowError, "SRAM"),
    ],
)
def test_bad_settings_raise_clear_errors(llama_checkpoint, kwargs, error, message):
    with pytest.raises(error, match=message):
        LLM(llama_checkpoint, **kwargs)


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], SamplingParams(), "empty"),
        ([0, 301], SamplingParams(), r"token id 301 is not in the vocabulary \[0, 301\)"),
        (PROMPT, SamplingParams(max_tokens=10**6), "more than the model.s max_position_embed"),
        ([3.5], SamplingParams(), "token id 3.5"),
    ],
)
def test_bad_requests_are_refused_before_any_runs(llm, prompt, params, message):
    good = SamplingParams(max_tokens=2)
    with pytest.raises(WaferError, match=message):
        llm.generate([PROMPT, prompt], params)
    assert llm.generate([PROMPT], good)[0].token_ids  # the model is still usable


def test_prompts_longer_than_the_kv_cache_are_refused_and_than_the_prefill_plan_chunked(
    llama_checkpoint,
):
    # small SRAM: a wide prefill grid holds more prompt than the narrow decode grid caches
    # (6x6: fewer than the model's 256 positions, so the prefill plan's limit is the one hit)
    small = {"sram_bytes_per_core": 16384}
    llm = LLM(llama_checkpoint, prefill_grid=6, decode_grid=2, device_overrides=small)
    capacity = llm.model.kv_capacity_tokens(prompt_len=0)
    assert capacity < llm.model.max_prompt_tokens
    with pytest.raises(WaferError, match=f"more than the KV cache holds \\({capacity} tokens"):
        llm.generate([[2] * (capacity + 1)])
    assert len(llm.generate([[2] * capacity], SamplingParams(max_tokens=1))[0].token_ids) == 1
    # the other way round: a prompt longer than the prefill plan holds at once runs in chunks
    chunked = LLM(llama_checkpoint, prefill_grid=3, decode_grid=8, device_overrides=small)
    longest = chunked.model.max_prompt_tokens
    assert chunked.model.kv_capacity_tokens(prompt_len=0) > longest + 1
    out = chunked.generate([[2] * (longest + 1)], SamplingParams(max_tokens=2))[0]
    assert len(out.token_ids) == 2


def test_text_prompts_need_a_tokenizer(checkpoint_factory):
    path = checkpoint_factory("llama", with_tokenizer=False)
    llm = LLM(path, grid=1)
    with pytest.raises(WaferError, match="no tokenizer.json"):
        llm.generate(["hello"])
    out = llm.generate([PROMPT], SamplingParams(max_tokens=2))[0]
    assert out.text is None and len(out.token_ids) == 2
