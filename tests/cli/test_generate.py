"""`waferllm generate`: streamed text, the metrics table, `--json`, and every bad input.

Run in-process through `waferllm.cli.main` (the same code `python -m waferllm` runs).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import DEFAULT_NEW_TOKENS, DEFAULT_PROMPT_IDS, reference_run
from safetensors.torch import load_file, save_file

from waferllm.cli import main
from waferllm.engine.tokenizer import load_tokenizer

PROMPT_IDS = ",".join(str(t) for t in DEFAULT_PROMPT_IDS)
REPORT_KEYS = {
    "schema_version",
    "kind",
    "modelled",
    "model",
    "device",
    "prompt_len",
    "output_len",
    "prefill_grid",
    "decode_grid",
    "placement",
    "metrics",
    "kv_capacity_tokens",
    "max_new_tokens",
    "breakdown",
    "host_wall_s",
    "text",
    "token_ids",
    "warnings",
    "provenance",
    "system",
    "batch_size",
    "num_devices",
    "weight_dtype",
    "kv_dtype",
    "sram_used_fraction",
}
METRIC_KEYS = {
    "ttft_s",
    "tpot_s",
    "prefill_tpr",
    "decode_tpr",
    "e2e_tpr",
    "transition_s",
    "energy_j",
    "peak_sram_bytes_per_core",
    "routes_per_core",
    "utilization",
}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_has_exactly_the_spec_keys_and_transformers_tokens(capsys, llama_checkpoint):
    ref = reference_run(llama_checkpoint, DEFAULT_PROMPT_IDS, DEFAULT_NEW_TOKENS)
    code, out, err = run(
        capsys,
        "--model", str(llama_checkpoint),
        "--prompt-ids", PROMPT_IDS,
        "--max-new-tokens", str(DEFAULT_NEW_TOKENS),
        "--prefill-grid", "3",
        "--decode-grid", "2x3",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)  # stdout holds the report and nothing else
    assert set(report) == REPORT_KEYS
    assert set(report["metrics"]) == METRIC_KEYS
    assert set(report["kv_capacity_tokens"]) == set(report["max_new_tokens"]) == {"shift", "concat"}
    assert report["kind"] == "generate" and report["modelled"] is True
    assert report["token_ids"] == list(ref.generated_ids)  # the generated ids only
    assert (report["prefill_grid"], report["decode_grid"]) == ([3, 3], [2, 3])
    assert report["prompt_len"] == len(DEFAULT_PROMPT_IDS)
    assert report["text"] == load_tokenizer(llama_checkpoint).decode(ref.generated_ids)
    assert report["metrics"]["ttft_s"] > 0 and report["metrics"]["transition_s"] > 0
    assert report["text"] in err  # the streamed text went to stderr


def test_text_streams_to_stdout_followed_by_a_modelled_metrics_table(capsys, llama_checkpoint):
    code, out, err = run(
        capsys, "--model", str(llama_checkpoint), "--prompt", "The wafer", "--max-new-tokens", "5"
    )
    assert code == 0, err
    tokenizer = load_tokenizer(llama_checkpoint)
    ids = tokenizer.encode("The wafer")
    ref = reference_run(llama_checkpoint, ids, 5).generated_ids
    streamed, _, table = out.partition("\n")
    assert streamed == tokenizer.decode(ref)
    for label in ("Modelled", "TTFT", "TPOT", "decode TPR", "energy", "KV capacity"):
        assert label in table
    assert "host wall-clock (not modelled)" in table


def test_prompt_ids_without_a_tokenizer_stream_the_ids(capsys, checkpoint_factory):
    path = checkpoint_factory("llama", with_tokenizer=False)
    code, out, err = run(
        capsys, "--model", str(path), "--prompt-ids", PROMPT_IDS, "--max-new-tokens", "3"
    )
    assert code == 0, err
    ref = reference_run(path, DEFAULT_PROMPT_IDS, 3).generated_ids
    assert out.startswith("".join(f"[{t}]" for t in ref) + "\n")


def test_seeded_sampling_from_the_cli_is_reproducible(capsys, llama_checkpoint):
    args = ["--model", str(llama_checkpoint), "--prompt-ids", PROMPT_IDS, "--json"]
    args += ["--max-new-tokens", "6", "--temperature", "2.5", "--top-k", "50", "--seed", "5"]
    runs = [json.loads(run(capsys, *args, "--ignore-eos")[1])["token_ids"] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 6


def test_a_sampling_setting_without_effect_is_a_one_line_warning(capsys, llama_checkpoint):
    args = _model_args(llama_checkpoint, "--max-new-tokens", "2", "--top-k", "5", "--json")
    code, out, err = run(capsys, *args)
    assert code == 0
    assert json.loads(out)["kind"] == "generate"
    warnings = [line for line in err.splitlines() if line.startswith("waferllm: warning:")]
    assert warnings == [
        "waferllm: warning: top_k and top_p have no effect with temperature=0 (greedy decoding)"
    ]


# ---- bad input: one stderr line, exit 2, nothing on stdout (SPEC.md §9) ----------------------
def _edit_tensors(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    files = sorted(target.glob("*.safetensors"))
    assert len(files) == 1, files
    tensors = load_file(files[0])
    edit(tensors)
    save_file(tensors, files[0], metadata={"format": "pt"})
    return target


def _edit_config(source: Path, target: Path, **fields) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(fields)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _drop(name: str):
    return lambda tensors: tensors.pop(name)


def _reshape(name: str, shape: tuple[int, ...]):
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = torch.zeros(shape)

    return edit


@pytest.fixture(scope="module")
def broken(llama_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints with one thing wrong each."""
    root = tmp_path_factory.mktemp("broken")
    up = "model.layers.1.mlp.up_proj.weight"
    q = "model.layers.0.self_attn.q_proj.weight"
    no_config = root / "no_config"
    shutil.copytree(llama_checkpoint, no_config)
    (no_config / "config.json").unlink()
    pickle_only = root / "pickle_only"
    shutil.copytree(llama_checkpoint, pickle_only)
    for file in pickle_only.glob("*.safetensors"):
        file.unlink()
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    return {
        "missing": _edit_tensors(llama_checkpoint, root / "missing", _drop(up)),
        "misshaped": _edit_tensors(llama_checkpoint, root / "misshaped", _reshape(q, (3, 40))),
        "gpt2": _edit_config(llama_checkpoint, root / "gpt2", model_type="gpt2"),
        "no_config": no_config,
        "pickle_only": pickle_only,
    }


