"""Does a model and a batch fit G GPUs under tensor parallelism, and how much KV cache is left?

Per GPU: its weight shard (vocab-parallel embedding and LM head, one copy of the tied matrix),
the KV cache of every sequence's whole context for its kv heads, and prefill's peak activations
for the batch's tokens, against `usable_memory_fraction` of HBM. Timing is in `gpu.py`.
"""

from __future__ import annotations

import dataclasses
import math

from waferllm.baselines.gpu import BYTES_PER_ELEMENT, Shard, shard
from waferllm.baselines.gpu_specs import GpuSpec
from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig
from waferllm.model.family import Dim, family_of

MAX_GPUS_SEARCHED = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuMemory:
    """Bytes per GPU for `batch_size` sequences of `context_tokens` (prompt + generated) tokens
    each. The KV capacity is in tokens over all sequences; the model's context limit does not
    bound it (SPEC §9: positions past it only change numerics)."""

    num_gpus: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    activation_bytes_per_gpu: int
    usable_bytes_per_gpu: int
    context_tokens: int
    batch_size: int

    @property
    def needed_bytes_per_gpu(self) -> int:
        kv = self.kv_bytes_per_token_per_gpu * self.context_tokens * self.batch_size
        return self.weights_bytes_per_gpu + kv + self.activation_bytes_per_gpu

    @property
    def fits(self) -> bool:
        return self.needed_bytes_per_gpu <= self.usable_bytes_per_gpu

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache (over all sequences) that fit beside the weights and activations."""
        free = self.usable_bytes_per_gpu - self.weights_bytes_per_gpu
        free -= self.activation_bytes_per_gpu
        return max(0, free // self.kv_bytes_per_token_per_gpu)

    def to_dict(self) -> dict[str, int | bool]:
        out: dict[str, int | bool] = dataclasses.asdict(self)
        out["needed_bytes_per_gpu"] = self.needed_bytes_per_gpu
        out["fits"] = self.fits
        out["kv_capacity_tokens"] = self.kv_capacity_tokens
        return out


def weight_elements_per_gpu(config: ModelConfig, part: Shard) -> int:
    """Parameters one GPU stores: every row of the family table with its head and ffn dims
    split G ways (biases follow their matmul's output), the hidden dim and the norms in full."""
    d = config.hidden_size
    sizes = {
        Dim.HIDDEN: d,
        Dim.FFN: part.ffn,
        Dim.Q: part.q_dim,
        Dim.KV: part.kv_dim,
        Dim.V: part.kv_dim,
        Dim.O: part.q_dim,
    }
    layer = sum(
        math.prod(sizes[dim] for dim in (t.out, t.in_) if dim is not None)
        for t in family_of(config).tensors(config)
    )
    vocab_matrices = 1 if config.tie_word_embeddings else 2
    return config.num_hidden_layers * layer + vocab_matrices * part.vocab * d + d  # + final norm


def memory_plan(
    config: ModelConfig,
    gpu: GpuSpec,
    num_gpus: int,
    *,
    prompt_len: int,
    output_len: int,
    batch_size: int = 1,
) -> GpuMemory:
    """Memory per GPU for `batch_size` requests of prompt_len + output_len tokens, prefilled
    together in one step."""
    part = shard(config, num_gpus)
    e = BYTES_PER_ELEMENT
    qkv_out = part.q_dim + 2 * part.kv_dim
    # Prefill peak: hidden, residual and normed rows, the QKV output, gate/up and the SiLU
    # product, plus each sequence's last-position fp32 logits.
    tokens = prompt_len * batch_size
    activations = tokens * e * (3 * config.hidden_size + qkv_out + 3 * part.ffn)
    activations += batch_size * config.vocab_size * 4
    return GpuMemory(
        num_gpus=num_gpus,
        weights_bytes_per_gpu=weight_elements_per_gpu(config, part) * e,
        kv_bytes_per_token_per_gpu=config.num_hidden_layers * 2 * part.kv_dim * e,
        activation_bytes_per_gpu=activations,
        usable_bytes_per_gpu=int(gpu.hbm_bytes * gpu.usable_memory_fraction),
        context_tokens=prompt_len + output_len,
        batch_size=batch_size,
    )


def tensor_parallel_sizes(config: ModelConfig, gpu: GpuSpec) -> list[int]:
    """GPU counts tensor parallelism can use for this model: within one node any count that
    splits the heads, across nodes whole nodes only."""
    sizes = []
    for count in range(1, MAX_GPUS_SEARCHED + 1):
        if count > gpu.gpus_per_node and count % gpu.gpus_per_node:
            continue
        try:
            shard(config, count)
        except WaferError:
            continue
        sizes.append(count)
    return sizes


def min_gpus_that_fit(
    config: ModelConfig,
    gpu: GpuSpec,
    *,
    prompt_len: int,
    output_len: int,
    batch_size: int = 1,
) -> int | None:
    """The fewest GPUs whose memory holds the request, or None if even the largest count
    searched cannot (the kv heads' replication stops the KV cache from shrinking)."""
    for count in tensor_parallel_sizes(config, gpu):
        plan = memory_plan(
            config,
            gpu,
            count,
            prompt_len=prompt_len,
            output_len=output_len,
            batch_size=batch_size,
        )
        if plan.fits:
            return count
    return None
