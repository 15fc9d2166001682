"""GPU hardware for the baseline (PAPER.md §2.2) and the model's calibrated efficiency constants.

`GpuSpec` holds published hardware numbers only, each with its source; `GpuCalibration` holds
the few efficiency constants fitted on the LLaMA3-8B A100 rows of PAPER.md §3.3 (see
`gpu_fit.py`, which reproduces them) plus the stated assumptions. The model itself lives in
`gpu.py`. Nothing here imports anything of ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from waferllm.errors import WaferError

GPUS_PER_NODE = 8  # DGX A100 / DGX H100: 8 GPUs on one NVLink domain (PAPER.md §2.2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """One NVIDIA GPU as a tensor-parallel inference worker sees it (PAPER.md §2.2)."""

    name: str
    hbm_bytes: int  # HBM capacity
    hbm_bytes_per_s: float
    tensor_flops_per_s: float  # FP16/BF16 dense tensor-core peak
    tdp_w: float
    nvlink_bytes_per_s: float  # per GPU, both directions together (the vendor's figure)
    internode_bytes_per_s: float  # InfiniBand per GPU, one direction (an assumption, see sources)
    gpus_per_node: int = GPUS_PER_NODE
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for field in ("hbm_bytes", "gpus_per_node"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WaferError(f"GPU field {field}={value!r} must be a positive integer")
        for field in (
            "hbm_bytes_per_s",
            "tensor_flops_per_s",
            "tdp_w",
            "nvlink_bytes_per_s",
            "internode_bytes_per_s",
        ):
            value = getattr(self, field)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise WaferError(f"GPU field {field}={value!r} must be a positive number")

    @property
    def nvlink_bytes_per_s_per_direction(self) -> float:
        """A ring step sends and receives at once: half the bidirectional NVLink figure each way."""
        return self.nvlink_bytes_per_s / 2

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["sources"] = dict(self.sources)
        return out


_IB_ASSUMPTION = (
    "assumption (PAPER.md §2.2 InfiniBand row): the paper does not state the InfiniBand "
    "generation; DGX-style 8 NICs per node"
)


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
        sources={
            "hbm_bytes": "PAPER.md §2.2 (A100 SXM4 80 GB)",
            "hbm_bytes_per_s": "PAPER.md §2.2 HBM bandwidth row (2,039 GB/s)",
            "tensor_flops_per_s": "PAPER.md §2.2 FP16/BF16 dense tensor peak (312 TFLOP/s)",
            "tdp_w": "PAPER.md §2.2 TDP row (400 W)",
            "nvlink_bytes_per_s": "PAPER.md §2.2 NVLink per GPU (600 GB/s, both directions)",
            "internode_bytes_per_s": f"{_IB_ASSUMPTION}: 8 x HDR 200 Gb/s, 25 GB/s per GPU",
            "gpus_per_node": "PAPER.md §2.2 (8 GPUs over NVLink, 2 nodes x 8 over InfiniBand)",
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
        sources={
            "hbm_bytes": "PAPER.md §2.2 (H100 SXM5 80 GB)",
            "hbm_bytes_per_s": "PAPER.md §2.2 HBM bandwidth row (3.35 TB/s)",
            "tensor_flops_per_s": "PAPER.md §2.2 FP16/BF16 dense tensor peak (989 TFLOP/s)",
            "tdp_w": "PAPER.md §2.2 TDP row (700 W)",
            "nvlink_bytes_per_s": "PAPER.md §2.2 NVLink per GPU (900 GB/s, both directions)",
            "internode_bytes_per_s": f"{_IB_ASSUMPTION}: 8 x NDR 400 Gb/s, 50 GB/s per GPU",
            "gpus_per_node": "PAPER.md §2.2 (DGX H100: 8 GPUs per NVLink domain)",
        },
    )


GPU_PRESETS: dict[str, Callable[[], GpuSpec]] = {"a100": a100, "h100": h100}


def get_gpu(name: str) -> GpuSpec:
    """A GPU preset by name, or a ValueError listing the valid ones."""
    if name not in GPU_PRESETS:
        raise WaferError(f"unknown GPU {name!r}; choose one of: {', '.join(GPU_PRESETS)}")
    return GPU_PRESETS[name]()


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuCalibration:
    """How close the serving software gets to the hardware (one set for every GPU and model).

    Fitted (`gpu_fit.fit_calibration`, on PAPER.md §3.3's LLaMA3-8B A100 rows only):
    `hbm_efficiency` and `tensor_efficiency` (achieved fractions of the peaks),
    `link_efficiency` (achieved fraction of NVLink/InfiniBand bandwidth in allreduces),
    `nvlink_allreduce_latency_s` and `internode_allreduce_latency_s` (fixed cost of one
    allreduce inside a node, and the extra cost when it crosses nodes).
    Assumed, not fitted: `kernel_floor_s` (no kernel finishes faster; the three decode rows
    cannot separate it from the HBM efficiency and the two latencies) and
    `usable_memory_fraction` (HBM left for weights, KV cache and activations after the CUDA
    context, allocator slack and communication buffers).
    """

    hbm_efficiency: float
    tensor_efficiency: float
    link_efficiency: float
    nvlink_allreduce_latency_s: float
    internode_allreduce_latency_s: float
    kernel_floor_s: float
    usable_memory_fraction: float
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for field in ("hbm_efficiency", "tensor_efficiency", "link_efficiency"):
            value = getattr(self, field)
            if not 0 < value <= 1:
                raise WaferError(f"calibration field {field}={value!r} must be in (0, 1]")
        if not 0 < self.usable_memory_fraction <= 1:
            raise WaferError(
                f"calibration field usable_memory_fraction={self.usable_memory_fraction!r} "
                "must be in (0, 1]"
            )
        for field in (
            "nvlink_allreduce_latency_s",
            "internode_allreduce_latency_s",
            "kernel_floor_s",
        ):
            if getattr(self, field) < 0:
                raise WaferError(f"calibration field {field}={getattr(self, field)!r} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["sources"] = dict(self.sources)
        return out


FITTED = "fitted on PAPER.md §3.3 LLaMA3-8B A100 rows (benchmarks/gpu_baseline.py)"

# Assumptions, fixed before the fit (see GpuCalibration's docstring for why).
KERNEL_FLOOR_S = 4e-6
USABLE_MEMORY_FRACTION = 0.9


def calibrated() -> GpuCalibration:
    """The constants `benchmarks/gpu_baseline.py` fitted; the tests refit and compare."""
    return GpuCalibration(
        hbm_efficiency=0.6342,
        tensor_efficiency=0.7150,
        link_efficiency=0.07256,
        nvlink_allreduce_latency_s=22.80e-6,
        internode_allreduce_latency_s=42.36e-6,
        kernel_floor_s=KERNEL_FLOOR_S,
        usable_memory_fraction=USABLE_MEMORY_FRACTION,
        sources={
            "hbm_efficiency": FITTED,
            "tensor_efficiency": FITTED,
            "link_efficiency": FITTED,
            "nvlink_allreduce_latency_s": FITTED,
            "internode_allreduce_latency_s": FITTED,
            "kernel_floor_s": "assumption: a few microseconds per CUDA kernel under CUDA graphs; "
            "not identifiable from the calibration rows",
            "usable_memory_fraction": "assumption: as vLLM's default gpu_memory_utilization 0.9",
        },
    )
