"""`waferllm estimate --num-devices N|auto` and the sweep's `num_devices` key (SPEC.md §10.10,
§10.14): a pipeline over linked devices, one-line errors, rows without errors."""

from __future__ import annotations

import json

import pytest

from waferllm.api.sweep import sweep
from waferllm.cli import main

# a 4 x 4-core tiny on which the 2-layer tiny model needs two devices (one layer each)
SMALL = ["--device", "tiny", "--set", "mesh_rows=4", "--set", "mesh_cols=4",
         "--set", "sram_bytes_per_core=16384"]  # fmt: skip
BASE = ["estimate", "--model", "tiny", *SMALL, "--prompt-len", "12", "--output-len", "4",
        "--prefill-grid", "4", "--decode-grid", "4"]  # fmt: skip


@pytest.mark.parametrize("count", ["2", "auto"])
def test_json_reports_the_devices_and_the_link(capsys, count):
    assert main([*BASE, "--num-devices", count, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_devices"] == 2
    link = report["breakdown"]["pipeline"]["system_link"]
    assert link["prefill"]["transfers"] == 1 and link["decode"]["transfers"] == 3
    assert report["provenance"]["device_constants"]["system_link_bytes_per_s"] == 150e9


def test_human_output_shows_the_pipeline_table(capsys):
    assert main([*BASE, "--num-devices", "2", "--set", "system_link_latency_s=1e-5"]) == 0
    out = capsys.readouterr().out
    assert "Pipeline over 2 linked devices" in out and "10.000 us per transfer" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs 2 linked tiny wafers; use --num-devices 2 (or auto)"),
        (["--num-devices", "0"], "--num-devices"),
        (["--num-devices", "two"], "--num-devices"),
        (["--num-devices", "2", "--placement", "per-layer"], "needs placement fit"),
    ],
)
def test_a_model_too_large_and_bad_counts_are_one_stderr_line_exit_2(capsys, extra, message):
    assert main([*BASE, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message in captured.err


def test_the_sweeps_num_devices_key_runs_the_pipeline(tmp_path):
    axes = {
        "model": "tiny",
        "device": "tiny",
        "device.mesh_rows": 4,
        "device.mesh_cols": 4,
        "device.sram_bytes_per_core": 16384,
        "prompt_len": 12,
        "output_len": 4,
        "prefill_grid": 4,
        "decode_grid": 4,
        "num_devices": [1, 2],
    }
    one, two = sweep(axes, out=tmp_path, workers=1, plots=False, cache=False).rows
    assert "needs 2 linked tiny wafers" in one["error"]
    assert two["error"] is None and two["num_devices"] == "2" and two["ttft_s"] > 0
    assert two["num_devices_used"] == 2  # the input column is text: a count or "auto"
