"""The GPU baseline's timing model: rooflines, allreduces, sharding and the phase sums."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from waferllm.baselines.gpu import (
    BYTES_PER_ELEMENT,
    Op,
    allreduce_seconds,
    causal_pairs,
    decode_cost,
    gemv_time_s,
    op_seconds,
    prefill_cost,
    shard,
)
from waferllm.baselines.gpu_specs import GpuSpec, a100, calibrated, get_gpu, h100
from waferllm.model.config import load_config

CAL = calibrated()
CONTEXT_4K = np.array([4096.0])


@pytest.fixture(scope="module")
def llama8b():
    return load_config("llama3-8b")


def test_a_kernel_costs_the_largest_of_its_floor_its_flops_and_its_bytes():
    gpu = a100()
    compute_s = 1e12 / (CAL.tensor_efficiency * gpu.tensor_flops_per_s)
    memory_s = 1e9 / (CAL.hbm_efficiency * gpu.hbm_bytes_per_s)
    time, compute, memory = op_seconds(Op("big_gemm", "gemm", 1e12, 1e9), gpu, CAL)
    assert float(time) == pytest.approx(max(compute_s, memory_s))
    assert float(compute) == float(time) and float(memory) == 0.0
    time, compute, memory = op_seconds(Op("gemv", "gemm", 1e9, 1e9), gpu, CAL)
    assert float(time) == pytest.approx(memory_s) and float(memory) == float(time)
    time, compute, memory = op_seconds(Op("tiny", "elementwise", 10.0, 10.0), gpu, CAL)
    assert float(time) == CAL.kernel_floor_s and float(compute) == float(memory) == 0.0


def test_allreduce_on_one_gpu_is_free_and_within_a_node_is_latency_plus_ring_volume():
    gpu = a100()
    assert allreduce_seconds(1e6, 1, gpu, CAL) == 0.0
    message = 32e6
    expected = CAL.nvlink_allreduce_latency_s + 2 * 7 / 8 * message / (CAL.link_efficiency * 300e9)
    assert allreduce_seconds(message, 8, gpu, CAL) == pytest.approx(expected)


def test_an_allreduce_across_nodes_pays_the_internode_latency_and_the_slower_link():
    gpu = a100()  # 8 NICs x 25 GB/s = 200 GB/s per node, below NVLink's 300 GB/s one way
    message = 32e6
    latency = CAL.nvlink_allreduce_latency_s + CAL.internode_allreduce_latency_s
    expected = latency + 2 * 15 / 16 * message / (CAL.link_efficiency * 200e9)
    assert allreduce_seconds(message, 16, gpu, CAL) == pytest.approx(expected)
    fast_ib = dataclasses.replace(gpu, internode_bytes_per_s=1e12)  # NVLink is then the limit
    assert allreduce_seconds(message, 16, fast_ib, CAL) == pytest.approx(
        latency + 2 * 15 / 16 * message / (CAL.link_efficiency * 300e9)
    )


def test_causal_pairs_match_a_brute_force_count_with_and_without_a_window():
    for length in (1, 2, 7, 64):
        for window in (None, 1, 3, 64, 100):
            brute = sum(min(t + 1, window or length) for t in range(length))
            assert causal_pairs(length, window) == brute


def test_tensor_parallel_shards_heads_ffn_and_vocab_and_replicates_scarce_kv_heads(llama8b):
    part = shard(llama8b, 8)
    assert (part.q_heads, part.kv_heads, part.ffn) == (4, 1, 14336 // 8)
    assert part.vocab == math.ceil(128256 / 8)
    assert shard(llama8b, 16).kv_heads == 1  # 8 kv heads over 16 GPUs: each held twice


def test_tensor_parallelism_that_cannot_split_the_heads_is_refused_by_name():
    qwen = load_config("qwen2.5-7b")  # 28 query heads, 4 kv heads
    with pytest.raises(ValueError, match=r"num_attention_heads \(28\) divisible by 8"):
        shard(qwen, 8)
    with pytest.raises(ValueError, match="positive integer"):
        shard(qwen, 0)


def test_prefill_is_compute_bound_and_decode_is_bandwidth_bound(llama8b):
    for gpu in (a100(), h100()):
        prefill = prefill_cost(llama8b, gpu, 1, 4096)
        decode = decode_cost(llama8b, gpu, 1, CONTEXT_4K)
        assert prefill.compute_bound_s > 0.8 * prefill.time_s
        assert decode.compute_bound_s == 0.0
        assert decode.memory_bound_s > 0.8 * decode.time_s


def test_the_parts_of_a_phase_add_up_to_its_time(llama8b):
    for gpus in (1, 8, 16):
        for cost in (
            prefill_cost(llama8b, a100(), gpus, 1000),
            decode_cost(llama8b, a100(), gpus, np.arange(1000.0, 1010.0)),
        ):
            parts = cost.compute_bound_s + cost.memory_bound_s + cost.floor_bound_s
            assert parts + cost.allreduce_s == pytest.approx(cost.time_s)
            assert sum(cost.by_group_s.values()) == pytest.approx(cost.time_s)
            assert cost.floor_bound_s >= 0


def test_decode_reads_every_weight_once_per_token(llama8b):
    decode = decode_cost(llama8b, a100(), 1, CONTEXT_4K)
    weights = 8_030_261_248 - 128256 * 4096  # all parameters but the unread embedding table
    kv_cache = 32 * 2 * 4096 * 8 * 128  # layers x (K, V) x positions x kv heads x head dim
    assert decode.hbm_bytes_per_gpu >= (weights + kv_cache) * BYTES_PER_ELEMENT
    assert decode.hbm_bytes_per_gpu < 1.01 * (weights + kv_cache) * BYTES_PER_ELEMENT


def test_more_gpus_read_fewer_weight_bytes_each_and_spend_less_time_on_them(llama8b):
    bytes_per_gpu, memory_s = [], []
    for gpus in (1, 2, 4, 8, 16):
        decode = decode_cost(llama8b, a100(), gpus, CONTEXT_4K)
        bytes_per_gpu.append(decode.hbm_bytes_per_gpu)
        memory_s.append(decode.memory_bound_s)
    assert all(a > b for a, b in zip(bytes_per_gpu, bytes_per_gpu[1:], strict=False))
    assert all(a > b for a, b in zip(memory_s, memory_s[1:], strict=False))


def test_decode_steps_are_priced_one_by_one_in_a_single_vectorised_call(llama8b):
    contexts = np.array([17.0, 900.0, 4096.0, 8000.0])
    together = decode_cost(llama8b, a100(), 8, contexts)
    apart = [decode_cost(llama8b, a100(), 8, np.array([c])) for c in contexts]
    assert together.time_s == pytest.approx(sum(c.time_s for c in apart))
    assert together.hbm_bytes_per_gpu == pytest.approx(sum(c.hbm_bytes_per_gpu for c in apart))
    short, long = (decode_cost(llama8b, a100(), 1, np.array([c])) for c in (17.0, 8000.0))
    assert short.time_s < long.time_s  # a longer context reads more KV cache


def test_a_sliding_window_stops_decode_attention_from_growing_past_it():
    mistral = load_config("mistral-7b")
    window = mistral.sliding_window
    assert window is not None
    at_window = decode_cost(mistral, a100(), 1, np.array([float(window)]))
    beyond = decode_cost(mistral, a100(), 1, np.array([float(window) * 3]))
    assert beyond.time_s == pytest.approx(at_window.time_s)


def test_h100_is_faster_than_a100_in_every_setup(llama8b):
    for gpus in (1, 8, 16):
        assert (
            prefill_cost(llama8b, h100(), gpus, 4096).time_s
            < prefill_cost(llama8b, a100(), gpus, 4096).time_s
        )
        assert (
            decode_cost(llama8b, h100(), gpus, CONTEXT_4K).time_s
            < decode_cost(llama8b, a100(), gpus, CONTEXT_4K).time_s
        )


def test_gemv_on_one_gpu_streams_the_matrix_at_the_fitted_bandwidth():
    gpu = a100()
    size = 16384
    expected = (size * size + 2 * size) * BYTES_PER_ELEMENT / (CAL.hbm_efficiency * 2039e9)
    assert gemv_time_s(gpu=gpu, num_gpus=1, k=size, n=size) == pytest.approx(expected)


def test_gemv_over_gpus_splits_the_matrix_and_adds_one_allreduce_of_the_output():
    gpu = a100()
    size = 32768
    local = (size * size // 8 + size // 8 + size) * BYTES_PER_ELEMENT
    local_s = local / (CAL.hbm_efficiency * gpu.hbm_bytes_per_s)
    allreduce = allreduce_seconds(size * BYTES_PER_ELEMENT, 8, gpu, CAL)
    assert gemv_time_s(gpu=gpu, num_gpus=8, k=size, n=size) == pytest.approx(local_s + allreduce)
    with pytest.raises(ValueError, match="k, n, num_gpus >= 1"):
        gemv_time_s(gpu=gpu, num_gpus=8, k=0, n=size)


def test_gpu_presets_carry_a_source_for_every_hardware_number_and_reject_bad_values():
    for name in ("a100", "h100"):
        gpu = get_gpu(name)
        for field in dataclasses.fields(GpuSpec):
            if field.name not in ("name", "sources"):
                assert gpu.sources.get(field.name), (name, field.name)
        assert "assumption" in gpu.sources["internode_bytes_per_s"]
    with pytest.raises(ValueError, match="unknown GPU 'v100'; choose one of: a100, h100"):
        get_gpu("v100")
    with pytest.raises(ValueError, match="hbm_bytes_per_s"):
        dataclasses.replace(a100(), hbm_bytes_per_s=0.0)
