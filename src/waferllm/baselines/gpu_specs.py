"""GPU hardware for the baseline: published figures and physical efficiencies, each with a source.

`GpuSpec` holds only hardware terms (PAPER.md §2.2 for A100 and H100, vendor datasheets for
H200 and B200): peaks, the achieved fractions a bare kernel reaches on that generation, kernel
floors and NCCL-class collective latency and bus bandwidth. Nothing here is fitted; a figure
without a published source says "placeholder". The serving stack's fitted term is in
`gpu_stack.py`, the model in `gpu.py`. Nothing here imports anything of ours but errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from waferllm.errors import WaferError

GPUS_PER_NODE = 8  # DGX/HGX: 8 GPUs on one NVLink domain (PAPER.md §2.2)

_FRACTIONS = (
    "hbm_efficiency",
    "tensor_efficiency",
    "attention_efficiency",
    "usable_memory_fraction",
)
_POSITIVE = (
    "hbm_bytes_per_s",
    "tensor_flops_per_s",
    "tdp_w",
    "nvlink_bytes_per_s",
    "internode_bytes_per_s",
    "kernel_floor_s",
    "nvlink_allreduce_latency_s",
    "nvlink_allreduce_bus_bytes_per_s",
    "internode_allreduce_latency_s",
    "internode_allreduce_bus_bytes_per_s",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """One NVIDIA GPU as a tensor-parallel inference worker sees it; every field is physical.

    Peaks: `hbm_bytes_per_s`, `tensor_flops_per_s` (FP16/BF16 dense), `nvlink_bytes_per_s`
    (per GPU, both directions), `internode_bytes_per_s` (InfiniBand per GPU, one direction).
    Achieved by a bare kernel: `hbm_efficiency` (streaming reads, e.g. a large GEMV),
    `tensor_efficiency` (a large GEMM), `attention_efficiency` (flash attention's share of the
    tensor peak), `kernel_floor_s` (the shortest a kernel takes inside a CUDA graph: launch,
    ramp and tail), `gemm_tile_tokens` (the token dimension of a GEMM is computed in tiles of
    this many rows, so a skinny GEMM pays for a whole tile: small-GEMM efficiency).
    Collectives as NCCL reaches them (nccl-tests `all_reduce_perf`): a latency per allreduce and
    a bus bandwidth for large messages, within one NVLink node and across nodes.
    `usable_memory_fraction`: HBM left for weights, KV cache and activations.
    """

    name: str
    hbm_bytes: int
    hbm_bytes_per_s: float
    tensor_flops_per_s: float
    tdp_w: float
    nvlink_bytes_per_s: float
    internode_bytes_per_s: float
    gpus_per_node: int = GPUS_PER_NODE
    hbm_efficiency: float
    tensor_efficiency: float
    attention_efficiency: float
    kernel_floor_s: float
    gemm_tile_tokens: int
    nvlink_allreduce_latency_s: float
    nvlink_allreduce_bus_bytes_per_s: float
    internode_allreduce_latency_s: float
    internode_allreduce_bus_bytes_per_s: float
    usable_memory_fraction: float
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for field in ("hbm_bytes", "gpus_per_node", "gemm_tile_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WaferError(f"GPU field {field}={value!r} must be a positive integer")
        for field in _POSITIVE:
            value = getattr(self, field)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise WaferError(f"GPU field {field}={value!r} must be a positive number")
        for field in _FRACTIONS:
            value = getattr(self, field)
            if not isinstance(value, int | float) or not 0 < value <= 1:
                raise WaferError(f"GPU field {field}={value!r} must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["sources"] = dict(self.sources)
        return out


_IB_ASSUMPTION = (
    "assumption (PAPER.md §2.2 InfiniBand row): the paper does not state the InfiniBand "
    "generation; DGX-style 8 NICs per node"
)
_NCCL = "placeholder, nccl-tests all_reduce_perf class figure"
_COMMON_SOURCES = {
    "gpus_per_node": "DGX/HGX: 8 GPUs per NVLink domain (PAPER.md §2.2)",
    "gemm_tile_tokens": "placeholder: 64-row tensor-core tiles, as CUTLASS/cuBLAS kernels for "
    "skinny GEMMs use; a batch of B < 64 tokens costs a whole tile",
    "usable_memory_fraction": "assumption: vLLM's default gpu_memory_utilization 0.9 (CUDA "
    "context, allocator slack and communication buffers take the rest)",
    "internode_allreduce_bus_bytes_per_s": f"{_NCCL}: 8 NICs per node carry 8 rings, so the "
    "bus bandwidth is about 90% of gpus_per_node x internode_bytes_per_s, capped by NVLink's",
    "internode_allreduce_latency_s": f"{_NCCL}: small-message allreduce across two nodes",
}


def a100() -> GpuSpec:
    """A100 SXM4 80 GB: the part the paper's single-A100 GEMV times imply (PAPER.md §2.2)."""
    return GpuSpec(
        name="a100",
        hbm_bytes=80 * 10**9,
        hbm_bytes_per_s=2039e9,
        tensor_flops_per_s=312e12,
        tdp_w=400.0,
        nvlink_bytes_per_s=600e9,
        internode_bytes_per_s=25e9,
        hbm_efficiency=0.85,
        tensor_efficiency=0.75,
        attention_efficiency=0.60,
        kernel_floor_s=2.5e-6,
        gemm_tile_tokens=64,
        nvlink_allreduce_latency_s=12e-6,
        nvlink_allreduce_bus_bytes_per_s=160e9,
        internode_allreduce_latency_s=30e-6,
        internode_allreduce_bus_bytes_per_s=160e9,
        usable_memory_fraction=0.9,
        sources={
            **_COMMON_SOURCES,
            "hbm_bytes": "PAPER.md §2.2 (A100 SXM4 80 GB)",
            "hbm_bytes_per_s": "PAPER.md §2.2 HBM bandwidth row (2,039 GB/s)",
            "tensor_flops_per_s": "PAPER.md §2.2 FP16/BF16 dense tensor peak (312 TFLOP/s)",
            "tdp_w": "PAPER.md §2.2 TDP row (400 W)",
            "nvlink_bytes_per_s": "PAPER.md §2.2 NVLink per GPU (600 GB/s, both directions)",
            "internode_bytes_per_s": f"{_IB_ASSUMPTION}: 8 x HDR 200 Gb/s, 25 GB/s per GPU",
            "hbm_efficiency": "placeholder: streaming kernels (BabelStream, large GEMVs) reach "
            "about 85% of HBM2e peak on A100",
            "tensor_efficiency": "placeholder: large cuBLAS BF16 GEMMs reach about 230-250 of "
            "312 TFLOP/s on A100",
            "attention_efficiency": "FlashAttention-2 paper (Dao 2023): forward pass at 50-73% "
            "of A100 peak for head dim 128; 0.60 taken",
            "kernel_floor_s": "placeholder: a small kernel replayed in a CUDA graph takes a few "
            "microseconds on A100 (launch, ramp, tail)",
            "nvlink_allreduce_latency_s": f"{_NCCL}: small-message allreduce on 8 NVLink A100s",
            "nvlink_allreduce_bus_bytes_per_s": f"{_NCCL}: about 150-170 GB/s large-message "
            "bus bandwidth inside a DGX A100",
        },
    )


