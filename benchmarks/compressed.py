"""Compressed weights and KV cache: does LLaMA3-70B fit one WSE-3 in int4, and how fast?

For each stored dtype (float16, int8, int4 for weights and KV alike; one float16 scale per 32
elements along the reduced axis, SPEC.md §10.2): the weights' stored size against the
device's SRAM, the `fit` estimate (grids searched; its refusal when the model does not fit, as
the estimate words it), and the `per-layer` extrapolation (the paper's method) for the speed.
The same for LLaMA3-8B on WSE-2, which fits in every dtype (compression buys KV capacity).
Every number is modelled; the dequantisation per use is charged (kernels/dequant.py). Writes
benchmarks/results/compressed_wse3_<date>.json.

    PYTHONPATH=src python benchmarks/compressed.py [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from common import console, parser, print_table, write_result

from waferllm.api.estimate import estimate
from waferllm.device import get_device
from waferllm.errors import WaferError
from waferllm.mesh.storage import StoredDtype, bytes_per_element
from waferllm.model.config_sources import load_config

NAME = "compressed"
DTYPES = ("float16", "int8", "int4")
CASES = (("llama3-70b", "wse3"), ("llama3-8b", "wse2"))
QUICK_CASES = (("tiny", "tiny"),)
PROMPT_LEN, OUTPUT_LEN = 4096, 4096
QUICK_LEN = 64


def _one(model: str, device: str, dtype: str, placement: str, length: int) -> dict[str, Any]:
    """One estimate (grids searched) as a row; a refusal is a row with its message."""
    try:
        est = estimate(
            model,
            device=device,
            prompt_len=length,
            output_len=length,
            placement=placement,
            weight_dtype=dtype,
            kv_dtype=dtype,
        )
    except WaferError as exc:
        return {"fits": False, "error": str(exc)}
    m, report = est.metrics, est.report
    return {
        "fits": True,
        "prefill_grid": report.prefill_grid,
        "decode_grid": report.decode_grid,
        "regions": [len(est.prefill.origins), len(est.decode.origins)],
        "ttft_s": m.ttft_s,
        "tpot_s": m.tpot_s,
        "decode_tpr": m.decode_tpr,
        "e2e_tpr": m.e2e_tpr,
        "peak_sram_bytes_per_core": m.peak_sram_bytes_per_core,
        "kv_capacity_tokens": report.kv_capacity_tokens.shift,
        "kv_capacity_reason": report.kv_capacity_tokens.reason or None,
    }


def _sizes(model: str, device: str, dtype: str) -> dict[str, float]:
    config, dev = load_config(model), get_device(device)
    weights = config.num_params * bytes_per_element(StoredDtype(dtype), dev.storage_bytes)
    sram = dev.num_cores * dev.sram_bytes_per_core
    return {"weights_gb": weights / 1e9, "sram_gb": sram / 1e9, "weights_share": weights / sram}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    torch.set_num_threads(1)
    cases, length = (QUICK_CASES, QUICK_LEN) if args.quick else (CASES, PROMPT_LEN)
    out = console()
    results: list[dict[str, Any]] = []
    for model, device in cases:
        for dtype in DTYPES:
            row = {"model": model, "device": device, "dtype": dtype}
            row |= _sizes(model, device, dtype)
            row["fit"] = _one(model, device, dtype, "fit", length)
            row["per_layer"] = _one(model, device, dtype, "per-layer", length)
            results.append(row)
    _print(out, results, length)
    path = write_result(
        args.out_dir,
        NAME,
        "wse3" if not args.quick else "tiny",
        {"prompt_len": length, "output_len": length, "results": results},
    )
    out.print(f"wrote {path}")
    return 0


def _print(out: Any, results: list[dict[str, Any]], length: int) -> None:
    rows = []
    for r in results:
        fit, per = r["fit"], r["per_layer"]
        rows.append(
            [
                f"{r['model']} {r['device']} {r['dtype']}",
                f"{r['weights_gb']:.1f} / {r['sram_gb']:.1f} ({r['weights_share']:.0%})",
                "yes" if fit["fits"] else "no",
                f"{fit['decode_tpr']:.0f}" if fit["fits"] else "-",
                f"{per['ttft_s']:.3f}" if per["fits"] else "-",
                f"{per['decode_tpr']:.0f}" if per["fits"] else "-",
                f"{per['e2e_tpr']:.0f}" if per["fits"] else "-",
            ]
        )
    columns = ["model, device, stored dtype", "weights GB / SRAM GB", "fit", "fit decode TPR",
               "per-layer TTFT s", "per-layer decode TPR", "per-layer e2e TPR"]  # fmt: skip
    print_table(out, f"{length}-token prompt, {length} new tokens (modelled)", columns, rows)
    for r in results:
        if not r["fit"]["fits"]:
            out.print(f"{r['model']} {r['dtype']} fit: {r['fit']['error']}")


if __name__ == "__main__":
    raise SystemExit(main())
