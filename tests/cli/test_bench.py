"""`waferllm bench gemm|gemv`: JSON and human output, points that do not fit (exit 0), and every
user error as one stderr line with exit code 2 (SPEC.md §9, §10.3)."""

from __future__ import annotations

import json

import pytest

from waferllm.cli import main

GEMM = ["bench", "gemm", "--algo", "meshgemm", "--m", "40", "--k", "30", "--n", "20"]
GEMV = ["bench", "gemv", "--m", "40", "--n", "20"]


def test_json_output_is_only_the_kernel_report(capsys):
    assert main([*GEMM, "--grid", "4x4", "--device", "tiny", "--mode", "functional", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["kind"] == "gemm" and report["modelled"] is True and report["fits"] is True
    assert report["grid"] == [4, 4] and (report["m"], report["k"], report["n"]) == (40, 30, 20)
    assert report["max_abs_error"] < 1e-3
    assert captured.err == ""


def test_human_output_is_a_table_labelled_modelled(capsys):
    assert main([*GEMM, "--grid", "8", "--set", "step_overhead_cycles=3"]) == 0
    out = capsys.readouterr().out
    assert "modelled" in out and "latency" in out and "routes per core" in out
    assert "720" not in out and "8x8 cores of wse2" in out


def test_gemv_options_reach_the_kernel(capsys):
    argv = [*GEMV, "--grid", "9", "--device", "tiny", "--json"]
    assert main([*argv, "--groups", "3"]) == 0
    grouped = json.loads(capsys.readouterr().out)
    assert main([*argv, "--fanouts", "3,3", "--no-broadcast"]) == 0
    reduced = json.loads(capsys.readouterr().out)
    assert grouped["kind"] == "gemv" and grouped["k"] == 40 and grouped["m"] == 1
    assert reduced["latency_cycles"] < grouped["latency_cycles"]


def test_a_point_that_does_not_fit_prints_what_it_needs_and_exits_0(capsys):
    argv = ["bench", "gemm", "--algo", "allgather", "--grid", "720"]
    assert main([*argv, "--m", "8192", "--k", "8192", "--n", "8192"]) == 0
    assert "does not fit (needs " in capsys.readouterr().out
    assert main([*argv, "--m", "8192", "--k", "8192", "--n", "8192", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is False and report["latency_s"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*GEMM, "--grid", "3x"], "malformed grid '3x'"),
        ([*GEMM, "--grid", "1000"], "does not fit the wse2 mesh"),
        (["bench", "gemm", "--grid", "4", "--m", "0", "--k", "1", "--n", "1"], "positive integer"),
        (["bench", "gemm", "--grid", "4", "--m", "-3", "--k", "1", "--n", "1"], "positive integer"),
        ([*GEMM, "--grid", "5x7"], "nearby grids that work"),
        ([*GEMM, "--grid", "4", "--algo", "strassen"], "invalid choice"),
        ([*GEMV, "--grid", "4", "--groups", "2", "--fanouts", "2,2"], "not allowed with"),
        ([*GEMV, "--grid", "4", "--algo", "pipeline", "--fanouts", "2,2"], "fan-outs"),
        ([*GEMV, "--grid", "4", "--fanouts", "2,x"], "positive integer"),
        ([*GEMM, "--grid", "4", "--device", "wse9"], "unknown device"),
    ],
)
def test_user_errors_are_one_stderr_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
