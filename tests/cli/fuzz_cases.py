"""Hostile command lines for the CLI fuzz test and `benchmarks/fuzz_cli.py` (issue 11).

`make_corpus` writes the files the cases point at: a good tiny checkpoint and corrupt copies
(config.json garbage, wrong types, zero heads, truncated or hostile safetensors, shard indexes
leaving the directory, a FIFO), and device files (huge meshes, strings, wrong JSON). `argv`
draws one command line over every subcommand from good and hostile values; `run_case` runs it
in-process through `waferllm.cli.main` under a time limit; `problems` lists what breaks the
contract (SPEC.md §9): exit 0 or 2 only, one stderr line on exit 2, JSON on stdout with --json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import struct
import time
from pathlib import Path

from hypothesis import strategies as st

from waferllm.cli import main

CASE_TIME_LIMIT_S = 30


class CaseTimeout(BaseException):
    """Raised by the alarm inside a case that runs too long (not an Exception: main must
    not catch it)."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    models: tuple[str, ...]  # checkpoint dirs, good and corrupt, plus presets and bad names
    devices: tuple[str, ...]  # presets, good and hostile device files
    out_dir: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    argv: tuple[str, ...]
    code: int | None  # None: it ran past the time limit
    stdout: str
    stderr: str
    wall_s: float


def _corrupt(good: Path, root: Path, name: str) -> Path:
    path = root / name
    shutil.copytree(good, path)
    return path


def _edit_config(path: Path, **fields: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config))


