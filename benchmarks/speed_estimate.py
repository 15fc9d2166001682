"""Simulator speed of full-scale estimates and of `reproduce` (SPEC.md §8), host wall time.

Each case runs in a fresh interpreter and reports three host times, never mixed with modelled
ones: `import waferllm`; torch's one-time set-up of meta tensors (the modules torch imports
on the first meta operations, timed on a few trivial ones); the first call (cold caches); a
second call with the estimate caches cleared (a warm process: what a script calling
`estimate` in a loop sees).
Targets: one estimate of LLaMA3-8B, 4096 in / 4096 out on WSE-2 with grids given <= 1 s; with
the grid search <= 5 s; `reproduce` <= 60 s. The modelled TTFT/TPOT are printed beside them.

    python benchmarks/speed_estimate.py [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from common import console, parser, print_table, write_result

NAME = "speed_estimate"
REQUEST = {"model": "llama3-8b", "device": "wse2", "prompt_len": 4096, "output_len": 4096}
CASES: dict[str, dict[str, Any]] = {
    "grids given, per-layer 660/360 (the paper's)": {
        "placement": "per-layer",
        "prefill_grid": 660,
        "decode_grid": 360,
    },
    "grids given, fit 720/360": {"placement": "fit", "prefill_grid": 720, "decode_grid": 360},
    "searched, fit": {"placement": "fit"},
    "searched, per-layer": {"placement": "per-layer"},
}
TARGETS = {"grids given": 1.0, "searched": 5.0, "reproduce": 60.0}


CHILD = """
import json, sys, time
start = time.perf_counter()
import waferllm
from waferllm.api.estimate import clear_cache
imported = time.perf_counter() - start
import torch
start = time.perf_counter()
# torch imports its symbolic-shape machinery (sympy, ...) on the first meta-tensor operations
probe = torch.empty((2, 3), device="meta")
(probe @ probe.T + 1).sum(dim=0, keepdim=True).amax()
torch.gather(probe, 1, torch.zeros((2, 3), dtype=torch.int64, device="meta"))
meta_setup = time.perf_counter() - start
case, kwargs = sys.argv[1], json.loads(sys.argv[2])
calls, out = [], {}
for _ in range(2):
    clear_cache()
    t = time.perf_counter()
    if case == "reproduce":
        result = waferllm.reproduce(device="wse2")
        out = {"sections": len(result.sections)}
    else:
        est = waferllm.estimate(**kwargs)
        m = est.metrics
        out = {
            "prefill_grid": list(est.report.prefill_grid),
            "decode_grid": list(est.report.decode_grid),
            "ttft_s_modelled": m.ttft_s,
            "tpot_s_modelled": m.tpot_s,
            "e2e_tpr_modelled": m.e2e_tpr,
            "evaluated": est.search.evaluated if est.search else None,
        }
    calls.append(time.perf_counter() - t)
print(json.dumps({
    "import_s": imported, "torch_meta_setup_s": meta_setup, "first_s": calls[0],
    "warm_s": calls[1], **out,
}))
"""


def run_case(case: str) -> dict[str, Any]:
    """One case in a fresh interpreter that imports nothing but waferllm."""
    kwargs = {**REQUEST, **CASES.get(case, {})}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, case, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def target_of(case: str) -> float:
    return next(v for k, v in TARGETS.items() if case.startswith(k))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    cases = list(CASES)[:1] if args.quick else [*CASES, "reproduce"]
    results = {case: run_case(case) for case in cases}
    rows = []
    for case, r in results.items():
        target = target_of(case)
        rows.append(
            [
                case,
                f"{r['import_s']:.2f}",
                f"{r['torch_meta_setup_s']:.2f}",
                f"{r['first_s']:.2f}",
                f"{r['warm_s']:.2f}",
                f"{target:.0f}",
                "yes"
                if r["first_s"] <= target
                else ("warm only" if r["warm_s"] <= target else "NO"),
                f"{r.get('prefill_grid', '-')}/{r.get('decode_grid', '-')}",
            ]
        )
    out = console()
    print_table(
        out,
        "Simulator speed (host seconds on this machine; LLaMA3-8B 4096/4096 on WSE-2)",
        [
            "case",
            "import",
            "torch meta set-up",
            "first call",
            "warm call",
            "target",
            "meets",
            "grids",
        ],
        rows,
    )
    path = write_result(
        args.out_dir,
        NAME,
        "wse2",
        {"request": REQUEST, "results": results, "targets_s": TARGETS},
        modelled=False,
    )
    out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
