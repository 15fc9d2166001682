"""`waferllm devices` and the CLI's error contract (SPEC.md §9: one stderr line, exit 2)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from waferllm.cli import main
from waferllm.device import PRESETS, Device

FIELDS = {f.name for f in dataclasses.fields(Device)}


def test_devices_json_lists_every_preset_with_every_field(capsys):
    assert main(["devices", "--json"]) == 0
    out, err = capsys.readouterr()
    devices = json.loads(out)
    assert [d["name"] for d in devices] == list(PRESETS)
    for device in devices:
        assert set(device) == FIELDS
        assert Device(**device) == PRESETS[device["name"]]()  # the JSON round-trips
    assert err == ""


def test_devices_prints_a_table_of_the_constants_with_sources(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "stage_latency_cycles" in out and "PAPER.md" in out


def test_devices_shows_one_device_with_overrides_applied(capsys, tmp_path):
    assert main(["devices", "--device", "wse3", "--set", "stage_latency_cycles=12", "--json"]) == 0
    (device,) = json.loads(capsys.readouterr().out)
    assert device["name"] == "wse3" and device["stage_latency_cycles"] == 12.0
    assert device["sources"]["stage_latency_cycles"] == "user override (--set)"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": "tiny", "routes_per_core": 8}))
    assert main(["devices", "--device", str(path), "--json"]) == 0
    (device,) = json.loads(capsys.readouterr().out)
    assert (device["name"], device["routes_per_core"]) == ("mine", 8)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["devices", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["devices", "--device", "wse9"], "unknown device 'wse9'; presets: wse2, wse3, tiny"),
        (["devices", "--device", "missing.json"], "cannot read device file"),
        (["devices", "--device", "tiny", "--set", "bogus=1"], "unknown device field 'bogus'"),
        (["devices", "--device", "tiny", "--set", "mesh_rows=inf"], "finite"),
        (["devices", "--device", "tiny", "--set", "mesh_rows"], "key=value"),
        (["devices", "--set", "mesh_rows=3"], "--set needs --device"),
    ],
)
def test_user_errors_are_one_stderr_line_exit_2_and_nothing_on_stdout(capsys, argv, needle):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("waferllm: error: ")
    assert needle in err


def test_python_dash_m_waferllm_reports_a_bad_device_the_same_way():
    proc = subprocess.run(
        [sys.executable, "-m", "waferllm", "devices", "--device", "wse9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "waferllm: error: unknown device 'wse9'; presets: wse2, wse3, tiny (or a JSON file)"
    ]
