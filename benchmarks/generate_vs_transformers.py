"""Functional generation speed on the virtual wafer versus transformers `generate` (SPEC.md §8).

The benchmark model (issue 14): a random Llama checkpoint shaped like a 135M-parameter model
(hidden 576, 30 layers, 9 query / 3 kv heads, intermediate 1536, vocab 49152, tied
embeddings), written to a temporary directory (or `--checkpoint DIR`, kept for reruns); a
5-token prompt and 24 new tokens (EOS ignored), greedy, float32, on square grids of
`--grids` (default 16, 64, 120, 240: the `tiny` device up to its 64x64 mesh, `wse2` above,
both with WSE-2's clock, links and latencies), versus transformers' `generate` (float32, eager
attention, KV cache) on the same CPU with the same thread count. Host wall-clock seconds:
load and place, prefill (to the first token), per decode step, their ratio to transformers
(tokens/s ours over theirs; targets >= 0.5 at 16x16 and >= 0.25 at 120x120) and per phase
(prefill, decode step: their seconds over ours), the decode step
over the smallest grid's (target at 240x240: <= 3), and whether the tokens are identical.
`--torch-device cuda` puts the virtual wafer's tensors on a GPU. Writes
benchmarks/results/generate_vs_transformers_<date>.json atomically.

    python benchmarks/generate_vs_transformers.py [--grids 16,64,120,240] [--repeats 1]
        [--threads 1] [--torch-device cpu] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from waferllm import LLM, SamplingParams
from waferllm.cli.common import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
PROMPT_LEN, NEW_TOKENS = 5, 24
TINY_MESH_SIDE = 64  # the `tiny` device's mesh; larger grids run on `wse2`
TARGETS = {"ratio_16": 0.5, "ratio_120": 0.25, "decode_240_over_16": 3.0}


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def write_checkpoint(path: Path, seed: int = 0) -> None:
    """A random Llama checkpoint of the benchmark shape (no tokenizer: prompts are ids)."""
    import transformers

    transformers.logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**SHAPE, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(str(path), safe_serialization=True)


def _hf_generate(model: Any, ids: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=2,
        )
    return time.perf_counter() - start, out[0, ids.shape[1] :].tolist()


def time_transformers(path: Path, prompt: list[int], repeats: int) -> dict[str, Any]:
    """Median wall time of `generate` (after one warm-up); prefill = a one-token generate."""
    import transformers

    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - start
    ids = torch.tensor([prompt])
    _hf_generate(model, ids, 2)  # warm-up: lazy imports, allocator
    runs = [_hf_generate(model, ids, NEW_TOKENS) for _ in range(repeats)]
    first = [_hf_generate(model, ids, 1)[0] for _ in range(repeats)]
    total = statistics.median(r[0] for r in runs)
    prefill = statistics.median(first)
    return {
        "load_s": load_s,
        "generate_s": [r[0] for r in runs],
        "median_s": total,
        "prefill_s": prefill,
        "decode_s_per_token": (total - prefill) / (NEW_TOKENS - 1),
        "token_ids": runs[-1][1],
    }


def _our_generate(llm: LLM, prompt: list[int], new_tokens: int) -> tuple[float, float, Any]:
    """(total wall s, wall s to the first token, output) of one streamed request."""
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    first, output = None, None
    for chunk in llm.stream(prompt, params):
        first = first if first is not None else time.perf_counter() - start
        output = chunk.output
    return time.perf_counter() - start, first or 0.0, output


def time_waferllm(
    path: Path, prompt: list[int], repeats: int, grid: int, torch_device: str
) -> dict[str, Any]:
    """Median wall time of `LLM.stream`'s work (after a 2-token warm-up), split at the first
    token."""
    device = "tiny" if grid <= TINY_MESH_SIDE else "wse2"
    start = time.perf_counter()
    llm = LLM(path, device=device, grid=grid, torch_device=torch_device)
    load_s = time.perf_counter() - start
    _our_generate(llm, prompt, 2)  # warm-up: lazy imports, allocator
    runs = [_our_generate(llm, prompt, NEW_TOKENS) for _ in range(repeats)]
    total = statistics.median(r[0] for r in runs)
    prefill = statistics.median(r[1] for r in runs)
    return {
        "device": device,
        "grid": [grid, grid],
        "load_s": load_s,
        "generate_s": [r[0] for r in runs],
        "median_s": total,
        "prefill_s": prefill,
        "decode_s_per_token": (total - prefill) / (NEW_TOKENS - 1),
        "token_ids": runs[-1][2].token_ids,
    }


def _agreeing(ours: list[int], ref: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b), len(ref))


def _table(rows: dict[int, dict[str, Any]], ref: dict[str, Any], smallest: int) -> Table:
    table = Table(title=f"Functional generation, {PROMPT_LEN} + {NEW_TOKENS} tokens (host s)")
    for column in (
        "",
        "load",
        "generate",
        "prefill",
        "decode ms/step",
        "ratio to transformers",
        "prefill / decode ratio",
        f"decode / {smallest}x{smallest}'s",
        "tokens identical",
    ):
        table.add_column(column, justify="right" if column else "left")
    for grid, run in rows.items():
        table.add_row(
            f"waferllm {run['device']} {grid}x{grid}",
            f"{run['load_s']:.2f}",
            f"{run['median_s']:.3f}",
            f"{run['prefill_s']:.3f}",
            f"{run['decode_s_per_token'] * 1e3:.1f}",
            f"{run['speed_ratio']:.3f}",
            f"{run['prefill_ratio']:.3f} / {run['decode_ratio']:.3f}",
            f"{run['decode_over_smallest']:.2f}",
            f"{run['tokens_agreeing']}/{NEW_TOKENS}",
        )
    table.add_row(
        "transformers",
        f"{ref['load_s']:.2f}",
        f"{ref['median_s']:.3f}",
        f"{ref['prefill_s']:.3f}",
        f"{ref['decode_s_per_token'] * 1e3:.1f}",
        "1",
        "1 / 1",
        "",
        "",
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="16,64,120,240", help="square grid sides")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs each (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for both (default: torch's choice). On a shared, loaded machine "
        "use 1: waferllm issues many small per-core batched ops, and OpenMP threads waiting "
        "on descheduled peers cost milliseconds per op",
    )
    parser.add_argument("--torch-device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--checkpoint", type=Path, help="write (or reuse) the model here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    grids = sorted(int(g) for g in args.grids.split(","))
    prompt = torch.randint(
        3, SHAPE["vocab_size"], (PROMPT_LEN,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or Path(tmp) / "bench-llama"
        if not (path / "config.json").is_file():
            write_checkpoint(path)
        ref = time_transformers(path, prompt, args.repeats)
        rows = {g: time_waferllm(path, prompt, args.repeats, g, args.torch_device) for g in grids}
    smallest = rows[grids[0]]["decode_s_per_token"]
    for run in rows.values():
        run["speed_ratio"] = ref["median_s"] / run["median_s"]  # ours tokens/s over theirs
        run["prefill_ratio"] = ref["prefill_s"] / run["prefill_s"]  # theirs over ours, per phase
        run["decode_ratio"] = ref["decode_s_per_token"] / run["decode_s_per_token"]
        run["decode_over_smallest"] = run["decode_s_per_token"] / smallest
        run["tokens_agreeing"] = _agreeing(run["token_ids"], ref["token_ids"])
    out = Console(width=140)
    out.print(_table(rows, ref, grids[0]))
    out.print(f"targets: {TARGETS} (ratios are tokens/s, ours over transformers)")
    date = datetime.date.today().isoformat()
    result = {
        "benchmark": "generate_vs_transformers",
        "date": date,
        "commit": _commit(),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)",
        "host_wall_clock": "seconds measured on this machine, not modelled",
        "model": SHAPE,
        "threads": torch.get_num_threads(),
        "torch_device": args.torch_device,
        "prompt_len": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "waferllm": {str(g): run for g, run in rows.items()},
        "transformers": ref,
        "targets": TARGETS,
    }
    name = f"generate_vs_transformers_{date}.json"
    write_atomic(RESULTS / name, json.dumps(result, indent=2) + "\n")
    out.print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
