"""Batch-1 LLM inference on NVIDIA GPUs under tensor parallelism: the paper's baseline (SPEC §7).

An analytical model of what SGLang does on 1, 8 or 16 GPUs (Megatron-style tensor parallelism:
column-parallel QKV and gate/up, row-parallel O and down, two allreduces per layer, a
vocab-parallel embedding and LM head). Every kernel is priced by a roofline with a floor:
`max(kernel_floor, flops / (tensor_eff * peak), hbm_bytes / (hbm_eff * bandwidth))`; allreduces
over NVLink within a node and over InfiniBand across nodes pay a latency plus their ring volume.
Prefill comes out compute-bound and decode bandwidth-bound from the same formula. Memory is
checked (`gpu_memory.py`); the constants are in `gpu_specs.py`, their fit in `gpu_fit.py`.
Legend: T tokens in a step, S attended positions, D hidden, F ffn dim, V vocab, G GPUs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from waferllm.baselines.gpu_specs import GpuCalibration, GpuSpec, calibrated
from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig

BYTES_PER_ELEMENT = 2  # SGLang serves these models in bf16/fp16

# Op groups reported in the breakdown; every op of the model belongs to one.
GROUPS = ("gemm", "attention", "elementwise", "lm_head", "allreduce")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shard:
    """What one of G tensor-parallel GPUs holds of a model (heads, ffn and vocab split G ways;
    kv heads replicated when G exceeds their number, as SGLang does)."""

    num_gpus: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @property
    def q_dim(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def shard(config: ModelConfig, num_gpus: int) -> Shard:
    """One GPU's share under tensor parallelism over `num_gpus`, or a ValueError if it cannot be."""
    if not isinstance(num_gpus, int) or isinstance(num_gpus, bool) or num_gpus < 1:
        raise WaferError(f"num_gpus={num_gpus!r} must be a positive integer")
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if heads % num_gpus:
        raise WaferError(
            f"tensor parallelism over {num_gpus} GPUs needs num_attention_heads ({heads}) "
            f"divisible by {num_gpus}"
        )
    if kv % num_gpus and num_gpus % kv:
        raise WaferError(
            f"tensor parallelism over {num_gpus} GPUs needs num_key_value_heads ({kv}) to divide "
            f"or be divisible by {num_gpus}"
        )
    return Shard(
        num_gpus=num_gpus,
        q_heads=heads // num_gpus,
        kv_heads=max(1, kv // num_gpus),
        head_dim=config.head_dim,
        ffn=math.ceil(config.intermediate_size / num_gpus),
        vocab=math.ceil(config.vocab_size / num_gpus),
    )


@dataclasses.dataclass(frozen=True)
class Op:
    """One kernel on one GPU: its FLOPs and HBM bytes (arrays when they vary by decode step)."""

    name: str
    group: str
    flops: np.ndarray | float
    hbm_bytes: np.ndarray | float


def _gemm(name: str, tokens: int, k: int, n: int, bias: bool, group: str = "gemm") -> Op:
    """x_TK @ w_KN (+ b_N): weights read once, activations in and out."""
    e = BYTES_PER_ELEMENT
    weight_bytes = (k * n + (n if bias else 0)) * e
    return Op(name, group, 2.0 * tokens * k * n, weight_bytes + tokens * (k + n) * e)


def _elementwise(name: str, elements: int, passes: int) -> Op:
    """A pass over `elements` values read or written `passes` times in total; a few FLOPs per
    element, so it is always memory- or floor-bound."""
    return Op(name, "elementwise", 4.0 * elements, float(elements * passes * BYTES_PER_ELEMENT))


def layer_ops(
    config: ModelConfig,
    part: Shard,
    *,
    tokens: int,
    attn_pairs: np.ndarray | float,
    kv_read_positions: np.ndarray | float,
) -> list[Op]:
    """One decoder layer's kernels on one GPU, in SGLang's order (collectives excluded).

    `attn_pairs`: (query, key) pairs scored per head; `kv_read_positions`: cached positions
    whose K and V are read from HBM (prefill's flash attention reads its own K/V once).
    """
    d, e = config.hidden_size, BYTES_PER_ELEMENT
    qkv_out = part.q_dim + 2 * part.kv_dim
    attn_bytes = kv_read_positions * 2 * part.kv_dim * e + tokens * 2 * part.q_dim * e
    return [
        _elementwise("attn_norm", tokens * d, passes=4),  # fused residual add + RMSNorm
        _gemm("qkv_proj", tokens, d, qkv_out, config.qkv_bias),
        _elementwise("rope", tokens * (part.q_dim + part.kv_dim), passes=2),
        _elementwise("kv_cache_write", tokens * 2 * part.kv_dim, passes=2),
        Op("attention", "attention", 4.0 * part.q_dim * attn_pairs, attn_bytes),
        _gemm("o_proj", tokens, part.q_dim, d, config.o_bias),
        _elementwise("mlp_norm", tokens * d, passes=4),
        _gemm("gate_up_proj", tokens, d, 2 * part.ffn, config.mlp_bias),
        _elementwise("silu_mul", tokens * part.ffn, passes=3),
        _gemm("down_proj", tokens, part.ffn, d, config.mlp_bias),
    ]


def head_ops(config: ModelConfig, part: Shard, *, tokens: int) -> list[Op]:
    """Embedding lookup of `tokens`, final norm, LM head and argmax at the last position only."""
    d = config.hidden_size
    return [
        _elementwise("embedding", tokens * d, passes=2),
        _elementwise("final_norm", tokens * d, passes=2),
        _gemm("lm_head", 1, d, part.vocab, False, group="lm_head"),
        _elementwise("argmax", config.vocab_size, passes=1),
    ]


def op_seconds(
    op: Op, gpu: GpuSpec, cal: GpuCalibration
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, compute-bound time, memory-bound time) of one kernel; the floor is the rest."""
    compute = np.asarray(op.flops / (cal.tensor_efficiency * gpu.tensor_flops_per_s))
    memory = np.asarray(op.hbm_bytes / (cal.hbm_efficiency * gpu.hbm_bytes_per_s))
    time = np.maximum(cal.kernel_floor_s, np.maximum(compute, memory))
    compute_bound = np.where((compute >= memory) & (compute > cal.kernel_floor_s), time, 0.0)
    memory_bound = np.where((memory > compute) & (memory > cal.kernel_floor_s), time, 0.0)
    return time, compute_bound, memory_bound


def allreduce_seconds(
    message_bytes: float, num_gpus: int, gpu: GpuSpec, cal: GpuCalibration
) -> float:
    """Ring allreduce (NCCL's algorithm for large messages) over G GPUs in N nodes.

    Every link of the ring carries `2 (G-1)/G * M` bytes. Inside a node that is each GPU's
    NVLink (one direction); a ring that spans nodes is split into one channel per NIC, so the
    node's `gpus_per_node` InfiniBand links share the crossing:
    time = lat_nvlink [+ lat_internode] + 2 (G-1)/G * M / (eff * min(nvlink_one_way,
    gpus_per_node * ib_per_gpu [if N > 1])).
    """
    if num_gpus == 1:
        return 0.0
    link_bytes_per_s = gpu.nvlink_bytes_per_s_per_direction
    latency = cal.nvlink_allreduce_latency_s
    if num_gpus > gpu.gpus_per_node:
        node_ib = gpu.gpus_per_node * gpu.internode_bytes_per_s
        link_bytes_per_s = min(link_bytes_per_s, node_ib)
        latency += cal.internode_allreduce_latency_s
    volume = 2 * (num_gpus - 1) / num_gpus * message_bytes
    return latency + volume / (cal.link_efficiency * link_bytes_per_s)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseCost:
    """Modelled seconds of a phase (summed over its steps), split by what bounds each kernel and
    by op group. `compute_bound_s + memory_bound_s + floor_bound_s + allreduce_s = time_s`."""

    time_s: float
    compute_bound_s: float
    memory_bound_s: float
    floor_bound_s: float
    allreduce_s: float
    flops_per_gpu: float
    hbm_bytes_per_gpu: float
    kernels: int
    by_group_s: Mapping[str, float]

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["by_group_s"] = dict(self.by_group_s)
        return out


def _phase(
    config: ModelConfig,
    gpu: GpuSpec,
    part: Shard,
    cal: GpuCalibration,
    *,
    tokens: int,
    attn_pairs: np.ndarray | float,
    kv_read_positions: np.ndarray | float,
    steps: int,
) -> PhaseCost:
    """Sum `steps` forward passes of `tokens` tokens (arrays hold one entry per step)."""
    layers = config.num_hidden_layers
    layer = layer_ops(
        config, part, tokens=tokens, attn_pairs=attn_pairs, kv_read_positions=kv_read_positions
    )
    head = head_ops(config, part, tokens=tokens)
    counted = [(op, layers) for op in layer] + [(op, 1) for op in head]
    by_group = dict.fromkeys(GROUPS, 0.0)
    time = compute = memory = flops = hbm = 0.0
    for op, count in counted:
        op_time, op_compute, op_memory = op_seconds(op, gpu, cal)
        time += count * _summed(op_time, steps)
        compute += count * _summed(op_compute, steps)
        memory += count * _summed(op_memory, steps)
        flops += count * _summed(op.flops, steps)
        hbm += count * _summed(op.hbm_bytes, steps)
        by_group[op.group] += count * _summed(op_time, steps)
    # Two allreduces per layer (after o_proj and down_proj), one after the vocab-parallel
    # embedding, and the gather of the LM head's fp32 logit shards (priced as an allreduce).
    hidden_bytes = tokens * config.hidden_size * BYTES_PER_ELEMENT
    logit_bytes = config.vocab_size * 4
    allreduce = steps * (
        (2 * layers + 1) * allreduce_seconds(hidden_bytes, part.num_gpus, gpu, cal)
        + allreduce_seconds(logit_bytes, part.num_gpus, gpu, cal)
    )
    by_group["allreduce"] = allreduce
    collectives = 2 * layers + 2 if part.num_gpus > 1 else 0
    return PhaseCost(
        time_s=time + allreduce,
        compute_bound_s=compute,
        memory_bound_s=memory,
        floor_bound_s=time - compute - memory,
        allreduce_s=allreduce,
        flops_per_gpu=flops,
        hbm_bytes_per_gpu=hbm,
        kernels=steps * (len(layer) * layers + len(head) + collectives),
        by_group_s=by_group,
    )


def _summed(values: np.ndarray | float, steps: int) -> float:
    """Sum over steps of a per-step quantity given as a scalar (same every step) or an array."""
    return float(np.sum(np.broadcast_to(values, (steps,))))


def causal_pairs(prompt_len: int, window: int | None) -> int:
    """(query, key) pairs a causal prefill of `prompt_len` tokens scores per head, with an
    optional sliding window (token t sees min(t + 1, window) keys)."""
    if window is None or window >= prompt_len:
        return prompt_len * (prompt_len + 1) // 2
    return window * (window + 1) // 2 + (prompt_len - window) * window


def prefill_cost(
    config: ModelConfig,
    gpu: GpuSpec,
    num_gpus: int,
    prompt_len: int,
    calibration: GpuCalibration | None = None,
) -> PhaseCost:
    """TTFT: the prompt's forward pass, the LM head at the last position and the argmax."""
    part = shard(config, num_gpus)
    return _phase(
        config,
        gpu,
        part,
        calibration or calibrated(),
        tokens=prompt_len,
        attn_pairs=causal_pairs(prompt_len, config.sliding_window),
        kv_read_positions=prompt_len,
        steps=1,
    )


def decode_cost(
    config: ModelConfig,
    gpu: GpuSpec,
    num_gpus: int,
    contexts: np.ndarray,
    calibration: GpuCalibration | None = None,
) -> PhaseCost:
    """Decode steps, one per entry of `contexts` (the positions each step attends to)."""
    part = shard(config, num_gpus)
    contexts = np.asarray(contexts, dtype=np.float64)
    window = config.sliding_window
    attended = contexts if window is None else np.minimum(contexts, window)
    return _phase(
        config,
        gpu,
        part,
        calibration or calibrated(),
        tokens=1,
        attn_pairs=attended,
        kv_read_positions=attended,
        steps=len(contexts),
    )


def gemv_time_s(
    *, gpu: GpuSpec, num_gpus: int, k: int, n: int, calibration: GpuCalibration | None = None
) -> float:
    """[1, K] @ [K, N] split row-wise over G GPUs (each holds K/G rows), then an allreduce of
    the [1, N] partial sums: `max(floor, K*N*e / (G * hbm_eff * bw)) + allreduce(N*e)`.

    PAPER.md §3.2 (Table 6) measured this on 1, 8 and 2x8 A100s; it is a check, never a fit.
    """
    cal = calibration or calibrated()
    if min(k, n, num_gpus) < 1:
        raise WaferError(f"gemv needs k, n, num_gpus >= 1 (got k={k}, n={n}, G={num_gpus})")
    local = _gemm("gemv", 1, math.ceil(k / num_gpus), n, False)
    time, _, _ = op_seconds(local, gpu, cal)
    return float(time) + allreduce_seconds(n * BYTES_PER_ELEMENT, num_gpus, gpu, cal)
