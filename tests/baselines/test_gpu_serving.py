"""The step-cost API a serving simulator calls: prefill and decode steps of batches, capacity."""

from __future__ import annotations

import pytest

from waferllm.baselines.gpu import decode_cost, prefill_cost
from waferllm.baselines.gpu_memory import memory_plan
from waferllm.baselines.gpu_serving import PREFILL_ACTIVATION_TOKENS, step_costs
from waferllm.baselines.gpu_specs import a100, h100
from waferllm.baselines.gpu_stack import ideal_stack, paper_stack
from waferllm.model.config_sources import load_config


@pytest.fixture(scope="module")
def costs():
    return step_costs(load_config("llama3-8b"), gpu=h100(), num_gpus=8, stack=paper_stack())


def test_step_costs_are_the_phase_costs_of_one_step(costs):
    config = costs.config
    assert costs.prefill_seconds([512, 100]) == pytest.approx(
        prefill_cost(config, h100(), 8, [512, 100], paper_stack()).time_s
    )
    assert costs.decode_step_seconds([4096, 17, 900]) == pytest.approx(
        decode_cost(config, h100(), 8, [[4096.0, 17.0, 900.0]], paper_stack()).time_s
    )


def test_a_decode_step_of_many_sequences_costs_far_less_than_as_many_steps(costs):
    one = costs.decode_step_seconds([2048])
    assert costs.decode_step_seconds([2048] * 16) < 4 * one
    assert costs.decode_step_seconds([2048] * 16) > one


def test_kv_capacity_is_the_memory_plans(costs):
    plan = memory_plan(costs.config, h100(), 8, prompt_len=PREFILL_ACTIVATION_TOKENS, output_len=1)
    assert costs.kv_capacity_tokens == plan.kv_capacity_tokens > 100_000


def test_the_ideal_stack_is_faster_and_bad_steps_are_refused():
    config = load_config("llama3-8b")
    paper = step_costs(config, gpu=a100(), num_gpus=8, stack=paper_stack())
    ideal = step_costs(config, gpu=a100(), num_gpus=8, stack=ideal_stack())
    assert ideal.decode_step_seconds([100]) < paper.decode_step_seconds([100])
    with pytest.raises(ValueError, match="at least one sequence"):
        paper.decode_step_seconds([])
    with pytest.raises(ValueError, match="positive integers"):
        paper.prefill_seconds([])
    with pytest.raises(ValueError, match="num_key_value_heads"):
        step_costs(load_config("qwen2.5-7b"), gpu=a100(), num_gpus=7, stack=paper_stack())
