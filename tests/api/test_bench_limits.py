"""`bench` refuses up front what it cannot run (issue 11 #2): sizes beyond the supported
dimension, and functional runs whose operands would not fit in host memory (estimate mode
holds shapes only and is never refused for memory)."""

from __future__ import annotations

import pytest

from waferllm.api import bench
from waferllm.errors import WaferError


def test_sizes_beyond_the_supported_dimension_are_refused():
    with pytest.raises(WaferError, match=r"--m=1000000000000000 is larger than the supported"):
        bench.bench_gemm(algo="meshgemm", grid=4, m=10**15, k=8, n=8)


def test_a_functional_run_that_would_not_fit_host_memory_is_refused_with_an_estimate(monkeypatch):
    monkeypatch.setattr(bench, "available_host_bytes", lambda: 10**9)
    with pytest.raises(WaferError, match=r"needs about .* GB of host memory .* --mode estimate"):
        bench.bench_gemm(
            algo="meshgemm", grid=64, m=32768, k=32768, n=32768, mode="functional", device="tiny"
        )
    with pytest.raises(WaferError, match="gemv .* GB of host memory"):
        bench.bench_gemv(algo="meshgemv", grid=4, m=1 << 20, n=1 << 20, mode="functional")
    report = bench.bench_gemm(algo="meshgemm", grid=8, m=8192, k=8192, n=8192)  # estimate mode
    assert report.mode == "estimate"
