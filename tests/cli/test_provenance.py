"""Every JSON report says how it was made (SPEC.md §10.4 `provenance`, `warnings` and the other
keys); `--set` shows in the device constants and as a "what-if:" line; `--version`; `--trace`."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest

from waferllm.api.provenance import config_sha256, package_commit
from waferllm.cli import main
from waferllm.device import tiny
from waferllm.model.config_sources import load_config

REPO = Path(__file__).resolve().parents[2]
ESTIMATE = ["estimate", "--model", "tiny", "--device", "tiny", "--prompt-len", "12"]
ESTIMATE += ["--output-len", "4", "--prefill-grid", "4", "--decode-grid", "3x4"]
BENCH = ["bench", "gemm", "--algo", "summa", "--grid", "4", "--m", "8", "--k", "8", "--n", "8"]
BENCH += ["--device", "tiny"]
GPU = ["gpu", "--model", "llama3-8b", "--gpu", "a100", "--num-gpus", "8"]
GPU += ["--prompt-len", "128", "--output-len", "8"]
SPEC_KEYS = {"version", "commit", "command", "device_constants", "model_config_sha256"}


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[dict, str]:
    assert main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_the_commit_is_git_head_of_this_checkout():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (package_commit() or "").removesuffix("-dirty") == head


def test_an_estimate_report_records_its_provenance_and_the_spec_keys(capsys):
    report, err = _json(capsys, [*ESTIMATE, "--json"])
    provenance = report["provenance"]
    assert set(provenance) == SPEC_KEYS
    assert provenance["version"] == "0.1.0" and provenance["commit"] == package_commit()
    assert provenance["command"] == "waferllm " + " ".join([*ESTIMATE, "--json"])
    assert provenance["device_constants"] == json.loads(json.dumps(tiny().to_dict()))
    assert provenance["model_config_sha256"] == config_sha256(load_config("tiny"))
    assert re.fullmatch(r"[0-9a-f]{64}", provenance["model_config_sha256"])
    assert report["warnings"] == [] and err == ""
    assert (report["system"], report["batch_size"], report["num_devices"]) == ("waferllm", 1, 1)
    assert report["weight_dtype"] == report["kv_dtype"] == "float16"
    # each phase's regions at their peak core's bytes, the larger phase: the decode region
    # (3x4) holds the peak core, the prefill one (4x4) at most that on every core
    peak = report["metrics"]["peak_sram_bytes_per_core"]
    total = tiny().sram_bytes_per_core * tiny().num_cores
    assert peak * 12 / total <= report["sram_used_fraction"] <= peak * 16 / total
    assert "stack" not in report  # gpu only


def test_set_changes_the_device_constants_and_prints_a_what_if_line(capsys):
    report, _ = _json(capsys, [*ESTIMATE, "--set", "sram_bytes_per_core=98304", "--json"])
    constants = report["provenance"]["device_constants"]
    assert constants["sram_bytes_per_core"] == 98304
    assert constants["sources"]["sram_bytes_per_core"] == "user override (--set)"
    assert main([*ESTIMATE, "--set", "sram_bytes_per_core=98304"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "what-if: sram_bytes_per_core=98304"
    assert main(ESTIMATE) == 0
    assert "what-if" not in capsys.readouterr().out  # no override, no line


def test_a_device_file_with_a_base_is_a_what_if_and_a_whole_device_is_not(tmp_path, capsys):
    based = tmp_path / "mine.json"
    based.write_text(json.dumps({"base": "tiny", "hop_latency_cycles": 3}))
    assert main([*ESTIMATE[:4], str(based), *ESTIMATE[5:]]) == 0
    assert "what-if: hop_latency_cycles=3.0" in capsys.readouterr().out
    whole = tmp_path / "whole.json"
    fields = {k: v for k, v in tiny().to_dict().items() if k not in ("sources", "name")}
    whole.write_text(json.dumps(fields))
    assert main([*ESTIMATE[:4], str(whole), *ESTIMATE[5:]]) == 0
    assert "what-if" not in capsys.readouterr().out


def test_bench_reports_carry_warnings_and_provenance_without_a_model(capsys):
    report, err = _json(capsys, [*BENCH, "--align-both", "--json"])
    assert report["warnings"] == ["--align-both has no effect on summa (it skews nothing)"]
    assert err == "waferllm: warning: --align-both has no effect on summa (it skews nothing)\n"
    assert set(report["provenance"]) == SPEC_KEYS
    assert report["provenance"]["model_config_sha256"] is None
    assert report["provenance"]["device_constants"]["name"] == "tiny"


def test_gpu_reports_carry_the_gpu_and_stack_constants(capsys):
    report, _ = _json(capsys, [*GPU, "--stack", "ideal", "--batch-size", "2", "--json"])
    constants = report["provenance"]["device_constants"]
    assert constants["name"] == "a100" and constants["stack"]["stack"] == "ideal"
    assert report["provenance"]["model_config_sha256"] == config_sha256(load_config("llama3-8b"))
    assert (report["num_devices"], report["batch_size"], report["stack"]) == (8, 2, "ideal")
    assert report["sram_used_fraction"] is None


def test_gpu_warnings_go_into_the_report_and_on_stderr(capsys):
    long = ["gpu", "--model", "llama3-8b", "--prompt-len", "9000", "--output-len", "2", "--json"]
    report, err = _json(capsys, long)
    assert report["warnings"] and "max_position_embeddings" in report["warnings"][0]
    assert err == "".join(f"waferllm: warning: {w}\n" for w in report["warnings"])


def test_generate_reports_record_the_checkpoint_config_and_sampling_warnings(
    capsys, llama_checkpoint
):
    argv = ["generate", "--model", str(llama_checkpoint), "--prompt-ids", "1,2,3"]
    argv += ["--max-new-tokens", "2", "--grid", "3", "--top-k", "5", "--json"]
    report, err = _json(capsys, argv)
    sha = config_sha256(load_config(str(llama_checkpoint)))
    assert report["provenance"]["model_config_sha256"] == sha
    assert report["warnings"] and all(w in err for w in report["warnings"])
    assert 0 < report["sram_used_fraction"] < 1


def test_the_config_hash_ignores_the_name_and_follows_every_field():
    config = load_config("tiny")
    renamed = dataclasses.replace(config, name="elsewhere")
    deeper = dataclasses.replace(config, num_hidden_layers=config.num_hidden_layers + 1)
    assert config_sha256(renamed) == config_sha256(config) != config_sha256(deeper)


def test_version_prints_the_version_and_commit(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("waferllm 0.1.0") and (package_commit() or "") in out


@pytest.mark.parametrize("command", ["estimate", "generate"])
def test_trace_writes_chrome_trace_json(command, tmp_path, capsys, llama_checkpoint):
    path = tmp_path / "t.json"
    if command == "estimate":
        argv = [*ESTIMATE, "--trace", str(path)]
    else:
        argv = ["generate", "--model", str(llama_checkpoint), "--prompt-ids", "1,2,3"]
        argv += ["--max-new-tokens", "3", "--grid", "3", "--trace", str(path)]
    assert main(argv) == 0
    capsys.readouterr()
    trace = json.loads(path.read_text())
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {"prefill", "transition", "decode"}
    assert trace["otherData"]["provenance"]["command"].startswith(f"waferllm {command}")
