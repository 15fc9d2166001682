"""A narrower decode window's step priced from a wider window's full walk made without the
held decode logits (`DecodeWalks._covers`): the same ledger as walking it in full with them
held, taken only where the wider walk's SRAM peak plus the logits' bytes fits every region (a
bound of the narrower walk's peak), and the grid search unchanged."""

from __future__ import annotations

import dataclasses

import pytest
from test_search_apart import SETUPS as SEARCHES
from test_search_apart import _same, _search

from waferllm.device import tiny
from waferllm.errors import SramOverflowError
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.decode_walks import DecodeWalks
from waferllm.mesh.storage import StoredDtype
from waferllm.model.config_sources import load_config
from waferllm.model.kv_cache import RowCounts
from waferllm.model.placement import PlacementMode
from waferllm.model.quant import Storage

INT8 = Storage(weights=StoredDtype.INT8, kv=StoredDtype.INT8)
# (layers, mesh rows, mesh cols, SRAM bytes per core, grid, options): one and several
# decode regions, rectangular, int8 weights and cache, per-layer
MODELS = (
    (4, 12, 12, 16000, (6, 6), {}),
    (5, 10, 10, 16000, (5, 5), {}),
    (8, 12, 12, 12000, (6, 6), {}),
    (2, 8, 8, 64000, (4, 4), {}),
    (4, 6, 16, 12000, (6, 8), {}),
    (4, 12, 12, 16000, (6, 6), {"storage": INT8}),
    (4, 12, 12, 16000, (6, 6), {"placement": PlacementMode.PER_LAYER}),
)
PROMPT = 3


def _walks(setup: tuple) -> tuple[DecodeWalks, int]:
    """A fresh model's decode walks, and the widest context its cache holds."""
    layers, rows, cols, sram, grid, options = setup
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=layers)
    device = dataclasses.replace(tiny(), mesh_rows=rows, mesh_cols=cols, sram_bytes_per_core=sram)
    costs = CostModel(Setup(config=config, device=device, **options))
    model = costs.model(grid, grid)
    return costs.walks(model), model.kv_capacity_tokens()


def _walked(walks: DecodeWalks) -> list[tuple]:
    """Every full walk's key (width, held logits) from here on."""
    seen: list[tuple] = []
    records = walks.records

    def counted(counts):
        held = walks.model.holds_decode_logits
        seen.append((int(counts.plan_append().counts_after.max()), held))
        return records(counts)

    walks.records = counted  # type: ignore[method-assign]
    return seen


def _narrow_walked(setup: tuple):
    """A narrow window's step walked in full with the logits held (after the widest walked
    without): its ledger, its SRAM peak per region, and the bound `_covers` takes."""
    walks, widest = _walks(setup)
    walks.decode_step(widest, PROMPT)  # the first walk: no logits held yet
    wide_peaks = next(iter(walks._walked.values()))[3]
    model = walks.model
    extra, head = model.held_logits_bytes, model.decode_state.head_mesh
    assert extra > 0  # the walk left its logits held
    bound = [
        p + (extra if m is head else 0)
        for p, m in zip(wide_peaks, model.decode_state.all_meshes, strict=True)
    ]
    counts = walks.decode_step(PROMPT + 1, PROMPT)  # priced from the widest walk
    _, peaks = walks.records(_counts(walks, PROMPT + 1))  # and walked in full
    return counts, peaks, bound


def _counts(walks: DecodeWalks, context: int) -> RowCounts:
    """The balanced cache before the step whose new token is position `context - 1`."""
    rows = walks.model.plan.decode.grid[0]
    return RowCounts.balanced(walks.model.kv_policy, rows, walks.share, context - 1, None)


@pytest.mark.parametrize("setup", MODELS)
def test_a_narrower_step_with_logits_held_is_priced_from_the_wider_walk_without_a_walk(setup):
    walks, widest = _walks(setup)
    seen = _walked(walks)
    walks.decode_step(widest, PROMPT)
    priced = walks.decode_step(PROMPT + 1, PROMPT)
    assert seen == [(seen[0][0], False)]  # only the widest window walked, logits not held
    assert walks.model.holds_decode_logits
    oracle, _ = _walks(setup)
    oracle.decode_step(widest, PROMPT)
    oracle._covers = lambda width, held_then, held: held_then == held  # type: ignore[method-assign]
    again = _walked(oracle)
    walked = oracle.decode_step(PROMPT + 1, PROMPT)
    assert again == [(again[0][0], True)]  # walked in full, holding the logits
    assert priced.expanded() == walked.expanded()


@pytest.mark.parametrize("setup", MODELS)
def test_the_bound_holds_the_narrower_walks_peak_on_every_region(setup):
    _, peaks, bound = _narrow_walked(setup)
    assert all(p <= b for p, b in zip(peaks, bound, strict=True))


def test_a_step_the_bound_does_not_clear_is_walked_and_may_overflow():
    setup = MODELS[0]
    _, peaks, bound = _narrow_walked(setup)
    head = peaks.index(max(peaks))
    assert peaks[head] == bound[head]  # tight: the held logits are live at the peak
    for spare, overflows in ((0, False), (-1, True)):
        walks, widest = _walks(setup)
        walks.decode_step(widest, PROMPT)
        mesh = walks.model.decode_state.all_meshes[head]
        mesh.sram.capacity_bytes = bound[head] + spare
        seen = _walked(walks)
        if overflows:
            with pytest.raises(SramOverflowError):
                walks.decode_step(PROMPT + 1, PROMPT)
            assert len(seen) == 1  # walked in full: the bound did not clear it
        else:
            walks.decode_step(PROMPT + 1, PROMPT)
            assert seen == []  # the bound cleared it: not walked


@pytest.mark.parametrize("setup", SEARCHES)
def test_the_search_is_the_one_that_walks_each_held_logits_step(setup, monkeypatch):
    fast = _search(setup, [])
    with monkeypatch.context() as patch:
        patch.setattr(DecodeWalks, "_covers", lambda self, width, then, held: then == held)
        slow = _search(setup, [])
    _same(fast, slow)
