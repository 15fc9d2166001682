"""Collectives of the GPU baseline: NCCL-class allreduce time by message size and GPU count.

A latency-bandwidth model per setup: inside one NVLink node, or across nodes over InfiniBand,
with the latency and large-message bus bandwidth of `GpuSpec` (nccl-tests figures). The
serving stack's extra cost per collective is not here (`gpu_stack.py`).
"""

from __future__ import annotations

from waferllm.baselines.gpu_specs import GpuSpec


def ring_bytes_per_gpu(message_bytes: float, num_gpus: int) -> float:
    """Bytes each GPU sends in a ring allreduce of `message_bytes`: 2 (G-1)/G x M (the volume
    nccl-tests' bus bandwidth is defined against)."""
    return 2 * (num_gpus - 1) / num_gpus * message_bytes


def crosses_nodes(num_gpus: int, gpu: GpuSpec) -> bool:
    """Whether tensor parallelism over `num_gpus` spans more than one NVLink node."""
    return num_gpus > gpu.gpus_per_node


def allreduce_seconds(message_bytes: float, num_gpus: int, gpu: GpuSpec) -> float:
    """One allreduce of `message_bytes` over G GPUs, as NCCL reaches it:
    `latency + 2 (G-1)/G x M / bus_bandwidth`, with the NVLink figures inside a node and the
    InfiniBand ones across nodes; zero on one GPU."""
    if num_gpus == 1:
        return 0.0
    if crosses_nodes(num_gpus, gpu):
        latency_s = gpu.internode_allreduce_latency_s
        bus_bytes_per_s = gpu.internode_allreduce_bus_bytes_per_s
    else:
        latency_s = gpu.nvlink_allreduce_latency_s
        bus_bytes_per_s = gpu.nvlink_allreduce_bus_bytes_per_s
    return latency_s + ring_bytes_per_gpu(message_bytes, num_gpus) / bus_bytes_per_s
