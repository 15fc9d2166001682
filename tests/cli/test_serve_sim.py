"""`waferllm serve-sim`: JSON and human output, and every user error as one stderr line, exit 2."""

from __future__ import annotations

import json

import pytest

from waferllm.cli import main

BASE = ["serve-sim", "--model", "tiny", "--device", "tiny"]
POISSON = ["--rate", "500", "--num-requests", "12", "--prompt-len", "16", "--output-len", "4"]


def test_json_output_is_only_the_serving_report(capsys):
    assert main([*BASE, *POISSON, "--max-batch", "4", "--slo-ttft", "0.01", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["kind"] == "serve-sim" and report["modelled"] is True
    assert report["num_requests"] == 12 and report["slo"]["ttft_s"] == 0.01
    assert "--max-batch 4" in report["provenance"]["command"]
    assert captured.err == ""  # batched wafer steps: no warning left


def test_gpu_runs_the_same_requests_and_reports_the_gpus(capsys):
    argv = ["serve-sim", "--model", "llama3-8b", *POISSON, "--gpu", "a100", "--num-gpus", "8"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["gpu"] == "8x a100" and report["num_requests"] == 12
    assert captured.err == ""


def test_human_output_is_a_table_labelled_modelled(capsys, tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"arrival_s": 0, "prompt_len": 8, "output_len": 3}\n')
    assert main([*BASE, "--requests", str(trace), "--max-batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "modelled" in out and "TTFT" in out and "p99" in out and "goodput" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*BASE, "--rate", "0", *POISSON[2:]], "rate=0.0 must be a positive number"),
        ([*BASE, "--rate", "-2", *POISSON[2:]], "rate=-2.0 must be a positive number"),
        ([*BASE, "--rate", "5", "--num-requests", "3"], "missing prompt_len, output_len"),
        ([*BASE, *POISSON, "--requests", "x.jsonl"], "not allowed with argument"),
        ([*BASE], "one of the arguments --requests --rate is required"),
        ([*BASE, *POISSON, "--slo-tpot", "-1"], "expected a positive number, got '-1'"),
        ([*BASE, *POISSON, "--mode", "pipelined"], "invalid choice: 'pipelined'"),
        ([*BASE, *POISSON, "--max-batch", "0"], "expected a positive integer"),
        ([*BASE, *POISSON, "--gpu", "h100", "--mode", "disaggregated"], "for the wafer only"),
        ([*BASE, *POISSON, "--gpu", "v100"], "unknown GPU 'v100'"),
        ([*BASE, *POISSON, "--seed", "-1"], "seed=-1 must be an integer >= 0"),
        ([*BASE, "--rate", "nan", *POISSON[2:]], "rate=nan must be a positive number"),
        (["serve-sim", "--model", "llama9", *POISSON], "llama9"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "trace.jsonl:2: empty line"),
        ('{"arrival_s": 1, "prompt_len": 4,', "trace.jsonl:2: malformed JSON"),
        ('{"arrival_s": -3, "prompt_len": 4, "output_len": 2}', ":2: arrival_s=-3 must be"),
        ('{"arrival_s": 1, "prompt_len": 0, "output_len": 2}', ":2: prompt_len=0 must be"),
        ('{"arrival_s": 1, "prompt_len": 4, "output_len": 2.5}', ":2: output_len=2.5 is not"),
    ],
)
def test_a_bad_trace_line_is_named_in_one_line_with_exit_2(capsys, tmp_path, line, message):
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"arrival_s": 0, "prompt_len": 4, "output_len": 2}\n' + line + "\n")
    assert main([*BASE, "--requests", str(trace)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
