"""The baselines behind the public surface: `estimate(system=...)`, `waferllm estimate
--system`, `bench --algo t10|ladder` and reproduce's baseline tables."""

from __future__ import annotations

import json

import pytest
from helpers.traces import assert_chrome_trace, assert_tracks_add_up

import waferllm
from waferllm.api.bench import bench_gemm, bench_gemv
from waferllm.cli import main
from waferllm.errors import WaferError
from waferllm.model.config_sources import load_config


@pytest.mark.parametrize("system", ["t10", "ladder"])
def test_estimate_reports_a_baseline_in_the_request_schema(system):
    est = waferllm.estimate(
        "tiny",
        device="tiny",
        prompt_len=12,
        output_len=4,
        prefill_grid=4,
        decode_grid=4,
        system=system,
    )
    report = est.to_dict()
    assert report["system"] == system and report["kind"] == "estimate"
    assert report["placement"] == "per-layer" and report["prefill_grid"] == [4, 4]
    assert report["metrics"]["ttft_s"] > 0 and report["metrics"]["tpot_s"] > 0
    assert report["breakdown"]["decode"]["steps"] == 3


def test_waferllm_reports_say_their_system_is_waferllm_by_default():
    est = waferllm.estimate(
        "tiny", device="tiny", prompt_len=12, output_len=4, prefill_grid=4, decode_grid=4
    )
    assert est.to_dict()["system"] == "waferllm"  # SPEC.md §10.4: every report names it


def test_an_unknown_system_is_a_user_error():
    with pytest.raises(WaferError, match="system"):
        waferllm.estimate(
            "tiny",
            device="tiny",
            prompt_len=4,
            output_len=2,
            prefill_grid=2,
            decode_grid=2,
            system="tpu",
        )


def test_cli_estimate_takes_system(capsys):
    argv = [
        "estimate",
        "--model",
        "tiny",
        "--device",
        "tiny",
        "--prompt-len",
        "12",
        "--output-len",
        "4",
        "--prefill-grid",
        "4",
        "--decode-grid",
        "4",
        "--system",
        "ladder",
        "--json",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["system"] == "ladder"


@pytest.mark.parametrize("system", ["t10", "ladder"])
def test_a_baseline_report_carries_the_same_provenance_and_warnings_as_waferllms(system):
    def report(**kw: object) -> dict:
        return waferllm.estimate(
            "tiny", device="tiny", prompt_len=12, output_len=4, prefill_grid=4, decode_grid=4, **kw
        ).to_dict()

    ours, theirs = report(), report(system=system)
    assert theirs["warnings"] == [] and theirs["provenance"] is not None
    assert theirs["provenance"].keys() == ours["provenance"].keys()
    assert theirs["provenance"]["device_constants"] == ours["provenance"]["device_constants"]
    assert theirs["sram_used_fraction"] > 0


def test_a_baseline_past_the_trained_context_warns_in_its_report():
    too_long = load_config("tiny").max_position_embeddings + 1
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        est = waferllm.estimate(
            "tiny",
            device="tiny",
            prompt_len=too_long,
            output_len=2,
            prefill_grid=4,
            decode_grid=4,
            system="t10",
        )
    assert any("max_position_embeddings" in w for w in est.to_dict()["warnings"])


@pytest.mark.parametrize("system", ["t10", "ladder"])
def test_cli_estimate_traces_a_baseline_whose_tracks_sum_to_its_phase_times(
    system, tmp_path, capsys
):
    path = tmp_path / "trace.json"
    argv = ["estimate", "--model", "tiny", "--device", "tiny", "--prompt-len", "12"]
    argv += ["--output-len", "4", "--prefill-grid", "4", "--decode-grid", "4"]
    argv += ["--system", system, "--json", "--trace", str(path)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    trace = json.loads(path.read_text())
    assert_chrome_trace(trace)
    assert_tracks_add_up(trace, report["breakdown"])
    assert trace["otherData"]["provenance"] == report["provenance"]


@pytest.mark.parametrize("algo", ["t10", "ladder"])
def test_bench_runs_the_baselines_functionally_against_the_dense_reference(algo):
    gemm = bench_gemm(algo=algo, grid="4", m=20, k=24, n=28, device="tiny", mode="functional")
    gemv = bench_gemv(algo=algo, grid="4", m=24, n=28, device="tiny", mode="functional")
    for report in (gemm, gemv):
        assert report.fits and report.max_abs_error is not None
        assert report.max_abs_error < 1e-4 and report.latency_cycles > 0


def test_bench_t10_on_the_full_wafer_relays_within_the_route_budget():
    report = bench_gemm(algo="t10", grid="720", m=4096, k=4096, n=4096)
    assert report.fits and report.routes_per_core <= 21
