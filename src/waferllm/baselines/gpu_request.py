"""One request on the GPU baseline: memory check, prefill, decode, and the shared request report.

`estimate_gpu` returns a `GpuEstimate` whose `fits` flag says whether the model and its KV
cache fit; when they do not, `needed_gpus` and `message` say what would ("does not fit (needs
>= N GPUs)") and there is no report. Times come from `gpu.py`, memory from `gpu_memory.py`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from waferllm.baselines.gpu import PhaseCost, decode_cost, prefill_cost
from waferllm.baselines.gpu_memory import GpuMemory, memory_plan, min_gpus_that_fit
from waferllm.baselines.gpu_specs import GpuCalibration, GpuSpec, calibrated
from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig
from waferllm.model.report import KvCapacity, RequestMetrics, RequestReport

NO_WAFER_CACHE = (
    "shift and concat are the wafer's KV-cache policies; the GPU's paged cache capacity is "
    "breakdown.memory.kv_capacity_tokens"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuEstimate:
    """The GPU baseline's answer for one request; `report` is None when it does not fit."""

    fits: bool
    needed_gpus: int | None
    message: str
    memory: GpuMemory
    report: RequestReport | None


def _check_request(config: ModelConfig, prompt_len: int, output_len: int) -> None:
    for name, value in (("prompt_len", prompt_len), ("output_len", output_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WaferError(f"{name}={value!r} must be a positive integer")
    # the last generated token is never fed back: the request uses L + O - 1 positions
    if prompt_len + output_len - 1 > config.max_position_embeddings:
        raise WaferError(
            f"prompt_len + output_len - 1 = {prompt_len + output_len - 1} exceeds "
            f"{config.name}'s max_position_embeddings ({config.max_position_embeddings})"
        )


def _does_not_fit(config: ModelConfig, gpu: GpuSpec, memory: GpuMemory, needed: int | None) -> str:
    count = f"needs >= {needed} GPUs" if needed else "fits no tensor-parallel size searched"
    gb = 1e9
    kv_bytes = memory.kv_bytes_per_token_per_gpu * memory.context_tokens
    return (
        f"{config.name} does not fit on {memory.num_gpus} {gpu.name} ({count}): "
        f"{memory.needed_bytes_per_gpu / gb:.1f} GB per GPU needed "
        f"(weights {memory.weights_bytes_per_gpu / gb:.1f} GB, KV cache for "
        f"{memory.context_tokens} tokens {kv_bytes / gb:.1f} GB), "
        f"{memory.usable_bytes_per_gpu / gb:.1f} GB usable"
    )


def estimate_gpu(
    config: ModelConfig,
    *,
    gpu: GpuSpec,
    num_gpus: int,
    prompt_len: int,
    output_len: int,
    calibration: GpuCalibration | None = None,
) -> GpuEstimate:
    """Model one batch-1 request (prompt, then output_len tokens, greedy) on `num_gpus` GPUs."""
    cal = calibration or calibrated()
    _check_request(config, prompt_len, output_len)
    memory = memory_plan(
        config, gpu, num_gpus, prompt_len=prompt_len, output_len=output_len, calibration=cal
    )
    if not memory.fits:
        needed = min_gpus_that_fit(
            config, gpu, prompt_len=prompt_len, output_len=output_len, calibration=cal
        )
        message = _does_not_fit(config, gpu, memory, needed)
        return GpuEstimate(
            fits=False, needed_gpus=needed, message=message, memory=memory, report=None
        )
    prefill = prefill_cost(config, gpu, num_gpus, prompt_len, cal)
    # Decode step j (1 <= j < O) feeds token j and attends to prompt_len + j positions.
    contexts = prompt_len + np.arange(1, output_len, dtype=np.float64)
    decode = decode_cost(config, gpu, num_gpus, contexts, cal)
    power_w = gpu.tdp_w * num_gpus
    total_flops = num_gpus * (prefill.flops_per_gpu + decode.flops_per_gpu)
    total_s = prefill.time_s + decode.time_s
    metrics = RequestMetrics.from_times(
        prompt_len=prompt_len,
        output_len=output_len,
        ttft_s=prefill.time_s,
        decode_time_s=decode.time_s,
        transition_s=0.0,
        power_w=power_w,
        utilization=total_flops / (total_s * num_gpus * gpu.tensor_flops_per_s),
    )
    no_cache = KvCapacity(shift=None, concat=None, reason=NO_WAFER_CACHE)
    report = RequestReport(
        kind="gpu",
        model=config.name,
        device=f"{num_gpus}x {gpu.name}",
        prompt_len=prompt_len,
        output_len=output_len,
        prefill_grid=None,
        decode_grid=None,
        placement=_placement(gpu, num_gpus),
        metrics=metrics,
        kv_capacity_tokens=no_cache,
        max_new_tokens=no_cache,
        breakdown=_breakdown(
            gpu, num_gpus, prefill, decode, memory, cal, power_w, decode_steps=output_len - 1
        ),
        host_wall_s=0.0,
    )
    return GpuEstimate(fits=True, needed_gpus=num_gpus, message="", memory=memory, report=report)


def _placement(gpu: GpuSpec, num_gpus: int) -> str:
    if num_gpus == 1:
        return "single GPU"
    if num_gpus <= gpu.gpus_per_node:
        return f"tensor parallel over {num_gpus} GPUs (one node, NVLink)"
    nodes = -(-num_gpus // gpu.gpus_per_node)
    return f"tensor parallel over {num_gpus} GPUs ({nodes} nodes, NVLink + InfiniBand, assumed)"


def _breakdown(
    gpu: GpuSpec,
    num_gpus: int,
    prefill: PhaseCost,
    decode: PhaseCost,
    memory: GpuMemory,
    cal: GpuCalibration,
    power_w: float,
    *,
    decode_steps: int,
) -> dict[str, object]:
    return {
        "model": "analytical GPU baseline (roofline per kernel + ring allreduces), modelled",
        "gpu": gpu.to_dict(),
        "num_gpus": num_gpus,
        "prefill": prefill.to_dict(),
        "decode": {**decode.to_dict(), "steps": decode_steps},
        "memory": memory.to_dict(),
        "energy": {
            "power_w": power_w,
            "note": "modelled: GPU TDP x number of GPUs x modelled time (PAPER.md §2.2)",
        },
        "calibration": {
            **cal.to_dict(),
            "note": "fitted on the LLaMA3-8B A100 rows of PAPER.md §3.3 only; applied unchanged "
            "to every GPU and model",
        },
    }
