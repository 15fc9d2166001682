"""Simulator speed of full-scale estimates and of `reproduce` (SPEC.md §8, issue 14), host time.

Host wall-clock seconds, never mixed with modelled ones. Each case runs in a fresh
interpreter (1 torch thread) that imports waferllm from `--src` (default: this checkout's
`src`; `--baseline-src DIR` runs every case under another tree too, in the same run, for
before/after tables): `import waferllm`, one warm-up request (the first call: torch's meta
set-up, cold caches), then the timed work:
- "grids given": 20 random requests (seeded; new prompt/output lengths and new per-layer
  grids each) per model, median and max seconds (target <= 50 ms median);
- "llama3-8b-unseen-sides": 20 LLaMA3-8B requests whose 40 grid sides are all distinct and
  off the draw above (no multiple of 12): no request reuses a side already priced (the
  per-line pattern caches are cold for every request), the worst case of "grids given";
- "search": one grid search, LLaMA3-8B 4096/4096 fit (target <= 0.5 s);
- "reproduce": one `reproduce` (target <= 10 s);
- "first call": the warm-up request's time (target <= 1 s after `import waferllm`);
beside wall time, each call's process CPU time (median): on a shared, loaded machine wall
time swings with the load and CPU time much less.
Beside each model, GenZ's time per decode query (the analytic GPU model users compare with,
pip package `genz-llm` in its own virtual environment, `--genz-python`; the column is left
out when that interpreter is missing): the same 20 (prompt, output) lengths on A100 80GB
GPUs (one; two tensor-parallel for Qwen2-72B, whose weights need them), after one warm-up
query. GenZ names: its own presets (Qwen2-72B: its Qwen2.5-72B preset, the same shapes).
With `--baseline-src`, the two trees run case by case, alternating, so load on a shared
machine falls on both alike.

    PYTHONPATH=src python benchmarks/speed_estimate.py [--quick] [--baseline-src /work/main/src]
        [--genz-python /work/venv-genz/bin/python] [--cases llama3-8b,search]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import console, parser, print_table, write_result

NAME = "speed_estimate"
MODELS = ("llama3-8b", "llama2-13b", "qwen2-72b")
REQUESTS = 20
TARGETS_S = {"grids given (median)": 0.05, "search": 0.5, "reproduce": 10.0, "first call": 1.0}
SRC = Path(__file__).resolve().parent.parent / "src"
GENZ_PYTHON = Path("/work/venv-genz/bin/python")
GENZ_MODELS = {  # GenZ's preset name and the fewest A100 80GB GPUs that hold the weights
    "llama3-8b": ("llama3_8b", 1),
    "llama2-13b": ("meta-llama/Llama-2-13B", 1),
    "qwen2-72b": ("Qwen/Qwen2.5-72B", 2),
}

UNSEEN = "llama3-8b-unseen-sides"

CHILD = (
    f"UNSEEN = {UNSEEN!r}\n"
    + """
import json, random, statistics, sys, time
import torch
torch.set_num_threads(1)
start = time.perf_counter()
import waferllm
from waferllm.errors import WaferError
imported = time.perf_counter() - start
case, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(14)

def request(model):
    return dict(
        model=model, device="wse2", placement="per-layer",
        prompt_len=rng.randrange(64, 4097), output_len=rng.randrange(2, 2049),
        prefill_grid=rng.randrange(420, 721, 12), decode_grid=rng.randrange(360, 661, 12),
    )

def unseen_requests(count):
    # 2 * count distinct sides, none a multiple of 12 (nor the first call's 720/660): no
    # request shares a grid side with another or with the warm-up (per-line caches cold)
    sides = rng.sample([s for s in range(361, 719) if s % 12], 2 * count)
    return [dict(
        model="llama3-8b", device="wse2", placement="per-layer",
        prompt_len=rng.randrange(64, 4097), output_len=rng.randrange(2, 2049),
        prefill_grid=max(sides[2 * i : 2 * i + 2]), decode_grid=min(sides[2 * i : 2 * i + 2]),
    ) for i in range(count)]

cpu = []  # process CPU seconds of each timed call: steadier than wall time under load

def timed(kwargs):
    t, c = time.perf_counter(), time.process_time()
    try:
        waferllm.estimate(**kwargs)
        ok = True
    except WaferError:
        ok = False
    cpu.append(time.process_time() - c)
    return time.perf_counter() - t, ok

def first(model):
    # the first call after import: a fixed feasible request, so cold start (torch's lazy
    # imports, empty caches) lands here and not in the timed calls
    return timed(dict(
        model=model, device="wse2", placement="per-layer", prompt_len=1024, output_len=8,
        prefill_grid=720, decode_grid=660,
    ))

out = {"import_s": imported}
if case == "reproduce":
    out["first_s"], out["first_ok"] = first("llama3-8b")
    t, c = time.perf_counter(), time.process_time()
    waferllm.reproduce(device="wse2")
    out["seconds"] = [time.perf_counter() - t]
    cpu.append(time.process_time() - c)
