"""A scout (`CostModel.scout`: walks only the priced region) charges the placed model's ledgers,
skips the later regions' walks, and never stands in for the placed model's SRAM peaks.

Config `tiny` with 5 layers on a 16,000 B `tiny` device: on 5x5 each phase spans two regions
(3 + 2 layers), at most 15 prompt tokens at once (longer prompts run in chunks).
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers.pruning import unpruned

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, PhaseLedger, Setup
from waferllm.model import chunked, decode, prefill
from waferllm.model.config_sources import load_config

CONFIG = dataclasses.replace(load_config("tiny"), num_hidden_layers=5)
DEVICE = dataclasses.replace(tiny(), sram_bytes_per_core=16_000)
GRID = (5, 5)


def _costs() -> CostModel:
    return CostModel(Setup(config=CONFIG, device=DEVICE))


@dataclasses.dataclass(frozen=True)
class Priced:
    prefill: PhaseLedger
    decode: PhaseLedger
    chunk: int | None


def _priced(costs: CostModel, prompt_len: int, *, scout: bool) -> Priced:
    model = costs.scout(GRID, GRID) if scout else costs.model(GRID, GRID)
    assert model.walk_every_region is not scout
    return Priced(
        prefill=costs.prefill(model, prompt_len),
        decode=costs.decode(model, prompt_len, 10),
        chunk=costs.prefill_chunk(model, prompt_len),
    )


def test_the_setup_spans_two_regions_per_phase():
    model = _costs().model(GRID, GRID)
    assert [len(r.layers) for r in model.prefill_state.regions.regions] == [3, 2]
    assert [len(r.layers) for r in model.decode_state.regions.regions] == [3, 2]
    assert model.max_prompt_tokens == 15


@pytest.mark.parametrize("prompt_len", [12, 20])  # in one piece; in chunks
def test_a_scout_charges_the_placed_models_ledgers_record_for_record(prompt_len):
    placed = _priced(_costs(), prompt_len, scout=False)
    scouted = _priced(_costs(), prompt_len, scout=True)
    assert (scouted.chunk is None) == (prompt_len <= 15)
    assert scouted.chunk == placed.chunk
    for phase in ("prefill", "decode"):
        ours, theirs = getattr(scouted, phase), getattr(placed, phase)
        assert ours.ledger.expanded() == theirs.ledger.expanded()
        assert ours.latency_cycles == theirs.latency_cycles


@pytest.mark.parametrize("prompt_len", [12, 20])
def test_a_scout_walks_one_region_of_two(prompt_len, monkeypatch):
    unpruned(monkeypatch)  # every chunk size walked in full: the walks counted are all whole
    walks: list[str] = []
    for module, name in ((prefill, "prefill_layer"), (chunked, "prefill_layer")):
        monkeypatch.setattr(module, name, _counted(getattr(module, name), walks, "prefill"))
    monkeypatch.setattr(decode, "decode_layer", _counted(decode.decode_layer, walks, "decode"))
    placed = _priced(_costs(), prompt_len, scout=False)
    placed_walks = (walks.count("prefill"), walks.count("decode"))
    walks.clear()
    scouted = _priced(_costs(), prompt_len, scout=True)
    assert placed_walks == (2 * walks.count("prefill"), 2 * walks.count("decode"))
    assert walks.count("prefill") and walks.count("decode")
    # the later region is not walked: its peak holds only what is placed there
    assert scouted.prefill.regions[0] == placed.prefill.regions[0]
    assert scouted.prefill.regions[1].bytes_per_core < placed.prefill.regions[1].bytes_per_core


def _counted(walk, walks: list[str], phase: str):
    def counted(*args, **kwargs):
        walks.append(phase)
        return walk(*args, **kwargs)

    return counted


def test_scouted_walks_never_stand_in_for_the_placed_models_peaks():
    fresh = _priced(_costs(), 20, scout=False)
    costs = _costs()
    scouted = _priced(costs, 20, scout=True)
    after = _priced(costs, 20, scout=False)  # the same CostModel, after the scout's walks
    for phase in ("prefill", "decode"):
        assert getattr(scouted, phase).regions != getattr(fresh, phase).regions
        assert getattr(after, phase).regions == getattr(fresh, phase).regions
        assert getattr(after, phase).routes_per_core == getattr(fresh, phase).routes_per_core


def test_a_scout_on_one_region_per_phase_is_the_placed_model():
    costs = CostModel(Setup(config=load_config("tiny"), device=tiny()))
    scout = costs.scout((3, 3), (3, 3))
    assert scout is costs.model((3, 3), (3, 3)) and scout.walk_every_region


def test_a_functional_model_cannot_skip_regions():
    from helpers.weights import random_weights

    from waferllm.model.transformer import MeshTransformer

    config = load_config("tiny")
    with pytest.raises(WaferError, match="estimate-mode"):
        MeshTransformer(
            config,
            random_weights(config),
            device=tiny(),
            prefill_grid=GRID,
            decode_grid=GRID,
            walk_every_region=False,
        )
