"""The grid search: the fastest feasible pair, infeasible grids as points, fixed grids kept."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from waferllm import estimate
from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.search import COARSE_POINTS, search_grids
from waferllm.model.config_sources import load_config

# A 6x6 device: every side 1..6 is a coarse candidate, so stage 1 is exhaustive.
SIX = dataclasses.replace(tiny(), mesh_rows=COARSE_POINTS, mesh_cols=COARSE_POINTS)


def test_the_search_finds_the_brute_force_optimum_when_every_side_is_a_candidate():
    calls: list[tuple[int, int, str]] = []
    est = estimate(
        "tiny",
        device=SIX,
        prompt_len=10,
        output_len=2,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    costs = CostModel(Setup(config=load_config("tiny"), device=SIX))
    objectives = {}
    for p, d in itertools.product(range(1, 7), repeat=2):
        try:
            cost = costs.request((p, p), (d, d), 10, 2)
        except WaferError:
            continue
        objectives[p, d] = cost.objective_s
    best = min(objectives, key=objectives.__getitem__)
    assert est.search is not None
    assert (est.report.prefill_grid[0], est.report.decode_grid[0]) == best
    assert est.search.objective_s == pytest.approx(objectives[best])
    metrics = est.metrics
    total = metrics.ttft_s + metrics.transition_s + metrics.tpot_s
    assert total == pytest.approx(objectives[best])
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert all(done <= total for done, total, _ in calls)
    assert est.report.breakdown["search"]["evaluated"] == est.search.evaluated


def test_a_given_grid_is_kept_and_only_the_other_phase_is_searched():
    est = estimate("tiny", device=SIX, prompt_len=10, output_len=4, prefill_grid="5x5")
    assert est.report.prefill_grid == (5, 5)
    search = est.report.breakdown["search"]
    assert search["prefill_points"] == [] and search["decode_points"]
    assert est.report.decode_grid == tuple(search["decode_grid"])


def test_infeasible_sides_are_points_with_their_reason():
    cramped = dataclasses.replace(SIX, sram_bytes_per_core=12_000)
    est = estimate("tiny", device=cramped, prompt_len=10, output_len=2)
    points = est.report.breakdown["search"]["decode_points"]
    failed = [p for p in points if p["seconds"] is None]
    assert failed and all("SRAM" in p["reason"] or "fit" in p["reason"] for p in failed)
    assert est.report.decode_grid[0] > min(p["grid"][0] for p in failed)


def test_candidates_priced_on_scouts_give_the_search_every_walk_gives(monkeypatch):
    # 5 layers on 16,000 B cores: a 5x5 prefill grid spans two regions (3 + 2 layers; a
    # 20-token prompt runs in chunks), a 4x4 decode grid three; the scouts skip the later
    # regions' walks, and the winner (on 5x5) is priced again with every region walked
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=5)
    device = dataclasses.replace(SIX, mesh_rows=10, mesh_cols=10, sram_bytes_per_core=16_000)

    def search():
        costs = CostModel(Setup(config=config, device=device))
        return search_grids(costs, prompt_len=20, output_len=12, prefill_grid=(5, 5))

    fast = search()
    with monkeypatch.context() as patch:  # every candidate on the placed model
        patch.setattr(CostModel, "scout", lambda self, p, d: self.model(p, d))
        slow = search()
    assert fast.best.model.walk_every_region
    assert len(fast.best.model.prefill_state.regions.regions) == 2
    assert fast.best.prefill_chunk_tokens is not None
    want, got = slow.to_dict(), fast.to_dict()
    del want["host_wall_s"], got["host_wall_s"]
    assert got == want
    assert [4, 4] in [p["grid"] for p in got["decode_points"] if p["seconds"] is not None]
    for phase in ("prefill", "decode"):
        ours, theirs = getattr(fast.best, phase), getattr(slow.best, phase)
        assert ours.ledger.expanded() == theirs.ledger.expanded()
        assert (ours.regions, ours.routes_per_core) == (theirs.regions, theirs.routes_per_core)
