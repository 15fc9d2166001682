"""The grid search: the fastest feasible pair, infeasible grids as points, fixed grids kept."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from waferllm import estimate
from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.search import COARSE_POINTS
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
