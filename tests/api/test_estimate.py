"""`waferllm.estimate`: the report's schema, agreement with a functional generation, errors."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from waferllm import estimate
from waferllm.api.estimate import clear_cache
from waferllm.api.llm import LLM
from waferllm.device import tiny
from waferllm.engine.sampling import SamplingParams
from waferllm.errors import GridError, WaferError
from waferllm.estimate.decode_walks import DecodeWalks
from waferllm.mesh.cost import Ledger
from waferllm.model.weights import load_checkpoint

# SPEC.md §10.4, exactly.
REPORT_KEYS = {
    "schema_version",
    "kind",
    "modelled",
    "model",
    "device",
    "prompt_len",
    "output_len",
    "prefill_grid",
    "decode_grid",
    "placement",
    "metrics",
    "kv_capacity_tokens",
    "max_new_tokens",
    "breakdown",
    "host_wall_s",
    "warnings",
    "provenance",
    "system",
    "batch_size",
    "num_devices",
    "weight_dtype",
    "kv_dtype",
    "sram_used_fraction",
}
METRIC_KEYS = {
    "ttft_s",
    "tpot_s",
    "prefill_tpr",
    "decode_tpr",
    "e2e_tpr",
    "transition_s",
    "energy_j",
    "peak_sram_bytes_per_core",
    "routes_per_core",
    "utilization",
}
SMALL_SRAM = dataclasses.replace(tiny(), sram_bytes_per_core=8192)
SMALL_PROMPT = (0, 37, 102, 25, 17, 88, 64, 99, 5)  # for a 128-token vocabulary


def _counter(ledger: Ledger) -> collections.Counter:
    return collections.Counter(ledger.expanded())


def test_the_report_has_exactly_the_request_report_keys():
    est = estimate(
        "tiny", device="tiny", prompt_len=12, output_len=5, prefill_grid=4, decode_grid=3
    )
    report = est.to_dict()
    assert set(report) == REPORT_KEYS
    assert set(report["metrics"]) == METRIC_KEYS
    assert set(report["kv_capacity_tokens"]) == {"shift", "concat"}
    assert set(report["max_new_tokens"]) == {"shift", "concat"}
    assert report["kind"] == "estimate" and report["modelled"] is True
    assert report["prefill_grid"] == [4, 4] and report["decode_grid"] == [3, 3]
    metrics = report["metrics"]
    assert metrics["prefill_tpr"] == pytest.approx(12 / metrics["ttft_s"])
    assert metrics["decode_tpr"] == pytest.approx(1 / metrics["tpot_s"])
    total = metrics["ttft_s"] + metrics["transition_s"] + metrics["tpot_s"] * 4
    assert metrics["e2e_tpr"] == pytest.approx(5 / total)
    energy = report["breakdown"]["energy"]  # energy per event (estimate/energy.py)
    assert metrics["energy_j"] == pytest.approx(energy["total_j"])
    assert energy["static_j"] == pytest.approx(tiny().static_power_w * total)
    assert energy["power_x_time_j"] == pytest.approx(tiny().power_w * total)
    assert report["breakdown"]["decode"]["steps"] == 4


def test_estimate_charges_what_a_functional_generation_charges_over_several_regions(
    checkpoint_factory,
):
    path = checkpoint_factory(
        "llama",
        layers=4,
        vocab=128,
        with_tokenizer=False,
        margin_prompt_ids=SMALL_PROMPT,
        margin_new_tokens=7,
    )
    new_tokens = 7
    llm = LLM(path, device=SMALL_SRAM, prefill_grid=(4, 4), decode_grid=(4, 3))
    assert len(llm.model.plan.prefill.regions) >= 2 and len(llm.model.plan.decode.regions) >= 2
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    trace = llm.engine.generate(list(SMALL_PROMPT), params).run()
    clear_cache()
    est = estimate(
        load_checkpoint(path).config,
        device=SMALL_SRAM,
        prompt_len=len(SMALL_PROMPT),
        output_len=new_tokens,
        prefill_grid=(4, 4),
        decode_grid=(4, 3),
    )
    assert est.ledgers.prefill.ledger.expanded() == trace.prefill.expanded()
    assert est.ledgers.transition.expanded() == trace.transition.expanded()
    functional_decode = Ledger()
    for step in trace.decode:
        functional_decode.extend(step)
    # the estimate groups identical steps: the same records, counted, in another order
    assert _counter(est.ledgers.decode.ledger) == _counter(functional_decode)
    report = llm.report(trace)
    assert est.metrics.ttft_s == pytest.approx(report.metrics.ttft_s)
    assert est.metrics.tpot_s == pytest.approx(report.metrics.tpot_s)
    assert est.metrics.peak_sram_bytes_per_core == report.metrics.peak_sram_bytes_per_core
    assert est.report.kv_capacity_tokens == report.kv_capacity_tokens


@pytest.mark.parametrize("kv_cache", ["shift", "concat"])
def test_grouped_decode_costs_equal_the_sum_of_single_steps(kv_cache):
    est = estimate(
        "tiny",
        device="tiny",
        prompt_len=13,
        output_len=20,
        prefill_grid=4,
        decode_grid="3x4",
        kv_cache=kv_cache,
    )
    walks, steps = DecodeWalks(est.ledgers.model), Ledger()
    for context in range(14, 13 + 20):
        steps.extend(walks.decode_step(context, prompt_len=13))
    assert _counter(est.ledgers.decode.ledger) == _counter(steps)


def _report(prompt_len: int, output_len: int, placement: str) -> dict:
    est = estimate(
        "tiny",
        device="tiny",
        prompt_len=prompt_len,
        output_len=output_len,
        placement=placement,
        prefill_grid=4,
        decode_grid="3x4",
    )
    report = est.to_dict()
    del report["host_wall_s"]
    return report


@pytest.mark.parametrize("placement", ["fit", "per-layer"])
def test_a_report_depends_only_on_its_request_not_on_what_the_cached_model_served_before(
    placement,
):
    requests = [(40, 60), (5, 2)]  # a long request then a short one: larger peaks first
    clear_cache()
    forward = [_report(*r, placement) for r in requests]
    clear_cache()
    backward = [_report(*r, placement) for r in reversed(requests)][::-1]
    clear_cache()
    assert forward == backward
    assert forward[0]["sram_used_fraction"] > forward[1]["sram_used_fraction"]


def test_per_layer_mode_says_so_and_reports_the_whole_model_capacity_or_why_not():
    small = estimate(
        "tiny",
        device="tiny",
        prompt_len=8,
        output_len=3,
        placement="per-layer",
        prefill_grid=4,
        decode_grid=4,
    )
    assert small.extrapolated and "per-layer extrapolation" in small.report.breakdown["note"]
    fit = estimate("tiny", device="tiny", prompt_len=8, output_len=3, prefill_grid=4, decode_grid=4)
    assert small.report.kv_capacity_tokens == fit.report.kv_capacity_tokens
    assert small.report.placement == "per-layer" and fit.report.placement == "fit"
    big = estimate(
        "llama3-70b",
        device="wse2",
        prompt_len=64,
        output_len=2,
        placement="per-layer",
        prefill_grid=480,
        decode_grid=480,
    )
    assert big.report.kv_capacity_tokens.shift is None
    assert "does not fit one wse2" in big.report.kv_capacity_tokens.reason


def test_a_model_too_large_for_the_wafer_in_fit_mode_says_how_many_wafers():
    with pytest.raises(WaferError, match=r"does not fit one wse2.*wafers"):
        estimate("llama3-70b", device="wse2", prompt_len=64, output_len=2)
    with pytest.raises(WaferError, match=r"wafers"):
        estimate(
            "llama3-70b",
            device="wse2",
            prompt_len=64,
            output_len=2,
            prefill_grid=480,
            decode_grid=480,
        )


def test_a_request_past_max_position_embeddings_is_accepted_with_a_warning():
    # SPEC.md §9: estimate accepts it; the warning is in the report and raised to Python
    with pytest.warns(UserWarning, match="max_position_embeddings is 512") as caught:
        result = estimate(
            "tiny", device="tiny", prompt_len=12, output_len=600, prefill_grid=4, decode_grid="3x4"
        )
    assert result.report.warnings == (str(caught[0].message),)
    assert result.metrics.tpot_s is not None and result.metrics.tpot_s > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt_len": 0}, WaferError, "prompt_len=0"),
        ({"output_len": -1}, WaferError, "output_len=-1"),
        ({"prefill_grid": "4y4"}, GridError, "malformed grid"),
        ({"decode_grid": (0, 3)}, GridError, "at least one row"),
        ({"prefill_grid": 65}, GridError, "larger than the tiny mesh"),
        ({"placement": "spread"}, WaferError, "placement='spread'"),
        ({"kv_cache": "paged"}, WaferError, "kv_cache='paged'"),
        ({"model": "llama9"}, WaferError, "llama9"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs, error, message):
    args = {"model": "tiny", "device": "tiny", "prompt_len": 8, "output_len": 4}
    args |= {"prefill_grid": 4, "decode_grid": 4} | kwargs
    with pytest.raises(error, match=message):
        estimate(args.pop("model"), **args)


def test_a_request_longer_than_the_kv_cache_names_the_capacity():
    cramped = dataclasses.replace(tiny(), sram_bytes_per_core=24_000)
    with pytest.raises(WaferError, match=r"KV cache on the 4x4 decode grid holds \d+"):
        estimate(
            "tiny", device=cramped, prompt_len=200, output_len=300, prefill_grid=4, decode_grid=4
        )
