"""LLM inference on NVIDIA GPUs under tensor parallelism: the paper's baseline (SPEC §7).

An analytical model of a serving stack on 1, 8 or 16 GPUs (Megatron-style tensor parallelism:
column-parallel QKV and gate/up, row-parallel O and down, two allreduces per layer, a
vocab-parallel embedding and LM head), for a batch of sequences per forward step. Each kernel
costs `max(kernel_floor, executed_flops / (eff * peak), hbm_bytes / (hbm_eff * bandwidth))`
(GEMMs execute whole token tiles); allreduces cost NCCL's latency plus their ring volume over
the bus bandwidth (`gpu_comm.py`); the serving stack adds its fitted term (`gpu_stack.py`).
A phase's time is exactly the sum of those terms. Memory is checked in `gpu_memory.py`.
Legend: T tokens in a step, B sequences in it, S attended positions, D hidden, F ffn, V vocab,
G GPUs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from waferllm.baselines.gpu_comm import allreduce_seconds, crosses_nodes, ring_bytes_per_gpu
from waferllm.baselines.gpu_specs import GpuSpec
from waferllm.baselines.gpu_stack import ServingStack, StackWork, paper_stack
from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig

BYTES_PER_ELEMENT = 2  # serving stacks run these models in bf16/fp16
LOGIT_BYTES = 4  # the LM head's logits are gathered in fp32

# Op groups reported in the breakdown; every op of the model belongs to one.
GROUPS = ("gemm", "attention", "elementwise", "lm_head", "allreduce", "stack")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shard:
    """What one of G tensor-parallel GPUs holds of a model (heads, ffn and vocab split G ways;
    kv heads replicated when G exceeds their number, as SGLang and vLLM do)."""

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
    """One GPU's share under tensor parallelism over `num_gpus`, or a WaferError."""
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Op:
    """One kernel on one GPU. `flops` are the useful ones; `executed_flops` include a GEMM's
    padding to whole token tiles; `on_attention` selects the flash-attention efficiency.
    Arrays hold one entry per step when a quantity varies by step."""

    name: str
    group: str
    flops: np.ndarray | float
    executed_flops: np.ndarray | float
    hbm_bytes: np.ndarray | float
    on_attention: bool = False


def _gemm(
    name: str, *, tokens: int, k: int, n: int, bias: bool, tile: int, group: str = "gemm"
) -> Op:
    """x_TK @ w_KN (+ b_N): weights read once per step whatever T, activations in and out; the
    tensor cores compute ceil(T / tile) * tile rows (small-GEMM efficiency)."""
    e = BYTES_PER_ELEMENT
    weight_bytes = (k * n + (n if bias else 0)) * e
    executed_tokens = math.ceil(tokens / tile) * tile
    return Op(
        name=name,
        group=group,
        flops=2.0 * tokens * k * n,
        executed_flops=2.0 * executed_tokens * k * n,
        hbm_bytes=weight_bytes + tokens * (k + n) * e,
    )


def _elementwise(name: str, elements: int, passes: int) -> Op:
    """A pass over `elements` values read or written `passes` times in total; a few FLOPs per
    element, so it is always memory- or floor-bound."""
    flops = 4.0 * elements
    return Op(
        name=name,
        group="elementwise",
        flops=flops,
        executed_flops=flops,
        hbm_bytes=float(elements * passes * BYTES_PER_ELEMENT),
    )


