"""`waferllm gpu`: JSON and human output, and every user error as one stderr line, exit 2."""

from __future__ import annotations

import json

import pytest

from waferllm.cli import main

BASE = ["gpu", "--model", "llama3-8b", "--prompt-len", "256", "--output-len", "16"]


def test_json_output_is_only_the_request_report(capsys):
    assert main([*BASE, "--gpu", "h100", "--num-gpus", "8", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["kind"] == "gpu" and report["modelled"] is True
    assert report["prefill_grid"] is None and report["decode_grid"] is None
    assert report["device"] == "8x h100"
    assert report["metrics"]["energy_j"] > 0
    assert report["breakdown"]["prefill"]["time_s"] == pytest.approx(report["metrics"]["ttft_s"])
    assert captured.err == ""


def test_human_output_is_a_table_labelled_modelled(capsys):
    assert main([*BASE, "--num-gpus", "16"]) == 0
    out = capsys.readouterr().out
    assert "modelled" in out and "TTFT" in out and "decode TPR" in out
    assert "InfiniBand" in out  # two nodes: the assumed interconnect is named


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gpu", "--model", "llama9", "--prompt-len", "8", "--output-len", "8"], "llama9"),
        ([*BASE, "--gpu", "v100"], "invalid choice: 'v100'"),
        ([*BASE, "--num-gpus", "4"], "invalid choice: 4"),
        ([*BASE, "--num-gpus", "two"], "invalid int value"),
        (["gpu", "--model", "tiny", "--prompt-len", "0", "--output-len", "8"], "positive integer"),
        (["gpu", "--model", "tiny", "--prompt-len", "8", "--output-len", "x"], "positive integer"),
        ([*BASE, "--stack", "sglang"], "invalid choice: 'sglang'"),
        ([*BASE, "--batch-size", "0"], "positive integer"),
        (
            [
                "gpu",
                "--model",
                "qwen2.5-7b",
                "--num-gpus",
                "8",
                "--prompt-len",
                "8",
                "--output-len",
                "8",
            ],
            "num_attention_heads (28) divisible by 8",
        ),
        (
            ["gpu", "--model", "llama3-70b", "--prompt-len", "8", "--output-len", "8"],
            "does not fit on 1 a100 (needs >= ",
        ),
    ],
)
def test_user_errors_are_one_stderr_line_and_exit_code_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("waferllm: error: ")
    assert message in captured.err


def test_stack_and_batch_size_reach_the_report(capsys):
    argv = [*BASE, "--num-gpus", "8", "--stack", "ideal", "--batch-size", "4", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["breakdown"]["stack"]["stack"] == "ideal"
    assert report["breakdown"]["batch_size"] == 4
    assert report["breakdown"]["prefill"]["stack_s"] == 0.0


def test_a_request_past_the_trained_context_runs_and_warns_on_stderr(capsys):
    argv = ["gpu", "--model", "tiny", "--prompt-len", "500", "--output-len", "100", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["kind"] == "gpu"
    assert captured.err.count("\n") == 1 and "warning:" in captured.err
    assert "max_position_embeddings" in captured.err


def test_a_local_checkpoint_directory_is_read_for_its_config(capsys, llama_checkpoint):
    argv = ["gpu", "--model", str(llama_checkpoint), "--prompt-len", "8", "--output-len", "4"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == llama_checkpoint.name
    assert report["metrics"]["tpot_s"] > 0
