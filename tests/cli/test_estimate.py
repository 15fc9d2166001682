"""`waferllm estimate`: the report as JSON or tables, and every user error as one stderr line."""

from __future__ import annotations

import json

import pytest

from waferllm.cli import main
from waferllm.device import tiny

BASE = ["estimate", "--model", "tiny", "--device", "tiny", "--prompt-len", "12"]
GRIDS = ["--prefill-grid", "4", "--decode-grid", "3x4"]


def test_json_output_is_only_the_request_report(capsys):
    assert main([*BASE, "--output-len", "6", *GRIDS, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["kind"] == "estimate" and report["modelled"] is True
    assert report["prefill_grid"] == [4, 4] and report["decode_grid"] == [3, 4]
    assert report["metrics"]["tpot_s"] > 0 and report["breakdown"]["decode"]["steps"] == 5
    assert captured.err == ""  # grids given: no search, no progress bar


def test_human_output_shows_metrics_placement_time_split_and_capacity(capsys):
    argv = [*BASE, "--output-len", "6", *GRIDS, "--placement", "per-layer", "--kv-cache", "concat"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in (
        "per-layer extrapolation",
        "modelled estimate",
        "TTFT",
        "end-to-end TPR",
        "Placement (per-layer",
        "layers per region",
        "Where the time goes",
        "time by op",
        "KV cache",
        "shift",
        "concat",
    ):
        assert text in out, text


def test_a_searched_grid_is_reported_with_the_objective(capsys):
    six = ["--set", "mesh_rows=6", "--set", "mesh_cols=6"]
    assert main([*BASE, "--output-len", "3", *six]) == 0
    out = capsys.readouterr().out
    assert "grid search: prefill" in out and "TTFT + transition + decode" in out


def test_a_device_file_and_overrides_are_honoured(capsys, tmp_path):
    path = tmp_path / "half.json"
    path.write_text(json.dumps({"base": "tiny", "clock_hz": tiny().clock_hz / 2}))
    argv = [*BASE, "--output-len", "2", *GRIDS, "--json"]
    assert main([*argv[:4], str(path), *argv[5:]]) == 0
    slow = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    fast = json.loads(capsys.readouterr().out)
    assert slow["metrics"]["ttft_s"] == pytest.approx(2 * fast["metrics"]["ttft_s"])
    assert slow["device"] == "half"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output-len", "0"], "positive integer"),
        (["--output-len", "two"], "positive integer"),
        (["--output-len", "4", "--prefill-grid", "4x"], "malformed grid"),
        (["--output-len", "4", "--decode-grid", "0"], "at least one row"),
        (["--output-len", "4", "--prefill-grid", "65"], "larger than the tiny mesh"),
        (["--output-len", "4", "--placement", "spread"], "invalid choice: 'spread'"),
        (["--output-len", "4", "--kv-cache", "paged"], "invalid choice: 'paged'"),
        (["--output-len", "4", "--resident-layouts", "three"], "invalid choice: 'three'"),
        (["--output-len", "4", "--set", "beta=3"], "unknown device field 'beta'"),
        (["--output-len", "4", "--set", "clock_hz"], "key=value"),
    ],
)
def test_user_errors_are_one_stderr_line_and_exit_code_2(capsys, extra, message):
    assert main([*BASE, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("waferllm: error: ")
    assert message in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "llama9", "--device", "tiny"], "llama9"),
        (["--model", "tiny", "--device", "wse9"], "unknown device 'wse9'"),
        (["--model", "llama3-70b", "--device", "wse2"], "wafers"),
    ],
)
def test_unknown_names_and_a_model_too_large_for_the_wafer_are_clear_errors(capsys, argv, message):
    assert main(["estimate", *argv, "--prompt-len", "64", "--output-len", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message in captured.err


def test_a_checkpoint_directory_is_read_for_its_config(capsys, llama_checkpoint):
    argv = ["estimate", "--model", str(llama_checkpoint), "--device", "tiny", *GRIDS]
    assert main([*argv, "--prompt-len", "8", "--output-len", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == llama_checkpoint.name
