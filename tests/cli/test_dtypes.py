"""`--weight-dtype` and `--kv-dtype` on estimate and generate (SPEC.md §1, §10.2)."""

from __future__ import annotations

import json

import pytest

from waferllm.cli import main

ESTIMATE = ["estimate", "--model", "tiny", "--device", "tiny", "--prompt-len", "16",
            "--output-len", "4", "--prefill-grid", "8", "--decode-grid", "8"]  # fmt: skip


def test_estimate_reports_the_stored_dtypes_in_its_json(capsys):
    assert main([*ESTIMATE, "--weight-dtype", "int4", "--kv-dtype", "int8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["weight_dtype"], report["kv_dtype"]) == ("int4", "int8")
    assert "--weight-dtype int4" in report["provenance"]["command"]


def test_estimate_prints_a_line_naming_compressed_storage(capsys):
    assert main([*ESTIMATE, "--weight-dtype", "int8"]) == 0
    assert "stored compressed: weights int8, KV cache float16" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--weight-dtype", "int3", "invalid choice"), ("--kv-dtype", "fp8", "fp8 is not modelled")],
)
def test_a_bad_dtype_is_one_line_and_exit_2(capsys, flag, value, message):
    assert main([*ESTIMATE, flag, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message in captured.err


def test_generate_runs_int4_weights_and_reports_them(checkpoint_factory, capsys):
    path = checkpoint_factory("llama")
    args = ["generate", "--model", str(path), "--prompt-ids", "0,37,102", "--grid", "3",
            "--max-new-tokens", "3", "--weight-dtype", "int4", "--kv-dtype", "int4",
            "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["weight_dtype"], report["kv_dtype"]) == ("int4", "int4")
    assert len(report["token_ids"]) == 3
