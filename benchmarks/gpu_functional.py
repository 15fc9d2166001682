"""Functional mode with the virtual wafer's tensors on a GPU (`torch_device="cuda"`, issue 14).

Host wall-clock seconds and host/GPU memory, never modelled; two cases (`--cases`):
- `135m`: the 135M-shaped random checkpoint of generate_vs_transformers.py at 240x240 on wse2
  cores, 5-token prompt, 24 new tokens, float32: tokens compared with the same run on the CPU
  (`--skip-cpu` leaves that run out) and with transformers `generate` on the CPU;
- `8b`: a LLaMA3-8B-shaped checkpoint (the preset's config.json, random float16 weights, std
  0.02; `--layers N` keeps the first N layers for a smoke test) at `--grid-8b` (default 360),
  5-token prompt, 8 new tokens: load, prefill and per-decode-step seconds and peak memory
  (torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on the CPU).
Runs wherever CUDA is present (`--torch-device cpu` runs the same work on the CPU, e.g. as a
smoke test with `--layers 1 --grid-8b 64`). Checkpoints are written under `--workdir` (a
temporary directory by default; the 8B one takes ~16 GB of disk) and reused when present.
Writes benchmarks/results/gpu_functional_<torch device>_<date>.json (common.write_result).

    python benchmarks/gpu_functional.py [--cases 135m,8b] [--torch-device cuda]
        [--layers 32] [--grid-8b 360] [--skip-cpu] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import write_result
from generate_vs_transformers import (
    NEW_TOKENS,
    PROMPT_LEN,
    SHAPE,
    _agreeing,
    _our_generate,
    time_transformers,
    write_checkpoint,
)
from rich.console import Console
from safetensors.torch import save_file

from waferllm import LLM
from waferllm.model.config_sources import hf_config_dict

RESULTS = Path(__file__).resolve().parent / "results"
SMALL_GRID = 240
NEW_TOKENS_8B = 8
WEIGHT_STD = 0.02  # transformers' initializer_range for Llama: logits stay finite in float16


def _prompt(vocab_size: int) -> list[int]:
    ids = torch.randint(3, vocab_size, (PROMPT_LEN,), generator=torch.Generator().manual_seed(1))
    return ids.tolist()


def _reset_peak(torch_device: str) -> None:
    if torch_device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_bytes(torch_device: str) -> dict[str, int]:
    """Peak GPU bytes allocated since the last reset, and the process's peak RSS (Linux: KiB)."""
    peak = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch_device == "cuda":
        torch.cuda.synchronize()
        peak["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return peak


def run_ours(
    path: Path, prompt: list[int], *, grid: int, new_tokens: int, torch_device: str
) -> dict[str, Any]:
    """Load, place and generate once after a 2-token warm-up; seconds split at the first token."""
    _reset_peak(torch_device)
    start = time.perf_counter()
    llm = LLM(path, device="wse2", grid=grid, torch_device=torch_device)
    load_s = time.perf_counter() - start
    _our_generate(llm, prompt, 2)  # warm-up: lazy imports, allocator, CUDA kernels
    total, prefill, output = _our_generate(llm, prompt, new_tokens)
    return {
        "torch_device": torch_device,
        "grid": [grid, grid],
        "load_s": load_s,
        "generate_s": total,
        "prefill_s": prefill,
        "decode_s_per_token": (total - prefill) / max(new_tokens - 1, 1),
        "token_ids": output.token_ids,
        **_peak_bytes(torch_device),
    }


def case_135m(workdir: Path, torch_device: str, skip_cpu: bool) -> dict[str, Any]:
    path = workdir / "bench-135m"
    if not (path / "config.json").is_file():
        write_checkpoint(path)
    prompt = _prompt(SHAPE["vocab_size"])
    ref = time_transformers(path, prompt, 1)
    runs = {
        torch_device: run_ours(
            path, prompt, grid=SMALL_GRID, new_tokens=NEW_TOKENS, torch_device=torch_device
        )
    }
    if torch_device != "cpu" and not skip_cpu:
        runs["cpu"] = run_ours(
            path, prompt, grid=SMALL_GRID, new_tokens=NEW_TOKENS, torch_device="cpu"
        )
    for run in runs.values():
        run["tokens_agreeing_transformers"] = _agreeing(run["token_ids"], ref["token_ids"])
    if "cpu" in runs and torch_device != "cpu":
        runs[torch_device]["tokens_agreeing_cpu"] = _agreeing(
            runs[torch_device]["token_ids"], runs["cpu"]["token_ids"]
        )
    return {"model": SHAPE, "new_tokens": NEW_TOKENS, "runs": runs, "transformers": ref}


def write_random_8b(path: Path, layers: int) -> None:
    """LLaMA3-8B's config.json (first `layers` layers) and random float16 weights, one
    safetensors shard per layer plus one for the embeddings, with the shard index."""
    config = hf_config_dict("llama3-8b") | {"num_hidden_layers": layers, "torch_dtype": "float16"}
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    generator = torch.Generator().manual_seed(0)

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * WEIGHT_STD).to(torch.float16)

    path.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    vocab = config["vocab_size"]
    shard(
        "embeddings.safetensors",
        {
            "model.embed_tokens.weight": normal(vocab, hidden),
            "lm_head.weight": normal(vocab, hidden),
            "model.norm.weight": torch.ones(hidden, dtype=torch.float16),
        },
    )
    for i in range(layers):
        p = f"model.layers.{i}."
        shard(
            f"layer-{i:03d}.safetensors",
            {
                p + "self_attn.q_proj.weight": normal(hidden, hidden),
                p + "self_attn.k_proj.weight": normal(kv, hidden),
                p + "self_attn.v_proj.weight": normal(kv, hidden),
                p + "self_attn.o_proj.weight": normal(hidden, hidden),
                p + "mlp.gate_proj.weight": normal(inter, hidden),
                p + "mlp.up_proj.weight": normal(inter, hidden),
                p + "mlp.down_proj.weight": normal(hidden, inter),
                p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.float16),
                p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.float16),
            },
        )
    index = {"metadata": {}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    (path / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def case_8b(workdir: Path, torch_device: str, layers: int, grid: int) -> dict[str, Any]:
    path = workdir / f"llama3-8b-random-{layers}-layers"
    if not (path / "config.json").is_file():
        write_random_8b(path, layers)
    prompt = _prompt(hf_config_dict("llama3-8b")["vocab_size"])
    run = run_ours(path, prompt, grid=grid, new_tokens=NEW_TOKENS_8B, torch_device=torch_device)
    return {
        "model": "llama3-8b shape, random float16 weights",
        "layers": layers,
        "new_tokens": NEW_TOKENS_8B,
        "run": run,
    }


def _print(out: Console, name: str, result: dict[str, Any]) -> None:
    runs = result.get("runs") or {"": result["run"]}
    for device, run in runs.items():
        memory = run.get("gpu_peak_allocated_bytes", run["host_peak_rss_bytes"]) / 2**30
        agree = run.get("tokens_agreeing_transformers", "-")
        out.print(
            f"{name} {device or run['torch_device']} {run['grid'][0]}x{run['grid'][1]}: "
            f"load {run['load_s']:.1f} s, prefill {run['prefill_s']:.2f} s, decode "
            f"{run['decode_s_per_token'] * 1e3:.0f} ms/step, peak {memory:.1f} GiB, tokens "
            f"agreeing with transformers {agree}, with cpu {run.get('tokens_agreeing_cpu', '-')}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="135m,8b", help="comma-separated: 135m, 8b")
    parser.add_argument("--torch-device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--layers", type=int, default=32, help="layers of the 8B-shaped model")
    parser.add_argument("--grid-8b", type=int, default=360, help="square grid side for 8b")
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU run of the 135m case")
    parser.add_argument("--workdir", type=Path, help="write (or reuse) checkpoints here")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if unknown := set(cases) - {"135m", "8b"}:
        parser.error(f"unknown cases {sorted(unknown)}; choose from 135m, 8b")
    if args.torch_device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --torch-device cpu for a smoke test")
    out = Console(width=140)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        if "135m" in cases:
            results["135m"] = case_135m(workdir, args.torch_device, args.skip_cpu)
            _print(out, "135m", results["135m"])
        if "8b" in cases:
            results["8b"] = case_8b(workdir, args.torch_device, args.layers, args.grid_8b)
            _print(out, "8b", results["8b"])
    gpu = torch.cuda.get_device_name() if args.torch_device == "cuda" else "none"
    payload = {"gpu": gpu, "torch_device": args.torch_device, "cases": results}
    path = write_result(RESULTS, "gpu_functional", args.torch_device, payload, modelled=False)
    out.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
