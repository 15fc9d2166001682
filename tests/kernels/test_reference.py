"""The dense oracles: each equals the textbook definition computed independently, in float64,
with the broadcasting the mesh kernels rely on; `compare` reports absolute and relative error."""

from __future__ import annotations

import pytest
import torch

from waferllm.kernels.reference import (
    compare,
    gemm_reference,
    gemm_t_reference,
    gemv_reference,
)


def _loops(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C[i, j] = sum_k A[i, k] B[k, j], written out."""
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(float(a[i, k]) * float(b[k, j]) for k in range(a.shape[1]))
    return out


def test_gemm_reference_is_the_sum_over_k_in_float64():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=gen), torch.randn(5, 4, generator=gen)
    got = gemm_reference(a, b)
    assert got.dtype == torch.float64
    assert torch.allclose(got, _loops(a, b), rtol=0, atol=1e-12)


def test_gemm_reference_broadcasts_leading_batch_dims():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 5, generator=gen), torch.randn(5, 4, generator=gen)
    got = gemm_reference(a, b)
    assert got.shape == (2, 3, 4)
    for i in range(2):
        assert torch.allclose(got[i], _loops(a[i], b), rtol=0, atol=1e-12)


def test_gemm_t_reference_multiplies_by_the_transpose_with_shared_heads():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 4, 6, generator=gen), torch.randn(1, 5, 6, generator=gen)
    got = gemm_t_reference(q, k)
    assert got.shape == (3, 4, 5)
    for h in range(3):
        assert torch.allclose(got[h], _loops(q[h], k[0].T), rtol=0, atol=1e-12)


def test_gemv_reference_is_a_row_vector_times_a_matrix():
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(6, generator=gen), torch.randn(6, 4, generator=gen)
    got = gemv_reference(x, w)
    assert got.shape == (4,)
    assert torch.allclose(got, _loops(x[None, :], w)[0], rtol=0, atol=1e-12)


def test_compare_reports_the_largest_error_and_the_output_scale():
    expected = torch.tensor([[1.0, -4.0], [2.0, 0.5]], dtype=torch.float64)
    actual = torch.tensor([[1.0, -3.5], [2.25, 0.5]])
    result = compare(actual, expected)
    assert result.max_abs_error == 0.5
    assert result.scale == 4.0
    assert result.relative_error == 0.125


def test_compare_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        compare(torch.zeros(2, 3), torch.zeros(3, 2))