def h100() -> GpuSpec:
    """H100 SXM5 80 GB (PAPER.md §2.2)."""
    return GpuSpec(
        name="h100",
        hbm_bytes=80 * 10**9,
        hbm_bytes_per_s=3.35e12,
        tensor_flops_per_s=989e12,
        tdp_w=700.0,
        nvlink_bytes_per_s=900e9,
        internode_bytes_per_s=50e9,
        hbm_efficiency=0.88,
        tensor_efficiency=0.80,
        attention_efficiency=0.50,
        kernel_floor_s=1.5e-6,
        gemm_tile_tokens=64,
        nvlink_allreduce_latency_s=10e-6,
        nvlink_allreduce_bus_bytes_per_s=300e9,
        internode_allreduce_latency_s=25e-6,
        internode_allreduce_bus_bytes_per_s=300e9,
        usable_memory_fraction=0.9,
        sources={
            **_COMMON_SOURCES,
            "hbm_bytes": "PAPER.md §2.2 (H100 SXM5 80 GB)",
            "hbm_bytes_per_s": "PAPER.md §2.2 HBM bandwidth row (3.35 TB/s)",
            "tensor_flops_per_s": "PAPER.md §2.2 FP16/BF16 dense tensor peak (989 TFLOP/s)",
            "tdp_w": "PAPER.md §2.2 TDP row (700 W)",
            "nvlink_bytes_per_s": "PAPER.md §2.2 NVLink per GPU (900 GB/s, both directions)",
            "internode_bytes_per_s": f"{_IB_ASSUMPTION}: 8 x NDR 400 Gb/s, 50 GB/s per GPU",
            "hbm_efficiency": "measured: a device copy moved 2.96 TB/s (read + write) on a lent "
            "H100 SXM5 (benchmarks/results/gpu_h100_check_h100_2026-11-26.json), 0.88 of peak",
            "tensor_efficiency": "measured: an 8192^3 BF16 matmul ran at 798 TFLOP/s on a lent "
            "H100 (/work/.library/device/KINDS.md, 2026-11-13), 0.81 of peak",
            "attention_efficiency": "placeholder: FlashAttention-2 reaches about 35% of H100 "
            "peak, FlashAttention-3 about 75%; serving stacks use either, 0.50 taken",
            "kernel_floor_s": "measured: 1.2 us per small kernel in CUDA-graph replay on a lent "
            "H100 (benchmarks/results/gpu_h100_check_h100_2026-11-26.json); 1.5 us taken",
            "nvlink_allreduce_latency_s": f"{_NCCL}: small-message allreduce on 8 NVLink H100s",
            "nvlink_allreduce_bus_bytes_per_s": f"{_NCCL}: about 270-340 GB/s large-message "
            "bus bandwidth inside a DGX H100 without NVLink SHARP",
        },
    )


