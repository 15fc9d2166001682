"""Estimates of prompts longer than the prefill plan holds (chunked) and of windowed models.

A tiny model on a device with little SRAM: the prompt is prefilled in chunks, the report says
the chunk size (breakdown.prefill.chunk_tokens and a warning), and TTFT is the fastest of the
candidate chunk sizes, each walked as the functional model runs it. With a sliding window the
shift cache evicts, so the KV capacity is the trained context and long requests fit.
"""

from __future__ import annotations

import dataclasses

import pytest

import waferllm
from waferllm.device import tiny
from waferllm.estimate.cost import Setup, cost_model
from waferllm.mesh.cost import Ledger
from waferllm.model.chunked import chunk_candidates
from waferllm.model.config_sources import load_config

SMALL = dataclasses.replace(tiny(), sram_bytes_per_core=32768)
GRID = (4, 4)


def _estimate(config, prompt_len: int, output_len: int):
    with pytest.warns(UserWarning):
        return waferllm.estimate(
            config,
            device=SMALL,
            prompt_len=prompt_len,
            output_len=output_len,
            prefill_grid=GRID,
            decode_grid=GRID,
        )


def test_a_prompt_longer_than_the_prefill_plan_is_estimated_in_the_fastest_chunks():
    config = load_config("tiny")
    costs = cost_model(Setup(config=config, device=SMALL))
    model = costs.model(GRID, GRID)
    prompt = 3 * model.max_prompt_tokens + 1
    candidates = chunk_candidates(model.plan, prompt)
    assert len(candidates) == 2 and max(candidates) < model.max_prompt_tokens
    est = _estimate(config, prompt, 3)
    report = est.report.to_dict()
    chunk = report["breakdown"]["prefill"]["chunk_tokens"]
    assert chunk in candidates
    assert any(f"chunks of {chunk} tokens" in w for w in report["warnings"])
    cycles = {}
    for tokens in candidates:
        ledger = Ledger()
        model.prefill([0] * prompt, ledger, chunk_tokens=tokens)
        cycles[tokens] = ledger.totals().latency_cycles
    assert cycles[chunk] == min(cycles.values())
    assert report["metrics"]["ttft_s"] == pytest.approx(SMALL.cycles_to_seconds(cycles[chunk]))


def test_a_prompt_that_fits_is_not_chunked_and_its_report_has_no_chunk_key():
    est = waferllm.estimate(
        "tiny", device=SMALL, prompt_len=8, output_len=2, prefill_grid=GRID, decode_grid=GRID
    )
    assert "chunk_tokens" not in est.report.to_dict()["breakdown"]["prefill"]


def test_a_windowed_model_evicts_so_its_capacity_is_the_trained_context():
    config = dataclasses.replace(
        load_config("tiny"), sliding_window=24, max_position_embeddings=4096
    )
    plain = cost_model(Setup(config=load_config("tiny"), device=SMALL)).model(GRID, GRID)
    sram_bound = plain.kv_capacity_tokens()  # the decode plan's cache without eviction
    assert 24 <= sram_bound < config.max_position_embeddings
    est = _estimate(config, 8, sram_bound + 40)  # more than SRAM holds without eviction
    report = est.report.to_dict()
    assert report["kv_capacity_tokens"]["shift"] == config.max_position_embeddings
    assert report["max_new_tokens"]["shift"] == config.max_position_embeddings - 8 + 1
    assert any("evicts older keys" in w for w in report["warnings"])
    # once the window is full every step reads the same window and shifts every row
    walks = cost_model(Setup(config=config, device=SMALL)).walks(est.ledgers.model)
    late = [walks.decode_step(c, 8).totals().latency_cycles for c in (40, 41, 90)]
    assert late[0] == late[1] == late[2]
