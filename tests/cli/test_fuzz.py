"""Fuzzing the CLI (issue 11, SPEC.md §9): random subcommands, flags and values, corrupt
config.json, truncated or hostile safetensors and device files, in-process through
`waferllm.cli.main` and a handful as real subprocesses. Every case exits 0 or 2, never 1 (a
bug) or a traceback; exit 2 is one stderr line; --json on exit 0 is JSON; time and RSS are
bounded. The "ci" profile runs a fixed budget of cases (HYPOTHESIS_PROFILE=dev for more)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .fuzz_cases import CASE_TIME_LIMIT_S, Corpus, argv, make_corpus, problems, run_case

MAX_RSS_BYTES = 4 * 1024**3  # one case's peak (the process's, where it cannot be reset)


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux: VmHWM, via clear_refs) so that the next reading
    is one case's own peak, not an earlier test's; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes(reset: bool) -> int:
    """The peak RSS since the reset (VmHWM), or the whole process's (ru_maxrss)."""
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate),  # a failure prints its command line; no shrinking
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=2000)
settings.register_profile("smoke", parent=settings.get_profile("ci"), max_examples=60)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
CORPUS: Corpus | None = None


@pytest.fixture(scope="module")
def corpus(checkpoint_factory, tmp_path_factory) -> Corpus:
    good = checkpoint_factory("llama", layers=1, margin_prompt_ids=None)
    global CORPUS
    CORPUS = make_corpus(Path(good), tmp_path_factory.mktemp("fuzz"))
    return CORPUS


def _fuzz_corpus() -> Corpus:
    assert CORPUS is not None
    return CORPUS


@pytest.mark.usefixtures("corpus")
@PROFILE
@given(data=st.data())
def test_every_command_line_exits_0_or_2_with_one_line_errors(data):
    line = data.draw(argv(_fuzz_corpus()), label="argv")
    reset = _reset_peak_rss()
    outcome = run_case(line)
    assert not problems(outcome), (line, problems(outcome))
    assert outcome.wall_s < CASE_TIME_LIMIT_S
    assert _peak_rss_bytes(reset) < MAX_RSS_BYTES, line


SUBPROCESS_CASES = (  # each pays a fresh interpreter and torch import: a handful
    ["bench", "gemm", "--grid", "4", "--m", "1000000000000000", "--k", "8", "--n", "8", "--json"],
    ["estimate", "--model", "@cfg-heads0", "--prompt-len", "8", "--output-len", "2"],
    ["generate", "--model", "@st-fifo", "--prompt-ids", "1,2"],
    [
        "estimate",
        "--model",
        "tiny",
        "--device",
        "@dev-huge.json",
        "--prompt-len",
        "8",
        "--output-len",
        "2",
        "--prefill-grid",
        "2",
        "--decode-grid",
        "2",
    ],
)


@pytest.mark.parametrize("line", SUBPROCESS_CASES, ids=lambda line: " ".join(line[:2]))
def test_the_same_cases_as_real_subprocesses(corpus, line):
    root = Path(corpus.out_dir).parent
    args = [
        part.format_map({p.name: str(p) for p in root.iterdir()}) if "{" in part else part
        for part in line
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "waferllm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CASE_TIME_LIMIT_S * 2,
        check=False,
    )
    assert done.returncode in (0, 2), done.stderr
    assert "Traceback" not in done.stderr
    if done.returncode == 2:
        assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_a_refused_request_prints_its_error_line_only_not_the_warnings_before_it(corpus):
    """Found by benchmarks/fuzz_cli.py: a settings warning came before the error line."""
    line = ["generate", "--model", "no-such-dir", "--prompt-ids", "1", "--top-k", "3"]
    outcome = run_case(line)
    assert outcome.code == 2 and not problems(outcome), outcome.stderr
