"""Bit-identity snapshots: what the code outputs for a fixed set of requests, as canonical JSON.

`snapshot()` runs a fixed set of `estimate` requests, functional generations of seeded tiny
checkpoints (tokens, logits digests and every ledger record) and `reproduce`, and returns one
JSON-able dict. `tests/golden/golden.json` holds the snapshot of a reference commit;
`test_bit_identity.py` compares. Host wall-clock fields are dropped; ledgers are compared as
multisets of records (a record with count n equals n identical records), so a change of
record order that keeps every record is not a difference.

Regenerate after an intended change of numbers (and say why in the commit):
    python tests/golden/snapshot.py --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"

# (case name, estimate keyword arguments)
ESTIMATE_CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "llama3-8b-wse2-per-layer-660-420",
        dict(
            model="llama3-8b",
            device="wse2",
            prompt_len=4095,
            output_len=2,
            prefill_grid=660,
            decode_grid=420,
            placement="per-layer",
        ),
    ),
    (
        "llama3-8b-wse2-per-layer-480-540-long",
        dict(
            model="llama3-8b",
            device="wse2",
            prompt_len=4096,
            output_len=64,
            prefill_grid=480,
            decode_grid=540,
            placement="per-layer",
        ),
    ),
    (
        "llama3-8b-wse2-fit-360-300",
        dict(
            model="llama3-8b",
            device="wse2",
            prompt_len=1024,
            output_len=128,
            prefill_grid=360,
            decode_grid=300,
        ),
    ),
    (
        "llama3-8b-wse3-per-layer-concat",
        dict(
            model="llama3-8b",
            device="wse3",
            prompt_len=512,
            output_len=40,
            prefill_grid=600,
            decode_grid=360,
            kv_cache="concat",
            placement="per-layer",
        ),
    ),
    (
        "llama2-13b-wse2-per-layer-600-420",
        dict(
            model="llama2-13b",
            device="wse2",
            prompt_len=2048,
            output_len=16,
            prefill_grid=600,
            decode_grid=420,
            placement="per-layer",
        ),
    ),
    (
        "qwen2-72b-wse3-per-layer-720-540",
        dict(
            model="qwen2-72b",
            device="wse3",
            prompt_len=1024,
            output_len=8,
            prefill_grid=720,
            decode_grid=540,
            placement="per-layer",
        ),
    ),
    (
        "mistral-7b-wse2-per-layer-nonsquare",
        dict(
            model="mistral-7b",
            device="wse2",
            prompt_len=300,
            output_len=20,
            prefill_grid="360x480",
            decode_grid="300x400",
            placement="per-layer",
        ),
    ),
    (
        "tiny-tiny-searched",
        dict(model="tiny", device="tiny", prompt_len=30, output_len=12),
    ),
    (
        "llama3-8b-wse2-searched",
        dict(model="llama3-8b", device="wse2", prompt_len=4096, output_len=256),
    ),
)

# (case name, make_checkpoint kwargs, LLM kwargs, prompt ids, new tokens)
GENERATE_CASES: tuple[tuple[str, dict[str, Any], dict[str, Any], list[int], int], ...] = (
    ("llama-2x3", {"family": "llama"}, {"grid": "2x3"}, [0, 37, 102, 251, 17, 288, 64, 199, 5], 7),
    (
        "qwen2-tied-3x3-to-2x3-concat",
        {"family": "qwen2_tied"},
        {"prefill_grid": "3x3", "decode_grid": "2x3", "kv_cache": "concat"},
        [0, 37, 102, 251, 17],
        6,
    ),
    (
        "mistral-window-4x4-both",
        {"family": "mistral", "sliding_window": 5},
        {"grid": 4, "resident_layouts": "both"},
        [0, 37, 102, 251, 17, 288, 64, 199, 5, 9, 11],
        5,
    ),
    (
        "llama-bias-gqa-5x4",
        {"family": "llama", "attention_bias": True, "mlp_bias": True},
        {"prefill_grid": "4x5", "decode_grid": "5x4"},
        [0, 37, 102, 251, 17, 288],
        5,
    ),
)

# Host wall-clock fields (real time on this machine) and provenance (the commit, the command
# line: how a result was made, which changes with every commit) are never results.
_WALL_KEYS = ("host_wall_s", "host_wall", "wall_s", "provenance")


def _strip_wall(value: Any) -> Any:
    """Drop host wall-clock fields and provenance (never a result)."""
    if isinstance(value, dict):
        return {k: _strip_wall(v) for k, v in value.items() if k not in _WALL_KEYS}
    if isinstance(value, list | tuple):
        return [_strip_wall(v) for v in value]
    if isinstance(value, float):
        return repr(float(value))  # exact; numpy float64 and float print alike
    return value


def ledger_digest(records: Any) -> dict[str, Any]:
    """A ledger as a multiset of records: sha256 of the sorted (record, count) list, plus the
    record count and the totals (readable when the digest differs)."""
    counts: Counter[str] = Counter()
    for rec in records:
        fields = dict(vars(rec))
        count = fields.pop("count")
        counts[json.dumps(_strip_wall(fields), sort_keys=True)] += count
    canonical = json.dumps(sorted(counts.items()))
    return {
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "records": sum(counts.values()),
    }


def _totals(ledger: Any) -> dict[str, str]:
    totals = ledger.totals()
    return {k: repr(v) for k, v in sorted(vars(totals).items())}


def estimate_snapshot() -> dict[str, Any]:
    from waferllm import estimate
    from waferllm.estimate.cost import clear_cache

    # From cold caches: a cached model's per-region SRAM peaks are running maxima over every
    # request it served, so sram_used_fraction can depend on earlier requests (a known defect).
    clear_cache()
    out: dict[str, Any] = {}
    for name, kwargs in ESTIMATE_CASES:
        est = estimate(**kwargs)
        report = est.to_dict()
        if isinstance(report.get("breakdown"), dict) and report["breakdown"].get("search"):
            report["breakdown"]["search"].pop("host_wall_s", None)
        ledgers = est.ledgers
        out[name] = {
            "report": _strip_wall(report),
            "prefill": ledger_digest(ledgers.prefill.ledger.records),
            "transition": ledger_digest(ledgers.transition.records),
            "decode": ledger_digest(ledgers.decode.ledger.records),
            "prefill_totals": _totals(ledgers.prefill.ledger),
            "decode_totals": _totals(ledgers.decode.ledger),
        }
    return out


def generate_snapshot() -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    from helpers.checkpoints import make_checkpoint

    from waferllm import LLM, SamplingParams
    from waferllm.engine.engine import Engine

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ckpt_kwargs, llm_kwargs, prompt, new_tokens in GENERATE_CASES:
            family = ckpt_kwargs.pop("family") if "family" in ckpt_kwargs else "llama"
            path = make_checkpoint(Path(tmp), family, **ckpt_kwargs)
            ckpt_kwargs["family"] = family
            llm = LLM(path, device="tiny", **llm_kwargs)
            params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
            result = llm.generate([prompt], params)[0]
            # the same request through the engine, for its ledgers and logits
            generation = Engine(llm.model).generate(prompt, params)
            logits = []
            for step in generation:
                del step
                held = llm.model._logits  # decode steps hold [1, V] (a batch of one)
                logits.append(held.mesh.gather(held).double().reshape(-1))
            trace = generation.trace
            stacked = torch.stack(logits)
            out[name] = {
                "token_ids": result.token_ids,
                "report": _strip_wall(result.report.to_dict()),
                "engine_token_ids": trace.token_ids,
                "prefill": ledger_digest(trace.prefill.records),
                "transition": ledger_digest(trace.transition.records),
                "decode": [ledger_digest(d.records) for d in trace.decode],
                "logits_sum": repr(float(stacked.sum())),
                "logits_abs_sum": repr(float(stacked.abs().sum())),
            }
    return out


def reproduce_snapshot() -> dict[str, Any]:
    from waferllm import reproduce

    return _strip_wall(reproduce().to_dict())


def snapshot() -> dict[str, Any]:
    return {
        "estimate": estimate_snapshot(),
        "generate": generate_snapshot(),
        "reproduce": reproduce_snapshot(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="overwrite golden.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    snap = snapshot()
    text = json.dumps(snap, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN} ({len(text)} bytes)")
    else:
        print(text)


if __name__ == "__main__":
    main()