def layer_ops(
    config: ModelConfig,
    part: Shard,
    gpu: GpuSpec,
    *,
    tokens: int,
    attn_pairs: np.ndarray | float,
    kv_read_positions: np.ndarray | float,
) -> list[Op]:
    """One decoder layer's kernels on one GPU for a step of `tokens` tokens (collectives apart).

    `attn_pairs`: (query, key) pairs scored per head over the batch; `kv_read_positions`:
    cached positions whose K and V are read from HBM, summed over the batch's sequences.
    """
    d, e, tile = config.hidden_size, BYTES_PER_ELEMENT, gpu.gemm_tile_tokens
    qkv_out = part.q_dim + 2 * part.kv_dim
    attn_flops = 4.0 * part.q_dim * np.asarray(attn_pairs, dtype=np.float64)
    return [
        _elementwise("attn_norm", tokens * d, passes=4),  # fused residual add + RMSNorm
        _gemm("qkv_proj", tokens=tokens, k=d, n=qkv_out, bias=config.qkv_bias, tile=tile),
        _elementwise("rope", tokens * (part.q_dim + part.kv_dim), passes=2),
        _elementwise("kv_cache_write", tokens * 2 * part.kv_dim, passes=2),
        Op(
            name="attention",
            group="attention",
            flops=attn_flops,
            executed_flops=attn_flops,
            hbm_bytes=kv_read_positions * 2 * part.kv_dim * e + tokens * 2 * part.q_dim * e,
            on_attention=True,
        ),
        _gemm("o_proj", tokens=tokens, k=part.q_dim, n=d, bias=config.o_bias, tile=tile),
        _elementwise("mlp_norm", tokens * d, passes=4),
        _gemm("gate_up_proj", tokens=tokens, k=d, n=2 * part.ffn, bias=config.mlp_bias, tile=tile),
        _elementwise("silu_mul", tokens * part.ffn, passes=3),
        _gemm("down_proj", tokens=tokens, k=part.ffn, n=d, bias=config.mlp_bias, tile=tile),
    ]


def head_ops(config: ModelConfig, part: Shard, gpu: GpuSpec, *, tokens: int, rows: int) -> list[Op]:
    """Embedding lookup of `tokens`, final norm, and the LM head and argmax at `rows` positions
    (the last position of each sequence)."""
    d, tile = config.hidden_size, gpu.gemm_tile_tokens
    return [
        _elementwise("embedding", tokens * d, passes=2),
        _elementwise("final_norm", rows * d, passes=2),
        _gemm("lm_head", tokens=rows, k=d, n=part.vocab, bias=False, tile=tile, group="lm_head"),
        _elementwise("argmax", rows * config.vocab_size, passes=1),
    ]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpTime:
    """A kernel's seconds, and the same seconds filed under what bound it (one of the three)."""

    time_s: np.ndarray
    compute_bound_s: np.ndarray
    memory_bound_s: np.ndarray


def op_seconds(op: Op, gpu: GpuSpec) -> OpTime:
    """`max(kernel_floor, executed_flops / (eff * peak), hbm_bytes / (hbm_eff * bandwidth))`."""
    eff = gpu.attention_efficiency if op.on_attention else gpu.tensor_efficiency
    return _roofline(np.asarray(op.executed_flops), np.asarray(op.hbm_bytes), eff, gpu)