def _model_args(path: Path | str, *extra: str) -> list[str]:
    return ["--model", str(path), "--prompt-ids", PROMPT_IDS, *extra]


BAD_ARGS = {
    "missing directory": (["--model", "/nonexistent/ckpt", "--prompt-ids", "1"], "does not exist"),
    "malformed grid": (["--grid", "3x"], "malformed grid '3x'"),
    "zero grid": (["--grid", "0x2"], "at least one row"),
    "grid larger than the device": (["--grid", "65"], "larger than the tiny device"),
    "decode grid larger than the device": (["--decode-grid", "2x70"], "larger than the tiny"),
    "grid and prefill grid": (["--grid", "2", "--prefill-grid", "3"], "either --grid or"),
    "unknown device": (["--device", "wse9"], "unknown device 'wse9'"),
    "bad --set": (["--set", "sram_bytes_per_core"], "--set expects key=value"),
    "SRAM overflow": (["--grid", "1", "--set", "sram_bytes_per_core=4096"], "SRAM overflow"),
    "negative temperature": (["--temperature", "-1"], "temperature=-1.0 must be"),
    "top-p out of range": (["--temperature", "1", "--top-p", "0"], "top_p=0.0 must be"),
    "top-k zero": (["--temperature", "1", "--top-k", "0"], "top_k=0 must be"),
    "no tokens": (["--max-new-tokens", "0"], "max_tokens=0 must be"),
    "negative seed": (["--temperature", "1", "--seed", "-3"], "seed=-3 must be"),
    "too many new tokens": (["--max-new-tokens", "100000000"], "max_position_embeddings=256"),
    "bad dtype": (["--dtype", "float8"], "invalid choice: 'float8'"),
    "bad kv cache": (["--kv-cache", "paged"], "invalid choice: 'paged'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_fail_with_one_line_and_exit_2(capsys, llama_checkpoint, case):
    extra, message = BAD_ARGS[case]
    args = extra if "--model" in extra else _model_args(llama_checkpoint, *extra)
    code, out, err = run(capsys, *args)
    _assert_one_line_error(code, out, err, message)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "missing.*model.layers.1.mlp.up_proj.weight"),
        ("misshaped", r"model.layers.0.self_attn.q_proj.weight has shape \[3, 40\]"),
        ("gpt2", "gpt2.*not supported"),
        ("no_config", "no config.json"),
        ("pickle_only", "safetensors"),
    ],
)
def test_broken_checkpoints_fail_with_one_line_naming_the_problem(capsys, broken, case, message):
    code, out, err = run(capsys, *_model_args(broken[case]))
    _assert_one_line_error(code, out, err, message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt-ids", "1,x,3"], "--prompt-ids expects comma-separated token ids"),
        (["--prompt-ids", "1,-2"], "--prompt-ids expects"),
        (["--prompt-ids", "5,301"], r"token id 301 is not in the vocabulary \[0, 301\)"),
        (["--prompt", "hi", "--prompt-ids", "1"], "not allowed with argument"),
        ([], "one of the arguments --prompt --prompt-ids is required"),
    ],
)
def test_bad_prompts_fail_with_one_line(capsys, llama_checkpoint, extra, message):
    code, out, err = run(capsys, "--model", str(llama_checkpoint), *extra)
    _assert_one_line_error(code, out, err, message)


def test_text_prompt_without_tokenizer_fails_with_one_line(capsys, checkpoint_factory):
    path = checkpoint_factory("llama", with_tokenizer=False)
    code, out, err = run(capsys, "--model", str(path), "--prompt", "hello")
    _assert_one_line_error(code, out, err, "no tokenizer.json")


@pytest.mark.parametrize(
    ("prompt_len", "message"),
    [(100, "more than the KV cache holds"), (1000, "max_position_embeddings=256")],
)
def test_prompts_too_long_fail_before_any_text(capsys, llama_checkpoint, prompt_len, message):
    small = ["--prefill-grid", "8", "--decode-grid", "2", "--set", "sram_bytes_per_core=16384"]
    prompt = ",".join(["7"] * prompt_len)
    code, out, err = run(capsys, "--model", str(llama_checkpoint), "--prompt-ids", prompt, *small)
    _assert_one_line_error(code, out, err, message)


def _assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("waferllm: error: ")
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
