"""CLI fuzzing at scale (issue 11, SPEC.md §9): N random command lines (default 10,000) over
every subcommand, run in-process through `waferllm.cli.main` with the test suite's generator
(tests/cli/fuzz_cases.py: hostile flags and values, corrupt checkpoints, hostile device files)
and a per-case time limit. Prints the counts by outcome (ok, user-error, broken, timeout) and
the first broken command lines; writes them as dated JSON. Times are host wall-clock.

    python benchmarks/fuzz_cli.py [--cases N] [--seed S] [--quick]
"""

from __future__ import annotations

import collections
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import BENCHMARKS_DIR, console, parser, write_result
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(BENCHMARKS_DIR.parent / "tests"))
from cli.fuzz_cases import argv, make_corpus, outcome_kind, problems, run_case  # noqa: E402
from helpers.checkpoints import make_checkpoint  # noqa: E402

NAME = "fuzz_cli"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cases = 200 if args.quick else args.cases
    torch.set_num_threads(1)
    out = console()
    counts: collections.Counter[str] = collections.Counter()
    by_command: collections.Counter[str] = collections.Counter()
    broken: list[dict[str, object]] = []
    slowest = (0.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        good = make_checkpoint(Path(tmp), "llama", layers=1, margin_prompt_ids=None)
        corpus = make_corpus(good, Path(tmp) / "corpus")

        @settings(
            max_examples=cases,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.generate,),
        )
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            nonlocal slowest
            line = data.draw(argv(corpus))
            outcome = run_case(line)
            kind = outcome_kind(outcome)
            counts[kind] += 1
            by_command[f"{line[0]} {kind}"] += 1
            slowest = max(slowest, (outcome.wall_s, " ".join(line)))
            if kind not in ("ok", "user-error") and len(broken) < 50:
                broken.append({"argv": line, "problems": problems(outcome)})

        start = time.perf_counter()
        seed(args.seed)(one)()
        wall_s = time.perf_counter() - start
    rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.print(f"{sum(counts.values())} cases in {wall_s:.0f} s (host wall-clock)")
    for kind, count in counts.most_common():
        out.print(f"  {kind:>20}: {count}")
    out.print(f"slowest case: {slowest[0]:.2f} s: {slowest[1]}")
    out.print(f"peak RSS: {rss_bytes / 1e9:.2f} GB")
    for case in broken[:10]:
        out.print(f"BROKEN: {case}")
    path = write_result(
        args.out_dir,
        NAME,
        "cli",
        {
            "cases": sum(counts.values()),
            "counts": dict(counts),
            "by_command": dict(sorted(by_command.items())),
            "broken": broken,
            "slowest_case_s": slowest[0],
            "slowest_case": slowest[1],
            "peak_rss_bytes": rss_bytes,
            "host_wall_s": wall_s,
        },
        modelled=False,
    )
    out.print(f"wrote {path}")


if __name__ == "__main__":
    main()
