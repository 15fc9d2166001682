"""`bench_gemm` / `bench_gemv`: the kernel report of SPEC.md §10.3 (keys, identities, unpadded
utilization), functional error against the oracle, points that do not fit, and bad input."""

from __future__ import annotations

import math

import pytest

from waferllm import bench_gemm, bench_gemv
from waferllm.device import tiny, wse2

KEYS = {
    "schema_version",
    "kind",
    "modelled",
    "algo",
    "device",
    "grid",
    "m",
    "k",
    "n",
    "latency_cycles",
    "latency_s",
    "mean_core_cycles",
    "compute_cycles",
    "comm_cycles",
    "overhead_cycles",
    "align_cycles",
    "comm_busy_cycles",
    "utilization",
    "compute_fraction",
    "routes_per_core",
    "peak_sram_bytes_per_core",
    "fits",
    "max_abs_error",
    "host_wall_s",
}


def test_an_estimate_report_has_every_field_and_its_identities_hold():
    report = bench_gemm(algo="meshgemm", grid="6x6", m=100, k=70, n=50, device="tiny")
    data = report.to_dict()
    assert set(data) >= KEYS
    assert data["modelled"] is True and data["kind"] == "gemm" and data["grid"] == [6, 6]
    assert data["max_abs_error"] is None and data["fits"] is True
    parts = report.compute_cycles + report.comm_cycles + report.overhead_cycles
    assert parts == pytest.approx(report.latency_cycles)
    assert report.latency_s == pytest.approx(report.latency_cycles / tiny().clock_hz)
    assert 0 < report.align_cycles < report.latency_cycles
    peak = report.latency_cycles * 36 * tiny().flops_per_cycle_per_core
    assert report.utilization == pytest.approx(2 * 100 * 70 * 50 / peak)  # unpadded sizes
    assert report.compute_fraction == pytest.approx(report.compute_cycles / report.latency_cycles)
    assert report.routes_per_core == 9


@pytest.mark.parametrize("algo", ["meshgemm", "cannon", "summa", "allgather"])
def test_functional_gemm_reports_a_small_error_on_a_non_square_grid(algo):
    report = bench_gemm(algo=algo, grid="3x5", m=20, k=23, n=17, device="tiny", mode="functional")
    assert report.max_abs_error is not None and report.max_rel_error <= 1e-4
    assert report.k == 23  # the report keeps the user's sizes; K padding is internal


def test_functional_float16_error_is_within_1e_2():
    report = bench_gemm(
        algo="meshgemm",
        grid="4",
        m=64,
        k=64,
        n=64,
        device="tiny",
        mode="functional",
        dtype="float16",
    )
    assert report.max_rel_error <= 1e-2


def test_functional_and_estimate_reports_give_the_same_costs():
    kw = dict(algo="cannon", grid="4x2", m=13, k=9, n=11, device="tiny")
    functional, estimate = bench_gemm(**kw, mode="functional"), bench_gemm(**kw)
    for field in ("latency_cycles", "align_cycles", "routes_per_core", "peak_sram_bytes_per_core"):
        assert getattr(functional, field) == getattr(estimate, field)


def test_align_both_times_the_skew_of_b_too():
    kw = dict(algo="meshgemm", grid="8", m=64, k=64, n=64, device="tiny")
    stored, both = bench_gemm(**kw), bench_gemm(**kw, align_both=True)
    assert both.align_cycles > stored.align_cycles
    assert (stored.routes_per_core, both.routes_per_core) == (9, 12)


def test_a_point_that_does_not_fit_is_a_result_saying_what_it_needs():
    report = bench_gemm(algo="allgather", grid="720", m=8192, k=8192, n=8192)
    data = report.to_dict()
    assert data["fits"] is False
    assert data["latency_cycles"] is None and data["utilization"] is None
    needed = int(report.message.removeprefix("does not fit (needs ").split()[0])
    # the strips alone: [Mt, K] and [K, Nt] f16, Mt = Nt = ceil(8192 / 720)
    assert needed >= 2 * math.ceil(8192 / 720) * 8192 * 2 > wse2().sram_bytes_per_core


@pytest.mark.parametrize("algo", ["meshgemv", "pipeline", "ring"])
def test_functional_gemv_reports_a_small_error(algo):
    report = bench_gemv(algo=algo, grid="5x3", m=37, n=29, device="tiny", mode="functional")
    assert (report.kind, report.m, report.k, report.n) == ("gemv", 1, 37, 29)
    assert report.max_rel_error <= 1e-4


def test_gemv_without_broadcast_is_checked_on_the_root_line_and_is_cheaper():
    kw = dict(algo="meshgemv", grid="9", m=90, n=45, device="tiny", mode="functional")
    full, reduced = bench_gemv(**kw), bench_gemv(**kw, broadcast=False)
    assert reduced.max_rel_error <= 1e-4
    assert reduced.latency_cycles < full.latency_cycles


def test_gemv_groups_mean_fanouts_ceil_p_over_g_then_g():
    kw = dict(algo="meshgemv", grid="12", m=120, n=60, device="tiny")
    assert (
        bench_gemv(**kw, groups=3).latency_cycles == bench_gemv(**kw, fanouts=(4, 3)).latency_cycles
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bench_gemm(algo="strassen", grid="4", m=4, k=4, n=4), "meshgemm, cannon"),
        (lambda: bench_gemm(algo="summa", grid="4", m=0, k=4, n=4), "--m must be a positive"),
        (lambda: bench_gemm(algo="summa", grid="4", m=4, k=4, n=4, mode="fast"), "mode"),
        (lambda: bench_gemm(algo="summa", grid="4", m=4, k=4, n=4, dtype="int8"), "dtype"),
        (lambda: bench_gemm(algo="meshgemm", grid="5x7", m=4, k=4, n=4), "nearby grids"),
        (lambda: bench_gemm(algo="summa", grid="4x", m=4, k=4, n=4), "malformed grid"),
        (lambda: bench_gemm(algo="summa", grid="995x4", m=4, k=4, n=4), "does not fit the wse2"),
        (lambda: bench_gemv(algo="meshgemv", grid="4", m=4, n=4, fanouts=(2,), groups=2), "both"),
        (lambda: bench_gemv(algo="ring", grid="4", m=4, n=4, fanouts=(2, 2)), "fan-outs"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_settings_without_effect_warn():
    with pytest.warns(UserWarning, match="f16-accumulate"):
        bench_gemm(algo="summa", grid="2", m=4, k=4, n=4, f16_accumulate=True)
    with pytest.warns(UserWarning, match="align-both"):
        bench_gemm(algo="summa", grid="2", m=4, k=4, n=4, align_both=True)
