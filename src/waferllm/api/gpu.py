"""`waferllm.gpu_estimate` and `waferllm.gpu_step_costs`: the GPU baseline (SPEC.md §7).

Resolves the model (a built-in name or a local checkpoint directory), the GPU preset and the
serving stack ('paper' or 'ideal'), runs `baselines.gpu_request.estimate_gpu` (one request or a
batch) and stamps the host wall-clock time; `gpu_step_costs` hands a serving simulator the
per-step costs. A model that does not fit is a result (`fits=False`), not an exception.
"""

from __future__ import annotations

import dataclasses
import time

from waferllm.api.provenance import make_provenance
from waferllm.baselines.gpu_memory import GpuMemory
from waferllm.baselines.gpu_request import GpuEstimate, estimate_gpu
from waferllm.baselines.gpu_serving import GpuStepCosts, step_costs
from waferllm.baselines.gpu_specs import GPU_PRESETS, get_gpu
from waferllm.baselines.gpu_stack import ServingStack, Stack, get_stack
from waferllm.model.config import ModelConfig
from waferllm.model.config_sources import load_config

__all__ = [
    "GPU_PRESETS",
    "GpuEstimate",
    "GpuMemory",
    "GpuStepCosts",
    "Stack",
    "gpu_estimate",
    "gpu_step_costs",
]


def _config(model: str | ModelConfig) -> ModelConfig:
    return model if isinstance(model, ModelConfig) else load_config(model)


def gpu_estimate(
    model: str | ModelConfig,
    *,
    gpu: str = "a100",
    num_gpus: int = 1,
    prompt_len: int,
    output_len: int,
    batch_size: int = 1,
    stack: str | ServingStack = "paper",
) -> GpuEstimate:
    """`batch_size` requests of `model` on `num_gpus` GPUs (tensor parallel), modelled.

    >>> est = gpu_estimate("llama3-8b", gpu="a100", num_gpus=8, prompt_len=4096, output_len=128)
    >>> est.fits, est.report.metrics.decode_tpr > 100, est.warnings
    (True, True, ())
    """
    start = time.perf_counter()
    config, spec, serving = _config(model), get_gpu(gpu), get_stack(stack)
    result = estimate_gpu(
        config,
        gpu=spec,
        num_gpus=num_gpus,
        prompt_len=prompt_len,
        output_len=output_len,
        batch_size=batch_size,
        stack=serving,
    )
    if result.report is None:
        return result
    report = dataclasses.replace(
        result.report,
        host_wall_s=time.perf_counter() - start,
        warnings=tuple(result.warnings),
        batch_size=batch_size,
        num_devices=num_gpus,
        stack=str(serving.stack),
        # the GPU's constants and the serving stack's terms: what the numbers are made of
        provenance=make_provenance(
            device={**spec.to_dict(), "stack": serving.to_dict()}, config=config
        ),
    )
    return dataclasses.replace(result, report=report)


def gpu_step_costs(
    model: str | ModelConfig,
    *,
    gpu: str = "a100",
    num_gpus: int = 1,
    stack: str | ServingStack = "paper",
) -> GpuStepCosts:
    """Per-step costs for a serving simulator: `prefill_seconds(prompt_lens)`,
    `decode_step_seconds(context_lens)` and `kv_capacity_tokens`.

    >>> costs = gpu_step_costs("llama3-8b", gpu="h100", num_gpus=8)
    >>> costs.decode_step_seconds([4096] * 8) < 8 * costs.decode_step_seconds([4096])
    True
    """
    return step_costs(_config(model), gpu=get_gpu(gpu), num_gpus=num_gpus, stack=get_stack(stack))
