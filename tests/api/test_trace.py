"""`--trace`: the modelled timeline is valid Chrome trace-event JSON whose tracks add up to the
report's modelled phase times, and stays small on a long request."""

from __future__ import annotations

from helpers.checkpoints import make_checkpoint
from helpers.traces import assert_chrome_trace, assert_tracks_add_up

from waferllm import LLM, SamplingParams, estimate
from waferllm.api.trace import (
    PHASE_EVENT_BUDGET,
    STEPS,
    estimate_trace,
    generation_trace,
)
from waferllm.device import get_device


def test_an_estimate_trace_is_valid_and_its_tracks_sum_to_the_modelled_phase_times():
    device = get_device("tiny")
    result = estimate("tiny", device=device, prompt_len=30, output_len=12)
    trace = estimate_trace(result, device=device)
    assert_chrome_trace(trace)
    assert_tracks_add_up(trace, result.to_dict()["breakdown"])
    assert trace["otherData"]["modelled"] is True
    assert trace["otherData"]["provenance"]["device_constants"]["name"] == "tiny"
    # fit: each layer iteration names the region that holds the layer
    regions = {i: r for r, held in enumerate(result.prefill.layers) for i in held}
    of_layers = f"/{len(regions)}]"
    blocks = [e for e in trace["traceEvents"] if e["pid"] == 1 and e["name"].endswith(of_layers)]
    assert blocks and all(e["args"]["region"] == regions[e["args"]["index"]] for e in blocks)


def test_a_long_estimate_stays_small_with_aggregated_repeats():
    device = get_device("wse2")
    result = estimate(
        "llama3-8b",
        device=device,
        prompt_len=2048,
        output_len=1024,
        prefill_grid=600,
        decode_grid=420,
        placement="per-layer",
    )
    trace = estimate_trace(result, device=device)
    assert_chrome_trace(trace)
    assert_tracks_add_up(trace, result.to_dict()["breakdown"])
    events = trace["traceEvents"]
    # each phase stops expanding at the budget; one record adds at most five events
    assert len(events) < 3 * (PHASE_EVENT_BUDGET + 5) + 50
    aggregated = [e for e in events if e.get("cat") == "aggregate"]
    assert aggregated and all(e["args"]["count"] > 1 for e in aggregated)
    layers = [e for e in events if e["pid"] == 1 and e["name"].startswith("layer [")]
    assert layers[0]["name"] == "layer [0/32]"


def test_a_generation_trace_has_one_step_per_decode_step_and_sums_to_the_report(tmp_path):
    llm = LLM(make_checkpoint(tmp_path, "llama"), device="tiny", grid="2x3")
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    output = llm.generate([[0, 37, 102, 251, 17]], params)[0]
    trace = generation_trace(output, llm=llm, max_repeats=4)
    assert_chrome_trace(trace)
    assert_tracks_add_up(trace, output.report.to_dict()["breakdown"])
    steps = [e for e in trace["traceEvents"] if e["tid"] == STEPS and e["ph"] == "X"]
    # 11 decode steps: 4 shown one by one, then one aggregate of the other 7
    assert [e["args"].get("count") for e in steps] == [None] * 4 + [7]
