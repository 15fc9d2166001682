"""Measure on a real H100 what the GPU baseline predicts for one, as a check (never a fit).

Times, with random bf16 weights of LLaMA3-8B's shapes in plain PyTorch (not SGLang): a large
device copy (achieved HBM bandwidth), Table 6's GEMV sizes, the per-kernel floor of a CUDA-graph
replay, one decode step at a 4K context (CUDA graph) and a 4096-token prefill; prints each
beside `waferllm gpu`'s prediction for one H100 and writes JSON to $OUT (or the current folder);
the run of record is benchmarks/results/gpu_h100_check_h100_<date>.json.

    PYTHONPATH=src python benchmarks/gpu_h100_check.py            # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_h100_check.py --smoke    # tiny shapes on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from waferllm.baselines.gpu import decode_cost, gemv_time_s, prefill_cost
from waferllm.baselines.gpu_specs import h100
from waferllm.baselines.gpu_stack import ideal_stack, paper_stack
from waferllm.model.config_sources import load_config

BF16 = torch.bfloat16


def _timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of `fn` after two warm-ups (device events on CUDA)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _graphed(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` captured into a CUDA graph (replayed), or `fn` itself on the CPU."""
    if device.type != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _gemv_seconds(size: int, device: torch.device, reps: int) -> float:
    """[1, size] @ [size, size] in bf16, alternating two matrices so no cache holds one."""
    mats = [torch.empty(size, size, device=device, dtype=BF16).normal_() for _ in range(2)]
    x = torch.randn(1, size, device=device, dtype=BF16)
    turn = iter(range(10**9))
    return _timed(lambda: x @ mats[next(turn) % 2], device, reps)


