"""A batch of identical requests on the GPU baseline: memory check, prefill, decode, the report.

`estimate_gpu` returns a `GpuEstimate` whose `fits` flag says whether the model and its KV
cache fit; when they do not, `needed_gpus` and `message` say what would ("does not fit (needs
>= N GPUs)") and there is no report. `warnings` carries what the report should print (e.g. a
context past the model's trained length). Times from `gpu.py`, memory from `gpu_memory.py`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from waferllm.baselines.gpu import PhaseCost, decode_cost, prefill_cost
from waferllm.baselines.gpu_memory import GpuMemory, memory_plan, min_gpus_that_fit
from waferllm.baselines.gpu_specs import GpuSpec
from waferllm.baselines.gpu_stack import ServingStack
from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig
from waferllm.model.report import KvCapacity, RequestMetrics, RequestReport

NO_WAFER_CACHE = (
    "shift and concat are the wafer's KV-cache policies; the GPU's paged cache capacity is "
    "breakdown.memory.kv_capacity_tokens"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuEstimate:
    """The GPU baseline's answer for a batch of requests; `report` is None when it does not fit.

    `warnings` are one-line strings for the report's `warnings` (SPEC §10.4); `stack` is the
    serving stack's name ("paper" or "ideal")."""

    fits: bool
    needed_gpus: int | None
    message: str
    memory: GpuMemory
    report: RequestReport | None
    batch_size: int
    stack: str
    warnings: tuple[str, ...]


def check_request(
    config: ModelConfig, *, prompt_len: int, output_len: int, batch_size: int
) -> tuple[str, ...]:
    """Refuse lengths that are not positive integers; warn (never refuse) when the request runs
    past the model's trained context (SPEC §9): that changes numerics, not the cost."""
    for name, value in (
        ("prompt_len", prompt_len),
        ("output_len", output_len),
        ("batch_size", batch_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WaferError(f"{name}={value!r} must be a positive integer")
    # the last generated token is never fed back: the request uses L + O - 1 positions
    positions = prompt_len + output_len - 1
    if positions <= config.max_position_embeddings:
        return ()
    return (
        f"prompt_len + output_len - 1 = {positions} exceeds {config.name}'s "
        f"max_position_embeddings ({config.max_position_embeddings}): positions past the "
        "trained context change the numerics, not this cost estimate",
    )


def _does_not_fit(config: ModelConfig, gpu: GpuSpec, memory: GpuMemory, needed: int | None) -> str:
    count = f"needs >= {needed} GPUs" if needed else "fits no tensor-parallel size searched"
    gb = 1e9
    tokens = memory.context_tokens * memory.batch_size
    kv_bytes = memory.kv_bytes_per_token_per_gpu * tokens
    batch = f" x batch {memory.batch_size}" if memory.batch_size > 1 else ""
    return (
        f"{config.name}{batch} does not fit on {memory.num_gpus} {gpu.name} ({count}): "
        f"{memory.needed_bytes_per_gpu / gb:.1f} GB per GPU needed "
        f"(weights {memory.weights_bytes_per_gpu / gb:.1f} GB, KV cache for "
        f"{tokens} tokens {kv_bytes / gb:.1f} GB), "
        f"{memory.usable_bytes_per_gpu / gb:.1f} GB usable"
    )


def estimate_gpu(
    config: ModelConfig,
    *,
    gpu: GpuSpec,
    num_gpus: int,
    prompt_len: int,
    output_len: int,
    stack: ServingStack,
    batch_size: int = 1,
) -> GpuEstimate:
    """Model `batch_size` identical requests (prompts prefilled in one step, then output_len - 1
    batched decode steps, greedy) on `num_gpus` GPUs. TTFT is the batch's prefill; TPOT one
    batched step; every TPR is per request (SPEC §10.4)."""
    warnings = check_request(
        config, prompt_len=prompt_len, output_len=output_len, batch_size=batch_size
    )
    memory = memory_plan(
        config, gpu, num_gpus, prompt_len=prompt_len, output_len=output_len, batch_size=batch_size
    )
    result = functools.partial(
        GpuEstimate, memory=memory, batch_size=batch_size, stack=str(stack.stack), warnings=warnings
    )
    if not memory.fits:
        needed = min_gpus_that_fit(
            config, gpu, prompt_len=prompt_len, output_len=output_len, batch_size=batch_size
        )
        message = _does_not_fit(config, gpu, memory, needed)
        return result(fits=False, needed_gpus=needed, message=message, report=None)
    prefill = prefill_cost(config, gpu, num_gpus, [prompt_len] * batch_size, stack)
    # Decode step j (1 <= j < O) feeds token j and attends to prompt_len + j positions.
    steps = prompt_len + np.arange(1, output_len, dtype=np.float64)
    decode = decode_cost(config, gpu, num_gpus, np.repeat(steps[:, None], batch_size, 1), stack)
    power_w = gpu.tdp_w * num_gpus
    total_flops = num_gpus * (prefill.flops_per_gpu + decode.flops_per_gpu)
    total_s = prefill.time_s + decode.time_s
    metrics = RequestMetrics.from_times(
        prompt_len=prompt_len,
        output_len=output_len,
        ttft_s=prefill.time_s,
        decode_time_s=decode.time_s,
        transition_s=0.0,
        power_w=power_w / batch_size,  # energy per request: the batch shares the GPUs
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
            gpu, num_gpus, prefill, decode, memory, stack, power_w, decode_steps=output_len - 1
        ),
        host_wall_s=0.0,
    )
    return result(fits=True, needed_gpus=num_gpus, message="", report=report)


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
    stack: ServingStack,
    power_w: float,
    *,
    decode_steps: int,
) -> dict[str, object]:
    return {
        "model": "analytical GPU baseline (roofline per kernel, NCCL-class allreduces, serving "
        "stack term), modelled",
        "gpu": gpu.to_dict(),
        "num_gpus": num_gpus,
        "batch_size": memory.batch_size,
        "prefill": prefill.to_dict(),
        "decode": {**decode.to_dict(), "steps": decode_steps},
        "memory": memory.to_dict(),
        "energy": {
            "power_w": power_w,
            "note": "modelled: GPU TDP x number of GPUs x modelled time / batch size, per "
            "request (PAPER.md §2.2)",
        },
        "stack": {
            **stack.to_dict(),
            "note": "the serving stack's software term, fitted on the LLaMA3-8B A100 rows of "
            "PAPER.md §3.3 only and applied unchanged to every GPU and model; 'ideal' drops it",
        },
    }
