"""GPU memory: weight shards against transformers' parameter counts, KV cache, does-not-fit."""

from __future__ import annotations

import pytest
import torch
import transformers

from waferllm.baselines.gpu import shard
from waferllm.baselines.gpu_memory import (
    memory_plan,
    min_gpus_that_fit,
    tensor_parallel_sizes,
    weight_elements_per_gpu,
)
from waferllm.baselines.gpu_request import estimate_gpu
from waferllm.baselines.gpu_specs import a100, h100
from waferllm.baselines.gpu_stack import paper_stack
from waferllm.model.config import from_hf_dict
from waferllm.model.config_sources import hf_config_dict, load_config

STACK = paper_stack()


def _hf_parameter_count(raw: dict) -> int:
    config = transformers.AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["llama3-8b", "qwen2.5-7b"])
def test_one_gpu_holds_exactly_the_parameters_transformers_builds(name):
    raw = hf_config_dict(name)
    assert weight_elements_per_gpu(load_config(name), shard(load_config(name), 1)) == (
        _hf_parameter_count(raw)
    )


def test_tied_embeddings_are_stored_once():
    raw = {**hf_config_dict("tiny"), "tie_word_embeddings": True}
    config = from_hf_dict(raw, "tiny-tied")
    assert weight_elements_per_gpu(config, shard(config, 1)) == _hf_parameter_count(raw)


def test_weight_shards_shrink_with_gpus_but_never_below_the_replicated_parts():
    config = load_config("llama3-8b")
    total = weight_elements_per_gpu(config, shard(config, 1))
    eight = weight_elements_per_gpu(config, shard(config, 8))
    assert total / 8 < eight < total / 7  # norms are replicated on every GPU
    sixteen = weight_elements_per_gpu(config, shard(config, 16))
    assert sixteen > total / 16  # and so are the 8 kv heads' projections, twice each


def test_the_kv_cache_per_token_counts_every_layer_and_the_gpus_kv_heads():
    config = load_config("llama3-8b")
    plan = memory_plan(config, a100(), 8, prompt_len=4096, output_len=4096)
    assert plan.kv_bytes_per_token_per_gpu == 32 * 2 * 1 * 128 * 2  # one kv head per GPU
    assert plan.context_tokens == 8192
    assert plan.fits
    # Memory, not the model's context limit, bounds the capacity (SPEC §9).
    assert plan.kv_capacity_tokens > config.max_position_embeddings


def test_kv_capacity_is_what_memory_leaves_after_weights_and_activations():
    config = load_config("llama3.1-8b")
    plan = memory_plan(config, a100(), 1, prompt_len=1024, output_len=1)
    free = plan.usable_bytes_per_gpu - plan.weights_bytes_per_gpu - plan.activation_bytes_per_gpu
    assert plan.kv_capacity_tokens == free // plan.kv_bytes_per_token_per_gpu


def test_a_70b_model_does_not_fit_one_a100_and_the_report_says_how_many_gpus_it_needs():
    config = load_config("llama3-70b")
    result = estimate_gpu(
        config, gpu=a100(), num_gpus=1, prompt_len=4096, output_len=128, stack=STACK
    )
    assert not result.fits
    assert result.report is None
    assert result.needed_gpus == min_gpus_that_fit(config, a100(), prompt_len=4096, output_len=128)
    assert result.needed_gpus is not None and result.needed_gpus > 1
    assert f"does not fit on 1 a100 (needs >= {result.needed_gpus} GPUs)" in result.message
    needed = memory_plan(config, a100(), result.needed_gpus, prompt_len=4096, output_len=128)
    assert needed.fits
    fewer = [n for n in tensor_parallel_sizes(config, a100()) if n < result.needed_gpus]
    for count in fewer:
        plan = memory_plan(config, a100(), count, prompt_len=4096, output_len=128)
        assert not plan.fits
    assert estimate_gpu(
        config, gpu=h100(), num_gpus=8, prompt_len=4096, output_len=128, stack=STACK
    ).fits


def test_tensor_parallel_sizes_split_the_heads_and_use_whole_nodes_beyond_one():
    sizes = tensor_parallel_sizes(load_config("llama3-8b"), a100())
    assert sizes == [1, 2, 4, 8, 16, 32]
    assert tensor_parallel_sizes(load_config("qwen2.5-7b"), a100()) == [1, 2, 4]


def test_a_batch_multiplies_the_kv_cache_and_can_need_more_gpus():
    config = load_config("llama2-13b")  # MHA: 0.8 MB of KV cache per token
    one = memory_plan(config, a100(), 1, prompt_len=2048, output_len=2048)
    many = memory_plan(config, a100(), 1, prompt_len=2048, output_len=2048, batch_size=16)
    kv = one.kv_bytes_per_token_per_gpu * 4096
    assert many.needed_bytes_per_gpu - one.needed_bytes_per_gpu >= 15 * kv
    assert one.fits and not many.fits
    result = estimate_gpu(
        config,
        gpu=a100(),
        num_gpus=1,
        prompt_len=2048,
        output_len=2048,
        batch_size=16,
        stack=STACK,
    )
    assert not result.fits and result.batch_size == 16
    assert f"does not fit on 1 a100 (needs >= {result.needed_gpus} GPUs)" in result.message
    assert memory_plan(
        config, a100(), result.needed_gpus, prompt_len=2048, output_len=2048, batch_size=16
    ).fits


def test_a_request_past_the_trained_context_is_estimated_with_a_warning():
    config = load_config("llama3-8b")
    result = estimate_gpu(
        config, gpu=a100(), num_gpus=1, prompt_len=8000, output_len=500, stack=STACK
    )
    assert result.fits and result.report is not None
    assert len(result.warnings) == 1
    assert "8499 exceeds llama3-8b's max_position_embeddings (8192)" in result.warnings[0]
    within = estimate_gpu(config, gpu=a100(), num_gpus=1, prompt_len=100, output_len=5, stack=STACK)
    assert within.warnings == ()


def test_lengths_that_are_not_positive_integers_are_refused():
    config = load_config("llama3-8b")
    for bad in ({"prompt_len": 0}, {"output_len": -1}, {"batch_size": 0}):
        args = {"prompt_len": 5, "output_len": 5, "batch_size": 1, **bad}
        with pytest.raises(ValueError, match="must be a positive integer"):
            estimate_gpu(config, gpu=a100(), num_gpus=1, stack=STACK, **args)
