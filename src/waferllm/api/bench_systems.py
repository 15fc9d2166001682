"""The paper's wafer-side baselines as `bench` algorithms (`--algo t10|ladder`): adapters from
the bench's calls to `kernels.t10` and `kernels.ladder` with the baselines' fitted constants
(`estimate.systems`). Nothing here prices anything.
"""

from __future__ import annotations

from typing import Any

import torch

from waferllm.estimate.systems import ladder_constants, t10_constants
from waferllm.kernels.ladder import ladder_gemm, ladder_gemv
from waferllm.kernels.result import KernelResult
from waferllm.kernels.t10 import t10_gemm, t10_gemv, t10_load_weights
from waferllm.mesh.cost import Ledger
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh

SYSTEM_ALGOS = ("t10", "ladder")


def _ladder_gemm(mesh: Mesh, *, a: DistTensor, b: DistTensor, ledger: Ledger) -> KernelResult:
    return ladder_gemm(mesh, a=a, b=b, ledger=ledger, span_fraction=ladder_constants().prefill_span)


def _t10_gemv(
    mesh: Mesh, *, x: DistTensor, w: DistTensor, ledger: Ledger, **_: Any
) -> KernelResult:
    """T10's GEMV (fan-in and multicast; the K-tree's options do not apply)."""
    c_p = t10_constants().per_partial_cycles
    return t10_gemv(mesh, x=x, w=w, ledger=ledger, per_partial_cycles=c_p)


def _ladder_gemv(
    mesh: Mesh, *, x: DistTensor, w: DistTensor, ledger: Ledger, **_: Any
) -> KernelResult:
    return ladder_gemv(mesh, x=x, w=w, ledger=ledger, span_fraction=ladder_constants().decode_span)


SYSTEM_GEMM_KERNELS = {"t10": t10_gemm, "ladder": _ladder_gemm}
SYSTEM_GEMV_KERNELS = {"t10": _t10_gemv, "ladder": _ladder_gemv}


def system_weights(mesh: Mesh, host_b: torch.Tensor, *, algo: str) -> DistTensor | None:
    """B stored as the baseline stores weights: T10 pre-skews them (untimed, like MeshGEMM);
    None for Ladder (the plain layout: its unified memory reads any)."""
    return t10_load_weights(mesh, host_b) if algo == "t10" else None
