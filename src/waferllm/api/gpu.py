"""`waferllm.gpu_estimate`: the GPU baseline's prediction for one request (SPEC.md §7).

Resolves the model (a built-in name or a local checkpoint directory) and the GPU preset,
runs `baselines.gpu_request.estimate_gpu`, and stamps the host wall-clock time. A model that
does not fit is a result (`fits=False`, `needed_gpus`, `message`), not an exception.
"""

from __future__ import annotations

import dataclasses
import time

from waferllm.baselines.gpu_memory import GpuMemory
from waferllm.baselines.gpu_request import GpuEstimate, estimate_gpu
from waferllm.baselines.gpu_specs import GPU_PRESETS, GpuCalibration, get_gpu
from waferllm.model.config import ModelConfig, load_config

__all__ = ["GPU_PRESETS", "GpuEstimate", "GpuMemory", "gpu_estimate"]


def gpu_estimate(
    model: str | ModelConfig,
    *,
    gpu: str = "a100",
    num_gpus: int = 1,
    prompt_len: int,
    output_len: int,
    calibration: GpuCalibration | None = None,
) -> GpuEstimate:
    """Batch-1 inference of `model` on `num_gpus` GPUs (tensor parallel), modelled.

    >>> est = gpu_estimate("llama3-8b", gpu="a100", num_gpus=8, prompt_len=4096, output_len=128)
    >>> est.fits, est.report.metrics.decode_tpr > 100
    (True, True)
    """
    start = time.perf_counter()
    config = model if isinstance(model, ModelConfig) else load_config(model)
    result = estimate_gpu(
        config,
        gpu=get_gpu(gpu),
        num_gpus=num_gpus,
        prompt_len=prompt_len,
        output_len=output_len,
        calibration=calibration,
    )
    if result.report is None:
        return result
    report = dataclasses.replace(result.report, host_wall_s=time.perf_counter() - start)
    return dataclasses.replace(result, report=report)