class Llama:
    """Random-weight Llama decoder in plain PyTorch: fused QKV and gate/up weights, GQA."""

    def __init__(self, cfg, device: torch.device, context: int) -> None:
        d, hd = cfg.hidden_size, cfg.head_dim
        self.cfg, self.d, self.hd = cfg, d, hd
        self.nq, self.nkv, self.f = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        )

        def w(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, device=device, dtype=BF16).normal_(0, 0.02)

        qkv = (self.nq + 2 * self.nkv) * hd
        self.layers = [
            dict(
                ln1=torch.ones(d, device=device, dtype=BF16),
                wqkv=w(d, qkv),
                wo=w(self.nq * hd, d),
                ln2=torch.ones(d, device=device, dtype=BF16),
                wgu=w(d, 2 * self.f),
                wd=w(self.f, d),
                kc=w(self.nkv, context + 1, hd),
                vc=w(self.nkv, context + 1, hd),
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        self.lm_head = w(d, cfg.vocab_size)
        self.embed = w(cfg.vocab_size, d)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
        angles = torch.outer(torch.arange(context + 1, device=device).float(), inv)
        self.cos = torch.cat([angles.cos()] * 2, -1).to(BF16)
        self.sin = torch.cat([angles.sin()] * 2, -1).to(BF16)

    def _rope(self, x: torch.Tensor, pos: slice) -> torch.Tensor:  # x: [T, heads, hd]
        half = self.hd // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * self.cos[pos, None] + rotated * self.sin[pos, None]

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Tokens `ids` at positions start.. (prefill when start == 0, a decode step otherwise)."""
        t, hd = ids.shape[0], self.hd
        pos = slice(start, start + t)
        h = self.embed[ids]
        for lay in self.layers:
            x = F.rms_norm(h, (self.d,), lay["ln1"], 1e-5)
            q, k, v = (x @ lay["wqkv"]).split([self.nq * hd, self.nkv * hd, self.nkv * hd], -1)
            q = self._rope(q.view(t, self.nq, hd), pos)
            lay["kc"][:, pos] = self._rope(k.view(t, self.nkv, hd), pos).transpose(0, 1)
            lay["vc"][:, pos] = v.view(t, self.nkv, hd).transpose(0, 1)
            keys, values = lay["kc"][:, : start + t], lay["vc"][:, : start + t]
            if t > 1:  # prefill: causal flash attention, kv heads repeated for each group
                rep = self.nq // self.nkv
                attn = F.scaled_dot_product_attention(
                    q.transpose(0, 1).unsqueeze(0).contiguous(),
                    keys.repeat_interleave(rep, 0).unsqueeze(0),
                    values.repeat_interleave(rep, 0).unsqueeze(0),
                    is_causal=True,
                )[0].transpose(0, 1)
            else:  # decode: a kv head's query group is a 'sequence' of n_rep queries
                group = q.view(1, self.nkv, self.nq // self.nkv, hd)
                attn = F.scaled_dot_product_attention(group, keys[None], values[None])
            h = h + attn.reshape(t, -1) @ lay["wo"]
            x = F.rms_norm(h, (self.d,), lay["ln2"], 1e-5)
            gate, up = (x @ lay["wgu"]).chunk(2, -1)
            h = h + (F.silu(gate) * up) @ lay["wd"]
        return (F.rms_norm(h[-1:], (self.d,), None, 1e-5) @ self.lm_head).argmax(-1)


def _profile(fn: Callable[[], object], label: str) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(f"--- {label}")
    print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--profile", action="store_true", help="print the top kernels")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    name = "tiny" if args.smoke else "llama3-8b"
    context = 64 if args.smoke else 4096
    gemv_sizes = (256, 512) if args.smoke else (16384, 32768)
    reps = 3 if args.smoke else 20
    cfg = load_config(name)
    gpu, paper, ideal = h100(), paper_stack(), ideal_stack()
    rows: list[dict[str, object]] = []

    def row(what: str, measured: float, modelled: float | None, note: str = "") -> None:
        rows.append({"what": what, "measured": measured, "modelled": modelled, "note": note})

    src = torch.empty(2**30 if not args.smoke else 2**20, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    copy_s = _timed(lambda: dst.copy_(src), device, reps)
    row(
        "HBM copy GB/s (read+write)",
        2 * src.numel() / copy_s / 1e9,
        gpu.hbm_efficiency * gpu.hbm_bytes_per_s / 1e9,
        "model: hbm_efficiency x 3.35 TB/s",
    )
    for size in gemv_sizes:
        seconds = _gemv_seconds(size, device, reps)
        modelled = gemv_time_s(gpu=gpu, num_gpus=1, k=size, n=size, stack=ideal)
        row(f"GEMV {size}", seconds, modelled, "ideal stack (a bare kernel)")
    small = torch.zeros(4096, device=device)
    kernels = 500

    def many_small() -> None:
        for _ in range(kernels):
            small.add_(1.0)

    floor = _timed(_graphed(many_small, device), device, reps) / kernels
    row("kernel floor s (graph replay)", floor, gpu.kernel_floor_s, "h100 kernel_floor_s")
    model = Llama(cfg, device, context)
    token = torch.zeros(1, dtype=torch.long, device=device)
    step = _graphed(lambda: model.forward(token, context), device)
    decode_s = _timed(step, device, reps)
    for label, stack in (("ideal", ideal), ("paper", paper)):
        modelled = decode_cost(cfg, gpu, 1, np.array([context + 1.0]), stack).time_s
        row(f"decode step s at context {context}", decode_s, modelled, f"{label} stack")
    prompt = torch.randint(0, cfg.vocab_size, (context,), device=device)
    with torch.no_grad():
        prefill_s = _timed(lambda: model.forward(prompt, 0), device, max(3, reps // 5))
    for label, stack in (("ideal", ideal), ("paper", paper)):
        modelled = prefill_cost(cfg, gpu, 1, context, stack).time_s
        row(f"prefill s of {context} tokens", prefill_s, modelled, f"{label} stack")

    if args.profile:
        _profile(lambda: model.forward(prompt, 0), "prefill")
        _profile(lambda: model.forward(token, context), "decode step (eager)")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"
    print(f"device: {device_name}; torch {torch.__version__}; model {name} (random bf16 weights)")
    print(f"{'what':38s} {'measured':>12s} {'model (h100)':>13s} {'model/meas':>10s}")
    for r in rows:
        ratio = r["modelled"] / r["measured"] if r["modelled"] else float("nan")  # type: ignore[operator]
        print(f"{r['what']:38s} {r['measured']:12.4g} {r['modelled']:13.4g} {ratio:10.2f}")
    out = Path(os.environ.get("OUT", "."))
    (out / "gpu_h100_check.json").write_text(
        json.dumps({"device": device_name, "rows": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
