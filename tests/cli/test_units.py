"""One units policy across commands (cli/units.py), shares that add up to 100%, and error
suggestions that name only options that exist."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waferllm import estimate
from waferllm.cli import build_parser, main, units
from waferllm.errors import SramOverflowError

SRC = Path(__file__).resolve().parents[2] / "src" / "waferllm"
DURATION = r"\d+\.\d{3} (s|ms|us|ns)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3.21, "3.210 s"),
        (0.012345, "12.345 ms"),
        (6.457e-2, "64.570 ms"),
        (6.457e-5, "64.570 us"),
        (8.45e-7, "845.000 ns"),
        (0.0, "0.000 ns"),
        (None, "-"),
    ],
)
def test_durations_pick_the_unit_that_keeps_the_number_at_least_one(seconds, text):
    assert units.duration(seconds) == text


@given(st.lists(st.floats(min_value=0, max_value=1e12), min_size=1, max_size=6))
def test_shares_add_up_to_exactly_one_hundred_percent(parts):
    shares = units.shares(parts)
    if sum(parts) > 0:
        assert sum(round(float(s.rstrip("%")) * 10) for s in shares) == 1000
    else:
        assert shares == ["-"] * len(parts)


def _row(out: str, label: str) -> str:
    line = next(line for line in out.splitlines() if re.search(rf"\b{label}\b", line))
    return line


def test_estimate_generate_and_gpu_print_ttft_in_the_same_units(capsys, llama_checkpoint):
    tiny = ["--prompt-len", "12", "--output-len", "4"]
    grids = ["--prefill-grid", "4", "--decode-grid", "4"]
    assert main(["estimate", "--model", "tiny", "--device", "tiny", *tiny, *grids]) == 0
    assert main(["gpu", "--model", "llama3-8b", *tiny]) == 0
    argv = ["generate", "--model", str(llama_checkpoint), "--prompt-ids", "1,2,3"]
    assert main([*argv, "--max-new-tokens", "3", "--grid", "3"]) == 0
    out = capsys.readouterr().out
    ttft = [line for line in out.splitlines() if re.search(r"^\W*TTFT\b", line)]
    assert len(ttft) == 3 and all(re.search(DURATION, line) for line in ttft), ttft
    assert "e+" not in out and "e-0" not in out  # no scientific notation for times


def test_bench_gemm_shares_add_up_to_one_hundred_percent(capsys):
    argv = ["bench", "gemm", "--grid", "4", "--m", "64", "--k", "64", "--n", "64"]
    assert main([*argv, "--device", "tiny"]) == 0
    out = capsys.readouterr().out
    labels = ("compute, exposed", "communication, exposed", "step overhead")
    shares = [float(re.search(r"\((\d+\.\d)%\)", _row(out, label))[1]) for label in labels]
    assert round(sum(shares), 1) == 100.0
    assert "of which alignment" in out


def _options() -> set[str]:
    """Every option any subcommand accepts."""
    found: set[str] = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            found.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return found


def test_every_option_a_message_suggests_exists():
    options, named = _options(), set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        # docstrings may name other tools' options (a benchmark script's); messages may not
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if id(node) in docs:
                continue
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and " " in node.value:  # a message, not an argv token (git's own)
                named.update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", node.value))
    assert named and named <= options, sorted(named - options)


def test_a_prompt_too_long_for_the_prefill_plan_suggests_real_options():
    # 500 tokens run in chunks on 4x4; 5000 do not fit even so (their KV cache alone)
    with pytest.raises(SramOverflowError, match="prefill activations") as error:
        estimate(
            "tiny",
            device="tiny",
            device_overrides={"sram_bytes_per_core": 60000},
            prompt_len=5000,
            output_len=2,
            prefill_grid=4,
            decode_grid=8,
        )
    assert "--prefill-grid" in str(error.value) and "max_context_tokens" not in str(error.value)
