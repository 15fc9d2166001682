"""Functional generation speed on the virtual wafer versus transformers `generate` (SPEC.md §8).

The benchmark model: a random Llama checkpoint (hidden 512, 8 layers, 8 query / 2 kv heads,
vocab 32000) written to a temporary directory; a 64-token prompt and 64 new tokens (EOS
ignored), greedy, float32, on the `tiny` device with an 8x8 grid, versus transformers'
`generate` (float32, eager attention, KV cache) on the same CPU with the same thread count.
After one warm-up run each, reports the median host time of `--repeats` runs, split into
prefill and per-token decode, tokens/s for both and their ratio (target: ours >= 0.5 x
transformers), the time to load and place the model and how many tokens agree; writes
benchmarks/results/generate_vs_transformers_tiny_<date>.json atomically.

    python benchmarks/generate_vs_transformers.py [--repeats 3] [--grid 8] [--threads 1]
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
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=32000,
    max_position_embeddings=1024,
)
PROMPT_LEN, NEW_TOKENS, DEVICE = 64, 64, "tiny"


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


def time_waferllm(path: Path, prompt: list[int], repeats: int, grid: int) -> dict[str, Any]:
    """Median wall time of `LLM.generate`'s work (after one warm-up), split at the first token."""
    start = time.perf_counter()
    llm = LLM(path, device=DEVICE, grid=grid)
    load_s = time.perf_counter() - start
    _our_generate(llm, prompt, 2)  # warm-up: lazy imports, allocator
    runs = [_our_generate(llm, prompt, NEW_TOKENS) for _ in range(repeats)]
    total = statistics.median(r[0] for r in runs)
    prefill = statistics.median(r[1] for r in runs)
    output = runs[-1][2]
    return {
        "load_s": load_s,
        "generate_s": [r[0] for r in runs],
        "median_s": total,
        "prefill_s": prefill,
        "decode_s_per_token": (total - prefill) / (NEW_TOKENS - 1),
        "token_ids": output.token_ids,
        "report": output.report.to_dict(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each (median)")
    parser.add_argument("--grid", type=int, default=8, help="square grid side (default 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for both (default: torch's choice). On a shared, loaded machine "
        "use 1: waferllm issues many small per-core batched ops, and OpenMP threads waiting "
        "on descheduled peers cost milliseconds per op",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prompt = torch.randint(
        3, SHAPE["vocab_size"], (PROMPT_LEN,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-llama"
        write_checkpoint(path)
        ours = time_waferllm(path, prompt, args.repeats, args.grid)
        ref = time_transformers(path, prompt, args.repeats)
    ours_s, ref_s = ours["median_s"], ref["median_s"]
    agree = next(
        (
            i
            for i, (a, b) in enumerate(zip(ours["token_ids"], ref["token_ids"], strict=True))
            if a != b
        ),
        NEW_TOKENS,
    )
    ratio = ref_s / ours_s  # ours tokens/s over transformers tokens/s
    title = f"Functional generation, {PROMPT_LEN} + {NEW_TOKENS} tokens (host wall-clock)"
    table = Table(title=title)
    columns = ("", "load (s)", "generate (s)", "tokens/s", "prefill (s)", "decode (ms/token)")
    for column in columns:
        table.add_column(column, justify="right" if column else "left")
    for label, run in (
        (f"waferllm ({DEVICE}, {args.grid}x{args.grid})", ours),
        ("transformers", ref),
    ):
        table.add_row(
            label,
            f"{run['load_s']:.2f}",
            f"{run['median_s']:.3f}",
            f"{NEW_TOKENS / run['median_s']:.1f}",
            f"{run['prefill_s']:.3f}",
            f"{run['decode_s_per_token'] * 1e3:.1f}",
        )
    out = Console(width=120)
    out.print(table)
    out.print(f"speed ratio waferllm / transformers: {ratio:.2f} (target >= 0.5)")
    out.print(f"greedy tokens identical for the first {agree} of {NEW_TOKENS}")
    result = {
        "benchmark": "generate_vs_transformers",
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)",
        "model": SHAPE,
        "threads": torch.get_num_threads(),
        "prompt_len": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "device": DEVICE,
        "grid": [args.grid, args.grid],
        "waferllm": {k: v for k, v in ours.items() if k != "report"},
        "transformers": ref,
        "speed_ratio": ratio,
        "tokens_agreeing": agree,
        "modelled_report": ours["report"],
    }
    name = f"generate_vs_transformers_{DEVICE}_{result['date']}.json"
    write_atomic(RESULTS / name, json.dumps(result, indent=2) + "\n")
    out.print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
