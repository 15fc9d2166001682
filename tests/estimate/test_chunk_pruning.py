"""Exact pruning of chunk sizes: a chunked prefill walk gives up once its ledger (within a
layer's walk: the ledger plus the layer count times the layer's records) passes the fastest
walk so far (`BudgetLedger`), frees what it held, and each prefill walk's routes are kept
apart, so the pruned search returns exactly what walking every candidate returns."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.pruning import unpruned

from waferllm.device import tiny
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.search import search_grids
from waferllm.mesh.budget import BudgetLedger, OverBudget
from waferllm.mesh.cost import Charge, ChargeKind, Ledger
from waferllm.mesh.memory import SramTracker
from waferllm.mesh.routes import RouteBudget
from waferllm.model.chunked import chunk_candidates
from waferllm.model.config_sources import load_config

# (layers, mesh rows, mesh cols, SRAM bytes per core, prompt, output, given prefill grid):
# rectangular tilings (no square holds the model), chunked prompts chosen, several regions
# per phase, and candidates that give up
SETUPS = (
    (4, 6, 16, 8000, 30, 3, None),
    (4, 6, 16, 8000, 60, 3, None),
    (8, 6, 16, 12000, 30, 3, None),
    (5, 6, 12, 14000, 50, 3, None),
    (5, 10, 10, 16000, 20, 12, (5, 5)),
)


def _costs(layers: int, rows: int, cols: int, sram: int) -> CostModel:
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=layers)
    device = dataclasses.replace(tiny(), mesh_rows=rows, mesh_cols=cols, sram_bytes_per_core=sram)
    return CostModel(Setup(config=config, device=device))


def _search(setup: tuple):
    layers, rows, cols, sram, prompt, output, grid = setup
    costs = _costs(layers, rows, cols, sram)
    return search_grids(costs, prompt_len=prompt, output_len=output, prefill_grid=grid)


def test_the_pruned_search_returns_exactly_the_search_that_walks_every_chunk_size(monkeypatch):
    given_up: list[int | None] = []
    walk = CostModel._prefill_walk

    def counted(self, model, prompt_len, chunk_tokens, **budget):
        try:
            return walk(self, model, prompt_len, chunk_tokens, **budget)
        except OverBudget:
            given_up.append(chunk_tokens)
            raise

    monkeypatch.setattr(CostModel, "_prefill_walk", counted)
    pruned = [_search(s) for s in SETUPS]
    assert given_up  # the setups exercise the pruning
    given = len(given_up)
    unpruned(monkeypatch)
    full = [_search(s) for s in SETUPS]
    assert len(given_up) == given  # nothing given up: every chunk size walked in full
    kinds = set()
    for fast, slow in zip(pruned, full, strict=True):
        got, want = fast.to_dict(), slow.to_dict()
        del got["host_wall_s"], want["host_wall_s"]
        assert got == want
        assert fast.best.prefill_chunk_tokens == slow.best.prefill_chunk_tokens
        for phase in ("prefill", "transition", "decode"):
            ours, theirs = getattr(fast.best, phase), getattr(slow.best, phase)
            ledgers = (ours, theirs) if phase == "transition" else (ours.ledger, theirs.ledger)
            assert ledgers[0].expanded() == ledgers[1].expanded()
            if phase != "transition":
                assert (ours.regions, ours.routes_per_core) == (
                    theirs.regions,
                    theirs.routes_per_core,
                )
        grids = (fast.best.prefill_grid, fast.best.decode_grid)
        kinds.add("rectangular" if any(g[0] != g[1] for g in grids) else "square")
        kinds.add("chunked" if fast.best.prefill_chunk_tokens else "whole")
        regions = len(fast.best.model.prefill_state.regions.regions)
        kinds.add("regions" if regions > 1 else "one region")
    assert {"rectangular", "chunked", "regions"} <= kinds


def _chunked_model(costs: CostModel):
    """A 4x4 grid of 32 KiB cores and a prompt of 3 plans and one token: two chunk sizes."""
    model = costs.model((4, 4), (4, 4))
    prompt = 3 * model.max_prompt_tokens + 1
    candidates = chunk_candidates(model.plan, prompt)
    assert len(candidates) == 2
    return model, prompt, candidates


def test_a_walk_gives_up_only_past_its_budget_and_its_prefixes_never_exceed_the_walk():
    costs = _costs(2, 4, 4, 32768)
    model, prompt, candidates = _chunked_model(costs)
    for tokens in candidates:
        full = costs._prefill_walk(model, prompt, tokens)
        records = full.ledger.records
        assert all(
            min(r.compute_cycles, r.comm_cycles, r.overhead_cycles, r.count) >= 0 for r in records
        )
        prefixes = [Ledger() for _ in records]
        for n, prefix in enumerate(prefixes):
            prefix.records = records[: n + 1]
        latencies = [p.totals().latency_cycles for p in prefixes]
        assert latencies == sorted(latencies) and latencies[-1] == full.latency_cycles
        # a budget at the walk's cost never stops it; one under it may, never wrongly
        again = costs._prefill_walk(model, prompt, tokens, budget_cycles=full.latency_cycles)
        assert again.ledger.expanded() == full.ledger.expanded()
        assert again.routes_per_core == full.routes_per_core
        live = [dict(m.sram.live) for m in model.prefill_state.all_meshes]
        for budget in (0.0, full.latency_cycles / 2):  # in the first layer walk; later
            with pytest.raises(OverBudget):
                costs._prefill_walk(model, prompt, tokens, budget_cycles=budget)
        # a walk given up leaves no buffer behind: the next walk is the first one again
        after = costs._prefill_walk(model, prompt, tokens)
        assert after.ledger.expanded() == full.ledger.expanded()
        assert (after.regions, after.routes_per_core) == (full.regions, full.routes_per_core)
        assert [dict(m.sram.live) for m in model.prefill_state.all_meshes] == live


def test_walk_order_changes_no_prefill_cost_nor_its_routes():
    forward, backward = _costs(2, 4, 4, 32768), _costs(2, 4, 4, 32768)
    model, prompt, candidates = _chunked_model(forward)
    first = {c: forward._prefill_walk(model, prompt, c) for c in candidates}
    model, _, _ = _chunked_model(backward)
    last = {c: backward._prefill_walk(model, prompt, c) for c in candidates[::-1]}
    for c, cost in first.items():
        assert cost.ledger.expanded() == last[c].ledger.expanded()
        assert (cost.regions, cost.routes_per_core) == (last[c].regions, last[c].routes_per_core)


def test_buffers_allocated_in_a_walk_that_raises_the_named_error_are_freed():
    sram = SramTracker(rows=2, cols=2, capacity_bytes=100, origin=(0, 0))
    sram.alloc("weights", 10)
    with pytest.raises(OverBudget), sram.freed_if(OverBudget):
        sram.alloc("kv", 20)
        with sram.scope():
            sram.alloc("scratch", 30)
        raise OverBudget("given up")
    assert sram.live == {"weights": 10} and sram.live_bytes_max == 10
    with pytest.raises(ValueError), sram.freed_if(OverBudget):
        sram.alloc("kv", 20)
        raise ValueError("another error leaves what it found")
    assert sram.live == {"weights": 10, "kv": 20}


def test_route_sets_configured_while_kept_apart_are_forgotten():
    routes = RouteBudget(rows=2, cols=3, limit=8, origin=(0, 0))
    routes.require("ring", 2)
    with routes.kept_apart():
        routes.require("bcast", 5)
        assert routes.routes_per_core == 7
    assert routes.routes_per_core == 2 and set(routes.sets) == {"ring"}


def test_a_layer_walk_replaying_records_counts_every_replay_against_the_budget():
    def ledger(budget: float) -> Ledger:
        layer = BudgetLedger(budget_cycles=budget).per_layer(1)
        layer.charge("step", Charge(kind=ChargeKind.COMPUTE, cycles=10.0))
        return layer

    fits = ledger(40.0)
    fits.replay(0, 1, times=3)  # 4 x 10 cycles: at the budget, not past it
    assert len(fits.records) == 4
    with pytest.raises(OverBudget):
        ledger(35.0).replay(0, 1, times=3)
