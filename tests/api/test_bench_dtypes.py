"""`bench --weight-dtype`: the weight operand stored compressed (SPEC.md §10.2)."""

from __future__ import annotations

import pytest

from waferllm.api.bench import bench_gemm, bench_gemv
from waferllm.errors import WaferError


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_compressed_gemv_matches_the_oracle_on_the_same_dequantised_weights(dtype):
    plain = bench_gemv(algo="meshgemv", grid="3x4", m=100, n=90, mode="functional")
    packed = bench_gemv(
        algo="meshgemv", grid="3x4", m=100, n=90, mode="functional", weight_dtype=dtype
    )
    assert packed.max_rel_error is not None and packed.max_rel_error < 1e-5
    assert packed.compute_cycles > plain.compute_cycles  # the dequantisation
    assert packed.comm_cycles == plain.comm_cycles  # only partial sums travel


def test_a_compressed_meshgemm_weight_moves_fewer_bytes_and_holds_less_sram():
    kwargs = dict(algo="meshgemm", grid=4, m=64, k=256, n=512, mode="functional")
    plain, packed = bench_gemm(**kwargs), bench_gemm(**kwargs, weight_dtype="int4")
    assert packed.max_rel_error is not None and packed.max_rel_error < 1e-5
    assert packed.comm_busy_cycles < plain.comm_busy_cycles
    assert packed.peak_sram_bytes_per_core < plain.peak_sram_bytes_per_core


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bench_gemm(algo="summa", grid=4, m=8, k=8, n=8, weight_dtype="int8"), "summa"),
        (
            lambda: bench_gemm(
                algo="meshgemm", grid=4, m=8, k=8, n=8, weight_dtype="int8", align_both=True
            ),
            "align-both",
        ),  # fmt: skip
        (lambda: bench_gemv(algo="meshgemv", grid=4, m=8, n=8, weight_dtype="int2"), "int2"),
    ],
)
def test_compressed_weights_where_they_are_not_modelled_are_user_errors(call, message):
    with pytest.raises(WaferError, match=message):
        call()