def make_corpus(good: Path, root: Path) -> Corpus:
    """Corrupt copies of the `good` checkpoint and device files under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    models = [str(good), "tiny", "llama3-8b", "mistral-7b", "qwen2.5-7b", "no-such-model", ""]
    config_edits = {
        "heads0": {"num_attention_heads": 0},
        "hd-str": {"head_dim": "16"},
        "hd-float": {"head_dim": 16.7},
        "eps-str": {"rms_norm_eps": "tiny"},
        "theta-str": {"rope_theta": "x"},
        "eos-str": {"eos_token_id": "1"},
        "hidden-huge": {"hidden_size": 2**40},
        "layers-huge": {"num_hidden_layers": 10_000},
        "vocab-neg": {"vocab_size": -5},
        "arch": {"model_type": "gpt2"},
        "mpe-small": {"max_position_embeddings": 3},
        "window-str": {"model_type": "mistral", "sliding_window": "5"},
    }
    for name, fields in config_edits.items():
        path = _corrupt(good, root, f"cfg-{name}")
        _edit_config(path, **fields)
        models.append(str(path))
    for name, text in {"garbage": "{not json", "array": "[1, 2]", "empty": ""}.items():
        path = _corrupt(good, root, f"cfg-{name}")
        (path / "config.json").write_text(text)
        models.append(str(path))
    weights = good / "model.safetensors"
    data = weights.read_bytes()
    hostile = {
        "truncated": data[: len(data) // 2],
        "header-only": data[:8],
        "huge-header": struct.pack("<Q", 2**62) + b"{}",
        "bad-header": struct.pack("<Q", 8) + b"not json",
        "empty": b"",
    }
    for name, blob in hostile.items():
        path = _corrupt(good, root, f"st-{name}")
        (path / "model.safetensors").write_bytes(blob)
        models.append(str(path))
    path = _corrupt(good, root, "st-index-outside")
    (path / "model.safetensors").unlink()
    index = {"weight_map": {"model.norm.weight": "../../outside.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    models.append(str(path))
    path = _corrupt(good, root, "st-fifo")
    (path / "model.safetensors").unlink()
    os.mkfifo(path / "model.safetensors")
    models.append(str(path))
    path = _corrupt(good, root, "no-config")
    (path / "config.json").unlink()
    models.append(str(path))

    devices = ["tiny", "wse2", "wse3", "nope"]
    device_files = {
        "huge": {"base": "tiny", "mesh_rows": 8000, "mesh_cols": 8000},
        "enormous": {"base": "tiny", "mesh_rows": 1e12, "mesh_cols": 1e12},
        "string": {"base": "tiny", "sram_bytes_per_core": "lots"},
        "zero": {"base": "tiny", "clock_hz": 0},
        "escape": {"base": "tiny", "name": "x/../../escaped"},
        "small-sram": {"base": "tiny", "sram_bytes_per_core": 4096},
        "unknown-field": {"base": "tiny", "warp_drive": 1},
    }
    for name, fields in device_files.items():
        file = root / f"dev-{name}.json"
        file.write_text(json.dumps(fields))
        devices.append(str(file))
    (root / "dev-garbage.json").write_text("{{{")
    devices.append(str(root / "dev-garbage.json"))
    os.mkfifo(root / "dev-fifo.json")
    devices.append(str(root / "dev-fifo.json"))
    return Corpus(models=tuple(models), devices=tuple(devices), out_dir=str(root / "out"))


# ---- command lines -----------------------------------------------------------------------------
HOSTILE_TEXT = ("", "-1", "0", "1e15", "abc", "nan", "inf", "9" * 30, "3x", "x3", "2x0", "é", " ")
SIZES = st.one_of(st.integers(1, 300).map(str), st.sampled_from(HOSTILE_TEXT + ("16777217",)))
LENGTHS = st.one_of(st.integers(1, 64).map(str), st.sampled_from(HOSTILE_TEXT))
GRIDS = st.one_of(
    st.integers(1, 6).map(str),
    st.tuples(st.integers(1, 6), st.integers(1, 6)).map(lambda g: f"{g[0]}x{g[1]}"),
    st.sampled_from(HOSTILE_TEXT + ("65", "100000", "0x4")),
)
FLOATS = st.one_of(
    st.floats(0, 2).map(repr), st.sampled_from(HOSTILE_TEXT + ("1e-320", "-0.5", "1e308"))
)
SETS = st.sampled_from(
    (
        "sram_bytes_per_core=98304",
        "clock_hz=0",
        "mesh_rows=1e12",
        "nope=1",
        "x",
        "routes_per_core=1",
    )
)


def _options(draw: st.DrawFn, options: dict[str, st.SearchStrategy[str]]) -> list[str]:
    """Each option present or not, with a drawn value."""
    out: list[str] = []
    for flag, values in options.items():
        if draw(st.booleans()):
            out += [flag, draw(values)]
    return out


@st.composite
def argv(draw: st.DrawFn, corpus: Corpus) -> list[str]:
    """One command line over every subcommand."""
    models, devices = st.sampled_from(corpus.models), st.sampled_from(corpus.devices)
    command = draw(
        st.sampled_from(
            ("estimate", "estimate", "generate", "generate", "gpu", "bench", "devices", "repro")
        )
    )
    common = ["--device", draw(devices)] if draw(st.booleans()) else []
    common += ["--set", draw(SETS)] if draw(st.integers(0, 4)) == 0 else []
    flags = ["--json"] if draw(st.booleans()) else []
    if command == "estimate":  # grids given: the grid search is timed elsewhere
        line = ["estimate", "--model", draw(models), "--prompt-len", draw(LENGTHS)]
        line += ["--output-len", draw(LENGTHS), "--prefill-grid", draw(GRIDS)]
        line += ["--decode-grid", draw(GRIDS)]
        line += _options(
            draw,
            {
                "--placement": st.sampled_from(("fit", "per-layer", "both")),
                "--kv-cache": st.sampled_from(("shift", "concat", "paged")),
            },
        )
    elif command == "generate":
        line = ["generate", "--model", draw(models)]
        if draw(st.booleans()):
            line += [
                "--prompt-ids",
                draw(st.sampled_from(("1,2,3", "0", "", "1,x", "-1", "999999"))),
            ]
        else:
            line += ["--prompt", draw(st.text(max_size=20))]
        line += ["--max-new-tokens", draw(st.one_of(st.integers(-2, 5).map(str), LENGTHS))]
        line += _options(
            draw,
            {
                "--grid": GRIDS,
                "--temperature": FLOATS,
                "--top-k": SIZES,
                "--top-p": FLOATS,
                "--seed": st.sampled_from(("0", "-1", str(2**64), "x")),
                "--dtype": st.sampled_from(("float32", "float16", "int4")),
                "--kv-cache": st.sampled_from(("shift", "concat")),
            },
        )
    elif command == "gpu":
        line = ["gpu", "--model", draw(models), "--prompt-len", draw(LENGTHS)]
        line += ["--output-len", draw(LENGTHS)]
        line += _options(
            draw,
            {
                "--gpu": st.sampled_from(("a100", "h100", "tpu")),
                "--num-gpus": st.sampled_from(("1", "8", "16", "3", "x")),
            },
        )
        common = []
    elif command == "bench":
        kind = draw(st.sampled_from(("gemm", "gemv")))
        line = ["bench", kind, "--grid", draw(GRIDS), "--m", draw(SIZES), "--n", draw(SIZES)]
        line += ["--k", draw(SIZES)] if kind == "gemm" else []
        line += _options(
            draw,
            {
                "--mode": st.sampled_from(("estimate", "functional", "quantum")),
                "--dtype": st.sampled_from(("float32", "float16")),
                "--algo": st.sampled_from(("meshgemm", "cannon", "summa", "meshgemv", "ring")),
            },
        )
    elif command == "devices":
        line = ["devices"]
    else:  # reproduce: bad options only (a full reproduction takes seconds; tested elsewhere)
        line = ["reproduce", "--out-dir", corpus.out_dir, "--no-plot"]
        line += draw(st.sampled_from((["--nope"], ["--device", "nope"], ["--set", "x"])))
        common = []  # a valid --device after the bad one would run the whole reproduction
    junk = (
        [draw(st.sampled_from(("--nope", "-x", "--json=1", "extra")))]
        if draw(st.integers(0, 9)) == 0
        else []
    )
    return line + common + flags + junk


# ---- running and checking ----------------------------------------------------------------------
def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def run_case(line: list[str], time_limit_s: int = CASE_TIME_LIMIT_S) -> Outcome:
    """`waferllm.cli.main(line)` in-process, stdout and stderr captured, under a time limit."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(time_limit_s)
    start = time.perf_counter()
    code: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(line)
    except CaseTimeout:
        code = None
    except SystemExit as exc:  # argparse's --help exits 0
        code = int(exc.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return Outcome(tuple(line), code, out.getvalue(), err.getvalue(), time.perf_counter() - start)


def problems(outcome: Outcome) -> list[str]:
    """What breaks the CLI contract in this outcome (empty when it is right)."""
    found = []
    if outcome.code is None:
        found.append(f"ran past {CASE_TIME_LIMIT_S} s")
    elif outcome.code not in (0, 2):
        found.append(f"exit {outcome.code}: {outcome.stderr.strip()[:300]}")
    if "Traceback" in outcome.stderr:
        found.append("a traceback on stderr")
    if outcome.code == 2:
        if outcome.stderr.count("\n") != 1 or not outcome.stderr.startswith("waferllm: "):
            found.append(f"exit 2 without exactly one stderr line: {outcome.stderr[:300]!r}")
        if outcome.stdout:
            found.append("exit 2 with output on stdout")
    if outcome.code == 0 and "--json" in outcome.argv:
        try:
            json.loads(outcome.stdout)
        except ValueError:
            found.append(f"--json but stdout is not JSON: {outcome.stdout[:200]!r}")
    return found


def outcome_kind(outcome: Outcome) -> str:
    """A label for counting outcomes: ok, user-error, or the broken contract."""
    broken = problems(outcome)
    if broken:
        return "timeout" if outcome.code is None else f"broken (exit {outcome.code})"
    return "ok" if outcome.code == 0 else "user-error"
