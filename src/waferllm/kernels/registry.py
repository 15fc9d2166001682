"""The kernels by name: the one place the CLI, the API and the benchmarks read kernel names from.

`GEMM_KERNELS` and `GEMV_KERNELS` map the names of SPEC.md §1.1's `bench gemm/gemv --algo` to
the functions (one signature each); `store_b_for` stores a GEMM's weights the way its kernel
expects them. Every other list of kernel names is derived from these dicts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from waferllm.errors import WaferError
from waferllm.kernels.gemm import cannon, meshgemm, prealign_b
from waferllm.kernels.gemm_bcast import allgather_gemm, summa
from waferllm.kernels.gemv import meshgemv, pipeline_gemv, ring_gemv
from waferllm.kernels.result import KernelResult
from waferllm.mesh.geometry import RingKind
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh

Kernel = Callable[..., KernelResult]

GEMM_KERNELS: dict[str, Kernel] = {
    "meshgemm": meshgemm,
    "cannon": cannon,
    "summa": summa,
    "allgather": allgather_gemm,
}
GEMV_KERNELS: dict[str, Kernel] = {
    "meshgemv": meshgemv,
    "pipeline": pipeline_gemv,
    "ring": ring_gemv,
}
# The ring GEMMs take their weights pre-skewed for their ring.
WEIGHT_SKEW = {"meshgemm": RingKind.INTERLEAVED, "cannon": RingKind.PLAIN}


def store_b_for(
    mesh: Mesh,
    host_b: torch.Tensor,
    *,
    algo: str,
    name: str = "b",
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> DistTensor:
    """Store B[K, N] as GEMM kernel `algo` expects its weights: pre-skewed for the ring kernels
    (untimed, like the public code's host-side skew), the plain block layout otherwise.
    Compressed weights (`stored`) are for the ring kernels, which dequantise them."""
    if algo not in GEMM_KERNELS:
        raise WaferError(f"unknown GEMM algorithm {algo!r}; choose from {', '.join(GEMM_KERNELS)}")
    if algo in WEIGHT_SKEW:
        return prealign_b(mesh, host_b, name=name, kind=WEIGHT_SKEW[algo], stored=stored)
    if stored.compressed:
        raise WaferError(
            f"compressed weights ({stored.value}) are modelled for "
            f"{', '.join(WEIGHT_SKEW)} and the GEMVs only, not {algo}"
        )
    nd = host_b.dim()
    return mesh.scatter(host_b, Layout(tuple(host_b.shape), y_dim=nd - 2, x_dim=nd - 1), name)