def _roofline(
    executed_flops: np.ndarray, hbm_bytes: np.ndarray, eff: np.ndarray | float, gpu: GpuSpec
) -> OpTime:
    """`op_seconds` elementwise over arrays of kernels (and steps)."""
    compute = executed_flops / (eff * gpu.tensor_flops_per_s)
    memory = hbm_bytes / (gpu.hbm_efficiency * gpu.hbm_bytes_per_s)
    floor = gpu.kernel_floor_s
    time = np.maximum(floor, np.maximum(compute, memory))
    return OpTime(
        time_s=time,
        compute_bound_s=np.where((compute >= memory) & (compute > floor), time, 0.0),
        memory_bound_s=np.where((memory > compute) & (memory > floor), time, 0.0),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseCost:
    """Modelled seconds of a phase (summed over its steps): `compute_bound_s + memory_bound_s +
    floor_bound_s + allreduce_s + stack_s = time_s`; the first four are hardware terms, the
    last the serving stack's."""

    time_s: float
    compute_bound_s: float
    memory_bound_s: float
    floor_bound_s: float
    allreduce_s: float
    stack_s: float
    flops_per_gpu: float
    hbm_bytes_per_gpu: float
    ring_bytes_per_gpu: float
    kernels: int
    steps: int
    stack_work: StackWork
    by_group_s: Mapping[str, float]

    @property
    def hardware_s(self) -> float:
        return self.time_s - self.stack_s

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["by_group_s"] = dict(self.by_group_s)
        return out


def _phase(
    config: ModelConfig,
    gpu: GpuSpec,
    part: Shard,
    stack: ServingStack,
    *,
    tokens: int,
    rows: int,
    attn_pairs: np.ndarray | float,
    kv_read_positions: np.ndarray | float,
    steps: int,
) -> PhaseCost:
    """Sum `steps` forward passes of `tokens` tokens from `rows` sequences (arrays: per step)."""
    layers = config.num_hidden_layers
    layer = layer_ops(
        config, part, gpu, tokens=tokens, attn_pairs=attn_pairs, kv_read_positions=kv_read_positions
    )
    head = head_ops(config, part, gpu, tokens=tokens, rows=rows)
    ops = layer + head
    # One row per kernel, one column per step, each row weighted by its count per step.
    count = np.array([layers] * len(layer) + [1] * len(head), dtype=np.float64)
    executed, hbm_rows, useful = (np.empty((len(ops), steps)) for _ in range(3))
    for i, op in enumerate(ops):
        executed[i], hbm_rows[i], useful[i] = op.executed_flops, op.hbm_bytes, op.flops
    eff = np.array(
        [gpu.attention_efficiency if op.on_attention else gpu.tensor_efficiency for op in ops]
    )
    t = _roofline(executed, hbm_rows, eff[:, None], gpu)
    op_time = count * t.time_s.sum(axis=1)
    time = float(op_time.sum())
    compute = float(count @ t.compute_bound_s.sum(axis=1))
    memory = float(count @ t.memory_bound_s.sum(axis=1))
    flops, hbm = float(count @ useful.sum(axis=1)), float(count @ hbm_rows.sum(axis=1))
    by_group = dict.fromkeys(GROUPS, 0.0)
    for op, seconds in zip(ops, op_time, strict=True):
        by_group[op.group] += float(seconds)
    # Two allreduces per layer (after o_proj and down_proj), one after the vocab-parallel
    # embedding, and the gather of the LM head's fp32 logit shards (priced as an allreduce).
    g = part.num_gpus
    messages = [(2 * layers + 1, tokens * config.hidden_size * BYTES_PER_ELEMENT)]
    messages.append((1, rows * config.vocab_size * LOGIT_BYTES))
    allreduce = steps * sum(n * allreduce_seconds(m, g, gpu) for n, m in messages)
    ring = steps * sum(n * ring_bytes_per_gpu(m, g) for n, m in messages) if g > 1 else 0.0
    collectives = 2 * layers + 2 if g > 1 else 0
    internode = crosses_nodes(g, gpu)
    work = StackWork(
        steps=steps,
        hbm_bytes=hbm,
        nvlink_ring_bytes=0.0 if internode else ring,
        internode_ring_bytes=ring if internode else 0.0,
        internode_collectives=steps * collectives if internode else 0.0,
    )
    stack_s = stack.seconds(work)
    by_group["allreduce"], by_group["stack"] = allreduce, stack_s
    return PhaseCost(
        time_s=time + allreduce + stack_s,
        compute_bound_s=compute,
        memory_bound_s=memory,
        floor_bound_s=time - compute - memory,
        allreduce_s=allreduce,
        stack_s=stack_s,
        flops_per_gpu=flops,
        hbm_bytes_per_gpu=hbm,
        ring_bytes_per_gpu=ring,
        kernels=steps * (len(layer) * layers + len(head) + collectives),
        steps=steps,
        stack_work=work,
        by_group_s=by_group,
    )


def causal_pairs(prompt_len: int, window: int | None) -> int:
    """(query, key) pairs a causal prefill of `prompt_len` tokens scores per head, with an
    optional sliding window (token t sees min(t + 1, window) keys)."""
    if window is None or window >= prompt_len:
        return prompt_len * (prompt_len + 1) // 2
    return window * (window + 1) // 2 + (prompt_len - window) * window


def _lengths(values: int | Sequence[int], what: str) -> list[int]:
    lengths = [values] if isinstance(values, int) else list(values)
    if not lengths or any(
        not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1 for v in lengths
    ):
        raise WaferError(f"{what}={values!r} must be one or more positive integers")
    return [int(v) for v in lengths]


def prefill_cost(
    config: ModelConfig,
    gpu: GpuSpec,
    num_gpus: int,
    prompt_lens: int | Sequence[int],
    stack: ServingStack | None = None,
) -> PhaseCost:
    """One forward pass over every prompt of a batch (their tokens concatenated, each attending
    causally to itself), then the LM head and argmax at each prompt's last position: TTFT."""
    lengths = _lengths(prompt_lens, "prompt_lens")
    window = config.sliding_window
    return _phase(
        config,
        gpu,
        shard(config, num_gpus),
        stack or paper_stack(),
        tokens=sum(lengths),
        rows=len(lengths),
        attn_pairs=float(sum(causal_pairs(n, window) for n in lengths)),
        kv_read_positions=float(sum(lengths)),
        steps=1,
    )


def decode_cost(
    config: ModelConfig,
    gpu: GpuSpec,
    num_gpus: int,
    contexts: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    stack: ServingStack | None = None,
) -> PhaseCost:
    """Decode steps of a batch: `contexts[step]` is one context length (batch 1) or a row of B
    lengths, the positions each sequence attends to. Each step reads the weights once and each
    sequence's own KV cache."""
    ctx = np.asarray(contexts, dtype=np.float64)
    if ctx.ndim == 1:
        ctx = ctx[:, None]
    if ctx.ndim != 2 or ctx.shape[1] < 1 or np.any(ctx < 1):
        raise WaferError("decode contexts must be positive lengths, one row of B per step")
    window = config.sliding_window
    attended = (ctx if window is None else np.minimum(ctx, window)).sum(axis=1)
    batch = ctx.shape[1]
    return _phase(
        config,
        gpu,
        shard(config, num_gpus),
        stack or paper_stack(),
        tokens=batch,
        rows=batch,
        attn_pairs=attended,
        kv_read_positions=attended,
        steps=ctx.shape[0],
    )


def gemv_time_s(
    *, gpu: GpuSpec, num_gpus: int, k: int, n: int, stack: ServingStack | None = None
) -> float:
    """[1, K] @ [K, N] split row-wise over G GPUs (each holds K/G rows), then an allreduce of
    the [1, N] partial sums: `max(floor, K/G*N*e / (hbm_eff * bw)) + allreduce(N*e)` plus the
    stack's per-byte terms (one kernel, not a forward step: no `step_s`).

    PAPER.md §3.2 (Table 6) measured this on 1, 8 and 2x8 A100s; it is a check, never a fit.
    """
    cal = stack or paper_stack()
    if min(k, n, num_gpus) < 1:
        raise WaferError(f"gemv needs k, n, num_gpus >= 1 (got k={k}, n={n}, G={num_gpus})")
    local = _gemm("gemv", tokens=1, k=math.ceil(k / num_gpus), n=n, bias=False, tile=1)
    message = n * BYTES_PER_ELEMENT
    ring = ring_bytes_per_gpu(message, num_gpus) if num_gpus > 1 else 0.0
    internode = crosses_nodes(num_gpus, gpu)
    work = StackWork(
        steps=0.0,
        hbm_bytes=float(local.hbm_bytes),
        nvlink_ring_bytes=0.0 if internode else ring,
        internode_ring_bytes=ring if internode else 0.0,
        internode_collectives=1.0 if internode else 0.0,
    )
    kernel = float(op_seconds(local, gpu).time_s)
    return kernel + allreduce_seconds(message, num_gpus, gpu) + cal.seconds(work)