elif case == "search":
    fixed = dict(model="llama3-8b", device="wse2", prompt_len=4096, output_len=4096)
    out["first_s"], out["first_ok"] = first("llama3-8b")
    t, c = time.perf_counter(), time.process_time()
    est = waferllm.estimate(**fixed, placement="fit")
    out["seconds"] = [time.perf_counter() - t]
    cpu.append(time.process_time() - c)
    out["grids"] = [list(est.report.prefill_grid), list(est.report.decode_grid)]
else:
    model = "llama3-8b" if case == UNSEEN else case
    out["first_s"], out["first_ok"] = first(model)
    todo = unseen_requests(count) if case == UNSEEN else [request(case) for _ in range(count)]
    runs = [timed(kwargs) for kwargs in todo]
    out["seconds"] = [s for s, _ in runs]
    out["feasible"] = sum(ok for _, ok in runs)
out["cpu_seconds"] = cpu[1:]  # without the first call
print(json.dumps(out))
"""
)


GENZ_CHILD = """
import json, random, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
start = time.perf_counter()
from GenZ import decode_moddeling
imported = time.perf_counter() - start
model, tp, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(14)

def query():
    prompt, output = rng.randrange(64, 4097), rng.randrange(2, 2049)
    rng.randrange(420, 721, 12), rng.randrange(360, 661, 12)  # the grids ours draws
    t = time.perf_counter()
    decode_moddeling(model=model, batch_size=1, input_tokens=prompt, output_tokens=output,
                     system_name="A100_80GB_GPU", bits="bf16", tensor_parallel=tp)
    return time.perf_counter() - t

first = query()
print(json.dumps({"import_s": imported, "first_s": first,
                  "seconds": [query() for _ in range(count)]}))
"""


def run_genz(model: str, python: Path, count: int) -> dict[str, Any] | None:
    """GenZ's decode queries in its own interpreter; None when it is not installed."""
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", GENZ_CHILD, *map(str, GENZ_MODELS[model]), str(count)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["median_s"] = statistics.median(r["seconds"])
    r["max_s"] = max(r["seconds"])
    return r


def run_case(case: str, src: Path, count: int) -> dict[str, Any]:
    """One case in a fresh interpreter importing waferllm from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(count)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["median_s"] = statistics.median(r["seconds"])
    r["max_s"] = max(r["seconds"])
    r["cpu_median_s"] = statistics.median(r["cpu_seconds"])
    return r


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=SRC, help="the tree to time (default: ours)")
    p.add_argument("--baseline-src", type=Path, help="another tree timed in the same run")
    p.add_argument(
        "--genz-python",
        type=Path,
        default=GENZ_PYTHON,
        help=f"the interpreter with genz-llm installed (default {GENZ_PYTHON}; skipped if absent)",
    )
    p.add_argument(
        "--cases",
        help=f"comma-separated subset of the cases (models, {UNSEEN}, search, reproduce; "
        "default: all)",
    )
    args = p.parse_args(argv)
    every = [*MODELS, UNSEEN, "search", "reproduce"]
    cases = ["llama3-8b"] if args.quick else every
    if args.cases:
        cases = [c for c in args.cases.split(",") if c in every]
    count = 3 if args.quick else REQUESTS
    trees = {"after": args.src}
    if args.baseline_src:
        trees = {"before": args.baseline_src, **trees}
    results: dict[str, dict[str, Any]] = {label: {} for label in trees}
    for case in cases:  # alternate the trees case by case: load falls on both alike
        for label, src in trees.items():
            results[label][case] = run_case(case, src, count)
    genz = {m: run_genz(m, args.genz_python, count) for m in cases if m in GENZ_MODELS}
    rows = []
    for case in cases:
        row = [case, "1" if case in ("search", "reproduce") else str(count)]
        for label in trees:
            r = results[label][case]
            row += [
                f"{r['median_s']:.3f}",
                f"{r['max_s']:.3f}",
                f"{r['cpu_median_s']:.3f}",
                f"{r.get('first_s', 0.0):.2f}",
            ]
        g = genz.get(case)
        row.append("" if not g else g.get("error") or f"{g['median_s']:.3f} / {g['max_s']:.3f}")
        rows.append(row)
    heads = ["case", "calls"]
    for label in trees:
        heads += [
            f"{label} median s",
            f"{label} max s",
            f"{label} CPU median s",
            f"{label} first call s",
        ]
    heads.append("GenZ decode query median / max s")
    out = console()
    print_table(
        out, "Simulator speed (host seconds on this machine, after the first call)", heads, rows
    )
    path = write_result(
        args.out_dir,
        NAME,
        "wse2",
        {
            "trees": {k: str(v) for k, v in trees.items()},
            "results": results,
            "genz": genz,
            "genz_python": str(args.genz_python),
            "targets_s": TARGETS_S,
        },
        modelled=False,
    )
    out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
