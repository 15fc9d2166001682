"""`waferllm reproduce`: artefacts, JSON output and bad input (the reproduction itself is
replaced by a small stand-in: the real one runs in benchmarks/reproduce_paper.py)."""

from __future__ import annotations

import json

import pytest

import waferllm.cli.reproduce as cli_reproduce
from waferllm.api.reproduce import Reproduction
from waferllm.api.tables import Column, Section
from waferllm.cli import main


@pytest.fixture
def stand_in(monkeypatch):
    seen = {}

    def fake(*, device, progress=None):
        seen["device"] = device
        if progress is not None:
            progress(1, 1, "done")
        section = Section(
            key="table6",
            title="Table 6",
            columns=(Column("gemv", "GEMV"), Column("wafer", "wafer (s)", "s")),
            rows=({"gemv": "16K", "wafer": 1.2e-6},),
            notes=("a note",),
        )
        return Reproduction(device=device, sections=(section,), host_wall_s=0.1)

    monkeypatch.setattr(cli_reproduce, "reproduce", fake)
    return seen


def test_tables_are_printed_and_artefacts_written(capsys, tmp_path, stand_in):
    assert main(["reproduce", "--out-dir", str(tmp_path), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "Table 6" in out and "1.2 us" in out and "wrote" in out
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md"]
    assert stand_in["device"].name == "wse2"


def test_json_prints_only_the_record_and_overrides_reach_the_device(capsys, tmp_path, stand_in):
    argv = ["reproduce", "--json", "--no-write", "--out-dir", str(tmp_path)]
    assert main([*argv, "--set", "stage_latency_cycles=20"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "reproduce" and record["sections"]["table6"]["rows"][0]["gemv"]
    assert stand_in["device"].stage_latency_cycles == 20
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "wse9"], "unknown device 'wse9'"),
        (["--set", "nope=1"], "unknown device field 'nope'"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_stderr_line_and_exit_code_2(capsys, stand_in, argv, message):
    assert main(["reproduce", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message in captured.err
