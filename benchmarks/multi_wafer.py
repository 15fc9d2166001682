"""Multi-wafer `fit` (issue 13 item 1): LLaMA3-70B and Qwen2-72B over linked WSE-2s and WSE-3s.

`--num-devices auto` for each model and device (the paper's 4096 + 4096 request, grids searched:
square grids as the paper autotunes and the whole-device rectangular tilings), then LLaMA3-70B
on 2..8 WSE-3s for a 2048 + 128 request, on searched grids and on 1170x585 (half a WSE-3), then
batches of B sequences overlapped in the pipeline of the fewest WSE-3s (bubbles, throughput).
A pipeline of layer ranges (fewer layers on the devices holding vocabulary tables) joined by
the inter-system link (`Device.system_link_*`: the CS-2's 12 x 100 GbE, latency a
placeholder) and its on-wafer legs to the I/O edge. A count too small for the model is a row
with the error naming how many devices it needs. Every time is modelled; host seconds
labelled as measured.
"""

from __future__ import annotations

import time
from typing import Any

import common
import torch

from waferllm.api.estimate import estimate
from waferllm.errors import WaferError

AUTO_REQUEST = {"prompt_len": 4096, "output_len": 4096}  # the paper's end-to-end request
AUTO = [(m, d) for m in ("llama3-70b", "qwen2-72b") for d in ("wse2", "wse3")]
COUNT_REQUEST = {"prompt_len": 2048, "output_len": 128}  # a chat-like request
COUNTS = ("llama3-70b", "wse3", range(2, 9))
GRIDS = ({}, {"prefill_grid": "1170x585", "decode_grid": "1170x585"})  # searched; half a WSE-3
QUICK = {"prompt_len": 128, "output_len": 4}
BATCHES = ("llama3-70b", "wse3", 5, (1, 2, 5, 10))  # model, device, devices, batch sizes


def point(model: str, device: str, num_devices: int | str, request: dict[str, Any]) -> dict:
    """One estimate as a row: the devices used, metrics, the link's share; or the error."""
    start = time.perf_counter()
    row: dict[str, Any] = {"model": model, "device": device, "requested": num_devices, **request}
    try:
        report = estimate(model, device=device, num_devices=num_devices, **request).to_dict()
    except WaferError as exc:
        return {**row, "error": str(exc), "host_wall_s": time.perf_counter() - start}
    m, breakdown = report["metrics"], report["breakdown"]
    link = breakdown.get("pipeline", {}).get("system_link", {})
    decode_s = breakdown["decode"]["modelled_s"]
    return {
        **row,
        "num_devices": report["num_devices"],
        "prefill_grid": report["prefill_grid"],
        "decode_grid": report["decode_grid"],
        "metrics": m,
        "link_prefill_s": link.get("prefill", {}).get("modelled_s", 0.0),
        "link_decode_s": link.get("decode", {}).get("modelled_s", 0.0),
        "decode_s": decode_s,
        "kv_capacity_tokens": report["kv_capacity_tokens"],
        "pipeline": breakdown.get("pipeline"),
        "batch": breakdown.get("batch"),
        "error": None,
        "host_wall_s": time.perf_counter() - start,
    }


def _cells(r: dict) -> list[Any]:
    if r["error"]:
        return [r["model"], r["device"], r["requested"], "-", _grids(r), "-", "-", "-", "-", "-",
                r["error"][:120]]  # fmt: skip
    m = r["metrics"]
    share = r["link_decode_s"] / r["decode_s"] if r["decode_s"] else 0.0
    return [
        r["model"],
        r["device"],
        r["requested"],
        r["num_devices"],
        _grids(r),
        f"{m['ttft_s'] * 1e3:,.1f}",
        "-" if m["tpot_s"] is None else f"{m['tpot_s'] * 1e3:,.3f}",
        f"{m['e2e_tpr']:,.1f}",
        f"{r['link_prefill_s'] * 1e3:,.3f}",
        f"{share:.1%}",
        f"{r['host_wall_s']:.0f} s",
    ]


def _batch_cells(r: dict) -> list[Any]:
    if r["error"]:
        return [r["batch_size"], r["requested"], _grids(r), "-", "-", "-", "-", "-",
                r["error"][:120]]  # fmt: skip
    m, b = r["metrics"], r["batch"]
    bubbles = b["decode_bubble_fraction"] if b else r["pipeline"]["system_link"]["decode"][
        "mean_device_busy_fraction"]  # fmt: skip
    bubbles = bubbles if b else 1.0 - bubbles
    tokens = b["decode_tokens_per_s"] if b else 1.0 / m["tpot_s"]
    prefill = b["prefill_s"] if b else m["ttft_s"]
    return [
        r["batch_size"],
        r["num_devices"],
        _grids(r),
        f"{m['ttft_s'] * 1e3:,.1f}",
        f"{m['tpot_s'] * 1e3:,.3f}",
        f"{tokens:,.0f}",
        f"{bubbles:.1%}",
        f"{prefill * 1e3:,.1f}",
        f"{r['host_wall_s']:.0f} s",
    ]


def _grids(r: dict) -> str:
    """The grids used ([rows, cols] from the report), or as asked ("RxC"), or "searched"."""
    p, d = r.get("prefill_grid"), r.get("decode_grid")
    if p is None or isinstance(p, str):
        return p or "searched"
    return f"{p[0]}x{p[1]}" if p == d else f"{p[0]}x{p[1]}/{d[0]}x{d[1]}"


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    model, device, counts = COUNTS
    if args.quick:
        auto = [point(*AUTO[0], "auto", QUICK)]
        fixed = [point(model, device, 8, {**QUICK, **GRIDS[1]})]
    else:
        auto = [point(m, d, "auto", AUTO_REQUEST) for m, d in AUTO]
        fixed = [point(model, device, n, {**COUNT_REQUEST, **g}) for g in GRIDS for n in counts]
    b_model, b_device, b_count, sizes = BATCHES
    batches = [
        point(b_model, b_device, b_count, {**COUNT_REQUEST, "batch_size": b})
        for b in (sizes[:2] if args.quick else sizes)
    ]
    out = common.console()
    columns = ["model", "device", "asked", "devices", "grids", "TTFT ms", "TPOT ms",
               "e2e TPR", "link in TTFT ms", "link share of decode",
               "host (measured) / error"]  # fmt: skip
    for rows in (auto, fixed):
        tokens = f"{rows[0]['prompt_len']} + {rows[0]['output_len']} tokens"
        title = f"Multi-wafer fit, {tokens} (modelled)"
        common.print_table(out, title, columns, [_cells(r) for r in rows])
    batch_columns = ["batch", "devices", "grids", "TTFT ms", "round ms", "decode tok/s",
                     "decode bubbles", "prefill all ms", "host (measured) / error"]  # fmt: skip
    common.print_table(out, f"Batched pipeline, {b_model} on {b_count} {b_device}s (modelled)",
                       batch_columns, [_batch_cells(r) for r in batches])  # fmt: skip
    payload = {"auto": auto, "counts": fixed, "batches": batches}
    print(common.write_result(args.out_dir, "multi_wafer", "wse2-wse3", payload))


if __name__ == "__main__":
    main()
