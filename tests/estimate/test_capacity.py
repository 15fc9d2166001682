"""KV capacity of the whole model over every region of a tiling of the whole device (SPEC.md
§10.10), both policies: on each plan, slots per row = free bytes / KV bytes per slot.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferllm.device import tiny, wse2
from waferllm.errors import WaferError
from waferllm.estimate.capacity import tiling_capacity, whole_device_tilings, whole_model_capacity
from waferllm.estimate.cost import Setup
from waferllm.model.config_sources import load_config
from waferllm.model.kv_cache import KvPolicy, kv_capacity_tokens, max_new_tokens
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    tile_bytes,
    vocab_spec,
)
from waferllm.model.plan import plan_model
from waferllm.model.regions import device_tilings, split_layers
from waferllm.model.scratch import decode_scratch_bytes

SB = 2


def _free_bytes(config, device, grid, layers):
    """SRAM per core each region has for its cache: SRAM - step scratch - vocabulary tables -
    its layers' weights, written out from the byte counts."""
    rows, cols = grid
    fixed, _ = decode_scratch_bytes(config, rows, cols, SB)
    table = tile_bytes(vocab_spec(config, Phase.DECODE), rows, cols, SB)
    norm = -(-config.hidden_size // rows) * SB
    weights = layer_bytes_per_core(config, rows, cols, Phase.DECODE, SB)
    free = [device.sram_bytes_per_core - fixed - n * weights for n in layers]
    free[0] -= 0 if config.tie_word_embeddings else table
    free[-1] -= table + norm
    return free


@pytest.mark.parametrize("name", ["llama3-8b", "llama2-13b"])
def test_capacity_is_free_bytes_over_kv_bytes_per_slot_on_every_tiling(name):
    config, device = load_config(name), wse2()
    tilings = whole_device_tilings(config, device, (360, 360))
    assert tilings
    for t in tilings:
        rows, cols = t.grid
        assert sum(t.layers) == config.num_hidden_layers
        assert len(t.layers) == min(
            (device.mesh_rows // rows) * (device.mesh_cols // cols), config.num_hidden_layers
        )
        free = _free_bytes(config, device, t.grid, t.layers)
        _, score = decode_scratch_bytes(config, rows, cols, SB)
        per_slot = [n * kv_slot_bytes_per_core(config, cols, SB) + score for n in t.layers]
        assert list(t.free_bytes) == free and list(t.slot_bytes) == per_slot
        assert t.slots == min(f // s for f, s in zip(free, per_slot, strict=True))


def test_llama3_8b_shift_capacity_counts_the_whole_wafer_for_both_policies():
    config, device = load_config("llama3-8b"), wse2()
    setup = Setup(config=config, device=device, placement=PlacementMode.PER_LAYER)
    capacity, room = whole_model_capacity(setup, (360, 360), (360, 360), 4096)
    tilings = whole_device_tilings(config, device, (360, 360))
    best = max(tilings, key=lambda t: t.grid[0] * t.slots)
    assert best.cores >= 0.99 * device.num_cores  # not 4 x 360x360 (70%)
    assert capacity.shift == best.grid[0] * best.slots
    for policy, got, new in (
        (KvPolicy.SHIFT, capacity.shift, room.shift),
        (KvPolicy.CONCAT, capacity.concat, room.concat),
    ):
        assert got == max(kv_capacity_tokens(policy, t.grid[0], t.slots, 4096) for t in tilings)
        assert new == max(max_new_tokens(policy, t.grid[0], t.slots, 4096) for t in tilings)
    # the decode grid's own tiling of the device (4 regions of 360x360) holds fewer tokens
    own = tiling_capacity(config, device, (360, 360))
    assert own is not None and capacity.shift > own.grid[0] * own.slots


def test_a_one_region_tiling_keeps_the_slots_the_fit_plan_keeps():
    config = load_config("tiny")
    device = dataclasses.replace(tiny(), mesh_rows=24, mesh_cols=20)
    grid = (24, 20)
    plan = plan_model(
        config,
        device,
        prefill_grid=(16, 16),
        decode_grid=grid,
        placement=PlacementMode.FIT,
        resident=ResidentLayouts.ONE,
        max_context_tokens=None,
    )
    t = tiling_capacity(config, device, grid)
    assert t is not None and len(t.layers) == 1 and t.slots == plan.kv_slots


def test_uneven_splits_give_the_regions_with_vocabulary_tables_fewer_layers():
    free = np.array([2500, 4000, 4000, 2500])
    assert split_layers(10, free, 1000).tolist() == [2, 3, 3, 2]
    assert split_layers(11, free, 1000).tolist() == [2, 3, 4, 2]
    assert split_layers(13, free, 1000) is None


def test_ring_tilings_keep_a_small_logical_grid_and_cover_most_of_the_wafer():
    grids = device_tilings(wse2(), ring=True, dims=(4096, 14336))
    assert grids[0] == (992, 744)  # lcm 2976 = 3 x 992
    for rows, cols in grids:
        assert np.lcm(rows, cols) <= 4 * max(rows, cols)
    assert device_tilings(wse2(), ring=False)[:3] == [(994, 750), (994, 375), (497, 750)]


def test_llama2_13b_places_fit_on_one_wse2_over_a_rectangular_tiling():
    config = load_config("llama2-13b")  # 26 GB of f16 weights, 36.6 GB of SRAM

    def plan(prefill, decode):
        return plan_model(
            config,
            wse2(),
            prefill_grid=prefill,
            decode_grid=decode,
            placement=PlacementMode.FIT,
            resident=ResidentLayouts.ONE,
            max_context_tokens=None,
        )

    with pytest.raises(WaferError, match="does not fit one wse2"):
        plan((750, 750), (750, 750))  # one square region: a quarter of the wafer idle
    fit = plan((246, 738), (994, 750))
    assert [len(r.layers) for r in fit.prefill.regions] == [10, 10, 10, 10]
    assert len(fit.decode.regions) == 1
    # a 4096-token prompt fits with the keys streamed (lean schedule: 4,182 tokens at most)
    assert fit.max_prompt_tokens >= 4096
    assert fit.kv_slots * 994 >= 2048 + 128


def test_the_remembered_tilings_are_each_requests_own():
    """`whole_device_tilings` is remembered per (model, device, decode grid, storage): asked in
    any order, each answer is the one computed from its own tilings, and a caller's list is
    its own copy."""
    from waferllm.model.quant import UNCOMPRESSED, Storage

    config, device = load_config("llama3-8b"), wse2()
    asks = [((357, 357), UNCOMPRESSED), ((653, 653), UNCOMPRESSED), ((357, 357), UNCOMPRESSED)]
    asks.append(((357, 357), Storage.of("int8", "float16")))
    for grid, storage in asks:
        grids = dict.fromkeys([grid, *device_tilings(device, ring=False)])
        found = [tiling_capacity(config, device, g, storage) for g in grids]
        want = [t for t in found if t is not None]
        got = whole_device_tilings(config, device, grid, storage)
        assert got == want
        got.clear()  # the caller's copy: the next caller still sees every tiling
        assert whole_device_tilings(config, device, grid, storage) == want
