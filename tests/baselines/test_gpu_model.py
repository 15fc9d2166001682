"""The GPU baseline's timing model: rooflines, allreduces, the stack term, batches, phase sums."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from waferllm.baselines.gpu import (
    BYTES_PER_ELEMENT,
    LOGIT_BYTES,
    Op,
    causal_pairs,
    decode_cost,
    gemv_time_s,
    head_ops,
    layer_ops,
    op_seconds,
    prefill_cost,
    shard,
)
from waferllm.baselines.gpu_comm import allreduce_seconds, ring_bytes_per_gpu
from waferllm.baselines.gpu_specs import GPU_PRESETS, GpuSpec, a100, get_gpu, h100, h200
from waferllm.baselines.gpu_stack import ideal_stack, paper_stack
from waferllm.model.config_sources import load_config

IDEAL, PAPER = ideal_stack(), paper_stack()
CONTEXT_4K = [4096.0]


@pytest.fixture(scope="module")
def llama8b():
    return load_config("llama3-8b")


def _op(flops: float, hbm_bytes: float) -> Op:
    return Op(name="k", group="gemm", flops=flops, executed_flops=flops, hbm_bytes=hbm_bytes)


def test_a_kernel_costs_the_largest_of_its_floor_its_flops_and_its_bytes():
    gpu = a100()
    compute_s = 1e12 / (gpu.tensor_efficiency * gpu.tensor_flops_per_s)
    memory_s = 1e9 / (gpu.hbm_efficiency * gpu.hbm_bytes_per_s)
    t = op_seconds(_op(1e12, 1e9), gpu)
    assert float(t.time_s) == pytest.approx(max(compute_s, memory_s))
    assert float(t.compute_bound_s) == float(t.time_s) and float(t.memory_bound_s) == 0.0
    t = op_seconds(_op(1e9, 1e9), gpu)
    assert float(t.time_s) == pytest.approx(memory_s) and float(t.memory_bound_s) == float(t.time_s)
    t = op_seconds(_op(10.0, 10.0), gpu)
    assert float(t.time_s) == gpu.kernel_floor_s
    assert float(t.compute_bound_s) == float(t.memory_bound_s) == 0.0


def test_a_skinny_gemm_executes_whole_token_tiles(llama8b):
    gpu = a100()
    part = shard(llama8b, 1)
    ops = {
        op.name: op
        for op in layer_ops(llama8b, part, gpu, tokens=3, attn_pairs=3.0, kv_read_positions=3.0)
    }
    qkv = ops["qkv_proj"]
    assert qkv.flops == 2.0 * 3 * 4096 * 6144
    assert qkv.executed_flops == 2.0 * 64 * 4096 * 6144  # one 64-row tile
    assert ops["attention"].on_attention and not qkv.on_attention


def test_an_allreduce_is_nccl_latency_plus_ring_volume_over_bus_bandwidth():
    gpu = a100()
    assert allreduce_seconds(1e6, 1, gpu) == 0.0
    message = 32e6
    assert ring_bytes_per_gpu(message, 8) == 2 * 7 / 8 * message
    assert allreduce_seconds(message, 8, gpu) == pytest.approx(
        gpu.nvlink_allreduce_latency_s + 2 * 7 / 8 * message / gpu.nvlink_allreduce_bus_bytes_per_s
    )
    slow_ib = dataclasses.replace(gpu, internode_allreduce_bus_bytes_per_s=10e9)
    assert allreduce_seconds(message, 16, slow_ib) == pytest.approx(
        gpu.internode_allreduce_latency_s + 2 * 15 / 16 * message / 10e9
    )
    # Small messages are latency-bound, large ones bandwidth-bound.
    assert allreduce_seconds(8e3, 8, gpu) < 1.1 * gpu.nvlink_allreduce_latency_s
    assert allreduce_seconds(1e9, 8, gpu) > 100 * gpu.nvlink_allreduce_latency_s


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


@pytest.mark.parametrize("num_gpus", [1, 8, 16])
@pytest.mark.parametrize("stack", [IDEAL, PAPER], ids=["ideal", "paper"])
def test_a_decode_step_is_exactly_the_sum_of_the_documented_terms(llama8b, num_gpus, stack):
    gpu = a100()
    part = shard(llama8b, num_gpus)
    batch, contexts = 3, [100.0, 2000.0, 4096.0]
    kernels = [
        (op, 32)
        for op in layer_ops(
            llama8b,
            part,
            gpu,
            tokens=batch,
            attn_pairs=sum(contexts),
            kv_read_positions=sum(contexts),
        )
    ]
    kernels += [(op, 1) for op in head_ops(llama8b, part, gpu, tokens=batch, rows=batch)]
    kernel_s = sum(n * float(op_seconds(op, gpu).time_s) for op, n in kernels)
    hidden, logits = batch * 4096 * BYTES_PER_ELEMENT, batch * 128256 * LOGIT_BYTES
    allreduce_s = 65 * allreduce_seconds(hidden, num_gpus, gpu) + allreduce_seconds(
        logits, num_gpus, gpu
    )
    cost = decode_cost(llama8b, gpu, num_gpus, [contexts], stack)
    ring = 65 * ring_bytes_per_gpu(hidden, num_gpus) + ring_bytes_per_gpu(logits, num_gpus)
    hbm = sum(n * float(op.hbm_bytes) for op, n in kernels)
    across = num_gpus > 8
    stack_s = (
        stack.step_s
        + stack.s_per_hbm_byte * hbm
        + (stack.s_per_internode_ring_byte if across else stack.s_per_nvlink_ring_byte) * ring
        + (stack.s_per_internode_collective * 66 if across else 0.0)
    )
    assert cost.time_s == pytest.approx(kernel_s + allreduce_s + stack_s)
    assert cost.stack_s == pytest.approx(stack_s)
    parts = cost.compute_bound_s + cost.memory_bound_s + cost.floor_bound_s
    assert parts + cost.allreduce_s + cost.stack_s == pytest.approx(cost.time_s)
    assert sum(cost.by_group_s.values()) == pytest.approx(cost.time_s)


def test_the_ideal_stack_is_the_paper_stack_minus_its_term(llama8b):
    for gpus in (1, 8, 16):
        paper = prefill_cost(llama8b, a100(), gpus, 4096, PAPER)
        ideal = prefill_cost(llama8b, a100(), gpus, 4096, IDEAL)
        assert ideal.stack_s == 0.0
        assert paper.time_s - paper.stack_s == pytest.approx(ideal.time_s)


def test_prefill_is_compute_bound_and_decode_is_bandwidth_bound(llama8b):
    for gpu in (a100(), h100()):
        prefill = prefill_cost(llama8b, gpu, 1, 4096, IDEAL)
        decode = decode_cost(llama8b, gpu, 1, CONTEXT_4K, IDEAL)
        assert prefill.compute_bound_s > 0.8 * prefill.time_s
        assert decode.compute_bound_s == 0.0
        assert decode.memory_bound_s > 0.8 * decode.time_s


def test_decode_reads_every_weight_once_per_token(llama8b):
    decode = decode_cost(llama8b, a100(), 1, CONTEXT_4K)
    weights = 8_030_261_248 - 128256 * 4096  # all parameters but the unread embedding table
    kv_cache = 32 * 2 * 4096 * 8 * 128  # layers x (K, V) x positions x kv heads x head dim
    assert decode.hbm_bytes_per_gpu >= (weights + kv_cache) * BYTES_PER_ELEMENT
    assert decode.hbm_bytes_per_gpu < 1.01 * (weights + kv_cache) * BYTES_PER_ELEMENT


def test_a_batched_step_reads_the_weights_once_and_each_sequences_kv_cache(llama8b):
    one = decode_cost(llama8b, a100(), 1, [[4096.0]])
    four = decode_cost(llama8b, a100(), 1, [[4096.0, 1000.0, 4096.0, 10.0]])
    kv_per_position = 32 * 2 * 8 * 128 * BYTES_PER_ELEMENT
    extra = four.hbm_bytes_per_gpu - one.hbm_bytes_per_gpu
    assert extra >= kv_per_position * (1000 + 4096 + 10)
    assert extra < kv_per_position * (1000 + 4096 + 10) + 0.01 * one.hbm_bytes_per_gpu


def test_decode_step_time_grows_sublinearly_with_batch_until_compute_bound(llama8b):
    step = {
        b: decode_cost(llama8b, a100(), 1, [[128.0] * b], IDEAL).time_s
        for b in (1, 2, 8, 32, 64, 1024, 2048)
    }
    assert step[1] < step[2] < step[8] < step[32] < step[64]
    assert step[64] < 1.5 * step[1]  # weights dominate: 64 short sequences cost about one
    per_sequence = [step[b] / b for b in (1, 2, 8, 32, 64, 1024, 2048)]
    assert all(a >= 0.999 * b for a, b in zip(per_sequence, per_sequence[1:], strict=False))
    big = decode_cost(llama8b, a100(), 1, [[128.0] * 2048], IDEAL)
    assert big.compute_bound_s > 0.5 * big.time_s
    assert step[2048] / step[1024] > 1.6  # compute- and KV-bound: close to linear


def test_a_batched_prefill_sums_its_prompts_causal_attention(llama8b):
    mixed = prefill_cost(llama8b, a100(), 1, [100, 300], IDEAL)
    whole = prefill_cost(llama8b, a100(), 1, [400], IDEAL)
    # Same tokens through the GEMMs, fewer attention pairs when the prompts are apart.
    assert mixed.by_group_s["gemm"] == pytest.approx(whole.by_group_s["gemm"])
    assert mixed.by_group_s["attention"] < whole.by_group_s["attention"]
    with pytest.raises(ValueError, match="positive integers"):
        prefill_cost(llama8b, a100(), 1, [100, 0])


def test_decode_steps_are_priced_one_by_one_in_a_single_vectorised_call(llama8b):
    contexts = np.array([17.0, 900.0, 4096.0, 8000.0])
    together = decode_cost(llama8b, a100(), 8, contexts)
    apart = [decode_cost(llama8b, a100(), 8, [c]) for c in contexts]
    assert together.time_s == pytest.approx(sum(c.time_s for c in apart))
    assert together.hbm_bytes_per_gpu == pytest.approx(sum(c.hbm_bytes_per_gpu for c in apart))
    assert apart[0].time_s < apart[-1].time_s  # a longer context reads more KV cache
    with pytest.raises(ValueError, match="positive lengths"):
        decode_cost(llama8b, a100(), 8, [[0.0]])


def test_a_sliding_window_stops_decode_attention_from_growing_past_it():
    mistral = load_config("mistral-7b")
    window = mistral.sliding_window
    assert window is not None
    at_window = decode_cost(mistral, a100(), 1, [float(window)])
    beyond = decode_cost(mistral, a100(), 1, [float(window) * 3])
    assert beyond.time_s == pytest.approx(at_window.time_s)


def test_newer_gpus_are_faster_in_every_setup(llama8b):
    for gpus in (1, 8, 16):
        times = [
            (
                prefill_cost(llama8b, g(), gpus, 4096).time_s,
                decode_cost(llama8b, g(), gpus, CONTEXT_4K, IDEAL).time_s,
            )
            for g in (a100, h100, h200)
        ]
        assert times[1][0] < times[0][0] and times[1][1] < times[0][1]
        assert times[2][1] < times[1][1]  # H200: same compute, more HBM bandwidth


def test_gemv_over_gpus_splits_the_matrix_and_adds_one_allreduce_of_the_output():
    gpu = a100()
    size = 32768
    local = (size * size // 8 + size // 8 + size) * BYTES_PER_ELEMENT
    local_s = local / (gpu.hbm_efficiency * gpu.hbm_bytes_per_s)
    allreduce = allreduce_seconds(size * BYTES_PER_ELEMENT, 8, gpu)
    assert gemv_time_s(gpu=gpu, num_gpus=8, k=size, n=size, stack=IDEAL) == pytest.approx(
        local_s + allreduce
    )
    with pytest.raises(ValueError, match="k, n, num_gpus >= 1"):
        gemv_time_s(gpu=gpu, num_gpus=8, k=0, n=size)


def test_gpu_presets_carry_a_source_or_placeholder_label_for_every_number():
    assert set(GPU_PRESETS) == {"a100", "h100", "h200", "b200"}
    for name in GPU_PRESETS:
        gpu = get_gpu(name)
        for field in dataclasses.fields(GpuSpec):
            if field.name not in ("name", "sources"):
                assert gpu.sources.get(field.name), (name, field.name)
        assert "assumption" in gpu.sources["internode_bytes_per_s"]
        assert "nccl-tests" in gpu.sources["nvlink_allreduce_bus_bytes_per_s"]
    assert "placeholder" in get_gpu("b200").sources["hbm_efficiency"]
    with pytest.raises(ValueError, match="unknown GPU 'v100'; choose one of: a100, h100, h200"):
        get_gpu("v100")
    with pytest.raises(ValueError, match="hbm_bytes_per_s"):
        dataclasses.replace(a100(), hbm_bytes_per_s=0.0)
    with pytest.raises(ValueError, match="hbm_efficiency"):
        dataclasses.replace(a100(), hbm_efficiency=1.5)
