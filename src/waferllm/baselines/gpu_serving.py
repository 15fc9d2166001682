"""The GPU baseline as a serving simulator sees it: the cost of one batched step.

`GpuStepCosts` answers the two questions a continuous-batching scheduler asks each step: how
long does prefilling these prompts take, and how long does one decode step of these sequences
take; plus how many tokens of KV cache the GPUs hold (admission). The scheduler itself lives
in estimate/ and receives these as plain callables (SPEC §10.13); nothing here schedules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from waferllm.baselines.gpu import decode_cost, prefill_cost, shard
from waferllm.baselines.gpu_memory import memory_plan
from waferllm.baselines.gpu_specs import GpuSpec
from waferllm.baselines.gpu_stack import ServingStack
from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuStepCosts:
    """Step costs of `config` on `num_gpus` GPUs of one kind under one serving stack.

    `kv_capacity_tokens`: KV-cache tokens (over all sequences) the GPUs hold beside the weights
    and one 4096-token prefill's activations; a scheduler admits while the batch's contexts fit.
    """

    config: ModelConfig
    gpu: GpuSpec
    num_gpus: int
    stack: ServingStack
    kv_capacity_tokens: int

    @property
    def kv_window_tokens(self) -> int | None:
        """The most tokens one sequence keeps cached: a sliding window's (its paged blocks
        beyond the window are freed, as vLLM's block manager does), or None."""
        return self.config.sliding_window

    def prefill_seconds(self, prompt_lens: Sequence[int]) -> float:
        """One prefill step over these prompts (their tokens in one forward pass), including
        each prompt's LM head and first token."""
        return prefill_cost(self.config, self.gpu, self.num_gpus, prompt_lens, self.stack).time_s

    def decode_step_seconds(self, context_lens: Sequence[int]) -> float:
        """One decode step of a batch: sequence i attends to context_lens[i] positions. The
        weights are read once for the batch, each sequence's KV cache once."""
        if len(context_lens) < 1:
            raise WaferError("decode_step_seconds needs at least one sequence")
        contexts = [[float(c) for c in context_lens]]
        return decode_cost(self.config, self.gpu, self.num_gpus, contexts, self.stack).time_s


PREFILL_ACTIVATION_TOKENS = 4096  # activations reserved for one prefill chunk of this many tokens


def step_costs(
    config: ModelConfig, *, gpu: GpuSpec, num_gpus: int, stack: ServingStack
) -> GpuStepCosts:
    """The step-cost object, or a WaferError when tensor parallelism cannot split the model."""
    shard(config, num_gpus)
    plan = memory_plan(config, gpu, num_gpus, prompt_len=PREFILL_ACTIVATION_TOKENS, output_len=1)
    return GpuStepCosts(
        config=config,
        gpu=gpu,
        num_gpus=num_gpus,
        stack=stack,
        kv_capacity_tokens=plan.kv_capacity_tokens,
    )
