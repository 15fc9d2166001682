"""Dense single-device oracles for the mesh kernels, and how results are compared with them.

Every mesh kernel's output must equal its oracle here within dtype tolerance (SPEC.md §8).
Oracles compute in float64 from the operands as the mesh saw them (already rounded to the
compute dtype), so the comparison measures the kernel's own error only. No mesh, no cost.
"""

from __future__ import annotations

import dataclasses

import torch

from waferllm.errors import WaferError


def gemm_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = A @ B over the last two dims, leading dims broadcast (meshgemm, cannon, summa,
    allgather)."""
    return a.double() @ b.double()


def gemm_t_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = A @ B^T over the last two dims (dist-GEMM-T)."""
    return a.double() @ b.double().transpose(-1, -2)


def gemv_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y = x W for x [..., K] and W [K, N] (meshgemv, pipeline, ring)."""
    return x.double() @ w.double()


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How far a result is from its oracle: `max_abs_error`, and that error over the oracle's
    largest magnitude (`relative_error`, the tolerance SPEC.md §8 states)."""

    max_abs_error: float
    scale: float

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / self.scale if self.scale > 0 else self.max_abs_error


def compare(actual: torch.Tensor, expected: torch.Tensor) -> Comparison:
    """Max |actual - expected| and max |expected| (shapes must match)."""
    if actual.shape != expected.shape:
        raise WaferError(f"result shape {tuple(actual.shape)} != oracle {tuple(expected.shape)}")
    if actual.numel() == 0:
        return Comparison(0.0, 0.0)
    diff = (actual.double() - expected.double()).abs().max().item()
    return Comparison(float(diff), float(expected.double().abs().max().item()))