def h200() -> GpuSpec:
    """H200 SXM 141 GB: H100's compute and NVLink with HBM3e (NVIDIA H200 datasheet)."""
    base = h100()
    return dataclasses.replace(
        base,
        name="h200",
        hbm_bytes=141 * 10**9,
        hbm_bytes_per_s=4.8e12,
        hbm_efficiency=0.90,
        tensor_efficiency=0.80,
        sources={
            **base.sources,
            "hbm_bytes": "NVIDIA H200 datasheet: 141 GB HBM3e",
            "hbm_bytes_per_s": "NVIDIA H200 datasheet: 4.8 TB/s",
            "tensor_flops_per_s": "NVIDIA H200 datasheet: 989 TFLOP/s FP16/BF16 dense (1,979 "
            "with sparsity), the same Hopper die as H100 SXM",
            "tdp_w": "NVIDIA H200 datasheet: up to 700 W (SXM)",
            "nvlink_bytes_per_s": "NVIDIA H200 datasheet: NVLink 900 GB/s",
            "internode_bytes_per_s": f"{_IB_ASSUMPTION}: DGX H200 8 x NDR 400 Gb/s, 50 GB/s "
            "per GPU",
            "hbm_efficiency": "measured: a device copy moved about 4.3 TB/s (read + write) on a "
            "lent H200 (/work/.library/device/KINDS.md, 2026-10-28), 0.90 of peak",
            "tensor_efficiency": "measured: an 8192^3 BF16 matmul ran at 769-798 TFLOP/s on a "
            "lent H200 (/work/.library/device/KINDS.md, 2026-11-04), 0.80 of peak",
        },
    )


def b200() -> GpuSpec:
    """B200 in an HGX/DGX B200 (NVIDIA datasheet figures; efficiencies are placeholders)."""
    base = h100()
    return dataclasses.replace(
        base,
        name="b200",
        hbm_bytes=180 * 10**9,
        hbm_bytes_per_s=8.0e12,
        tensor_flops_per_s=2.25e15,
        tdp_w=1000.0,
        nvlink_bytes_per_s=1.8e12,
        internode_bytes_per_s=50e9,
        hbm_efficiency=0.85,
        tensor_efficiency=0.75,
        attention_efficiency=0.50,
        kernel_floor_s=1.5e-6,
        nvlink_allreduce_bus_bytes_per_s=600e9,
        internode_allreduce_bus_bytes_per_s=360e9,
        sources={
            **base.sources,
            "hbm_bytes": "NVIDIA DGX B200 datasheet: 1,440 GB HBM3e over 8 GPUs, 180 GB each",
            "hbm_bytes_per_s": "NVIDIA HGX B200 datasheet: 8 TB/s per GPU",
            "tensor_flops_per_s": "NVIDIA HGX B200 datasheet: 2.25 PFLOP/s FP16/BF16 dense "
            "(4.5 with sparsity)",
            "tdp_w": "NVIDIA HGX B200 datasheet: 1,000 W per GPU",
            "nvlink_bytes_per_s": "NVIDIA HGX B200 datasheet: NVLink 5, 1.8 TB/s per GPU",
            "internode_bytes_per_s": f"{_IB_ASSUMPTION}: DGX B200 8 x ConnectX-7 400 Gb/s, "
            "50 GB/s per GPU",
            "hbm_efficiency": "placeholder: 0.85, as earlier HBM generations",
            "tensor_efficiency": "placeholder: 0.75, as earlier generations' large GEMMs",
            "attention_efficiency": "placeholder: 0.50, as H100",
            "kernel_floor_s": "placeholder: as H100",
            "nvlink_allreduce_latency_s": f"{_NCCL}: as H100 (placeholder)",
            "nvlink_allreduce_bus_bytes_per_s": f"{_NCCL}: twice H100's, as NVLink 5 doubles "
            "NVLink 4 (placeholder)",
            "internode_allreduce_bus_bytes_per_s": f"{_NCCL}: about 90% of 8 x 50 GB/s per node "
            "(placeholder)",
        },
    )


GPU_PRESETS: dict[str, Callable[[], GpuSpec]] = {
    "a100": a100,
    "h100": h100,
    "h200": h200,
    "b200": b200,
}


def get_gpu(name: str) -> GpuSpec:
    """A GPU preset by name, or a WaferError listing the valid ones."""
    if name not in GPU_PRESETS:
        raise WaferError(f"unknown GPU {name!r}; choose one of: {', '.join(GPU_PRESETS)}")
    return GPU_PRESETS[name]()
