"""With one resident layout on one device (`Setup.phases_apart`) the grid search prices a
decode point on a model a prefill point was built on, or beside the cheapest feasible prefill
grid, and stage 2 bounds every pair of a decode grid on one placed model: fewer and cheaper
builds, and exactly the search (every point, pair, the best and its ledgers) that building
each point's own model gives."""

from __future__ import annotations

import dataclasses

import pytest

from waferllm.device import tiny
from waferllm.estimate import search
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.search import GridSearch, search_grids
from waferllm.model.config_sources import load_config
from waferllm.model.kv_cache import KvPolicy
from waferllm.model.placement import PlacementMode

# (layers, mesh rows, mesh cols, SRAM bytes per core, prompt, output, given grids, options):
# several regions per phase, chunked prompts, rectangular tilings, per-layer, concat, grids
# given, decode points whose KV cache is too small
SETUPS = (
    (4, 12, 12, 16000, 30, 6, (None, None), {}),
    (5, 10, 10, 16000, 20, 12, (None, None), {}),
    (4, 6, 16, 8000, 30, 3, (None, None), {}),
    (8, 6, 16, 12000, 30, 3, (None, None), {}),
    (2, 8, 8, 64000, 40, 400, (None, None), {}),
    (4, 12, 12, 16000, 30, 6, (None, None), {"placement": PlacementMode.PER_LAYER}),
    (4, 12, 12, 16000, 30, 6, (None, None), {"kv_policy": KvPolicy.CONCAT}),
    (5, 10, 10, 16000, 20, 12, ((5, 5), None), {}),
    (4, 12, 12, 16000, 30, 6, (None, (6, 6)), {}),
)


def _search(setup: tuple, builds: list[tuple]) -> GridSearch:
    layers, rows, cols, sram, prompt, output, (prefill, decode), options = setup
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=layers)
    device = dataclasses.replace(tiny(), mesh_rows=rows, mesh_cols=cols, sram_bytes_per_core=sram)
    costs = CostModel(Setup(config=config, device=device, **options))
    build = costs._build

    def counted(prefill_grid, decode_grid, *, walk_every_region):
        builds.append((prefill_grid, decode_grid, walk_every_region))
        return build(prefill_grid, decode_grid, walk_every_region=walk_every_region)

    costs._build = counted  # type: ignore[method-assign]
    return search_grids(
        costs, prompt_len=prompt, output_len=output, prefill_grid=prefill, decode_grid=decode
    )


def _same(fast: GridSearch, slow: GridSearch) -> None:
    got, want = fast.to_dict(), slow.to_dict()
    del got["host_wall_s"], want["host_wall_s"]
    assert got == want
    assert fast.best.prefill_chunk_tokens == slow.best.prefill_chunk_tokens
    assert fast.best.transition.expanded() == slow.best.transition.expanded()
    for phase in ("prefill", "decode"):
        ours, theirs = getattr(fast.best, phase), getattr(slow.best, phase)
        assert ours.ledger.expanded() == theirs.ledger.expanded()
        assert (ours.regions, ours.routes_per_core) == (theirs.regions, theirs.routes_per_core)


@pytest.mark.parametrize("setup", SETUPS)
def test_a_search_with_phases_apart_reports_exactly_what_each_points_own_model_gives(
    setup, monkeypatch
):
    shared: list[tuple] = []
    fast = _search(setup, shared)
    own: list[tuple] = []
    with monkeypatch.context() as patch:
        patch.setattr(Setup, "phases_apart", property(lambda setup: False))
        slow = _search(setup, own)
    _same(fast, slow)
    assert len(shared) <= len(own)


def test_the_decode_sweep_reuses_the_prefill_sweeps_models_and_builds_fewer():
    shared: list[tuple] = []
    fast = _search(SETUPS[0], shared)
    squares = {p["grid"][0] for p in fast.to_dict()["prefill_points"] if p["seconds"]}
    reused = {p["grid"][0] for p in fast.to_dict()["decode_points"]} & squares
    assert reused  # decode points on sides the prefill sweep priced
    scouts = [(p, d) for p, d, every in shared if not every]  # stage 2 places its pairs
    for side in reused:  # their models were built once, for the prefill point
        grid = (side, side)
        assert scouts.count((grid, grid)) == 1
        assert not [p for p, d in scouts if d == grid and p != grid]
    own: list[tuple] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Setup, "phases_apart", property(lambda setup: False))
        _search(SETUPS[0], own)
    assert len(shared) < len(own)


def test_nothing_is_shared_with_both_layouts_resident_or_over_several_devices():
    config, device = load_config("tiny"), tiny()
    assert Setup(config=config, device=device).phases_apart
    for options in ({"resident": search.ResidentLayouts.BOTH}, {"num_devices": 2}):
        assert not Setup(config=config, device=device, **options).phases_apart


def test_stage_twos_bound_on_the_first_prefill_choices_model_is_each_pairs_own(monkeypatch):
    bound = search._bound
    seen: dict[bool, dict[tuple, float]] = {True: {}, False: {}}
    for apart in (True, False):
        with monkeypatch.context() as patch:

            def recorded(s, prefill, decode, placed, apart=apart):
                seen[apart][prefill, decode] = bound(s, prefill, decode, placed)
                return seen[apart][prefill, decode]

            patch.setattr(search, "_bound", recorded)
            patch.setattr(Setup, "phases_apart", property(lambda setup, apart=apart: apart))
            _search(SETUPS[0], [])
    assert len({p for p, _ in seen[True]}) == len({d for _, d in seen[True]}) == 2
    assert seen[True] == seen[False]
