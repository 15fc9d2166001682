"""KV-cache capacity of the whole model resident on the device (SPEC.md §10.4, §10.10).

The model is spread, as in `fit`, over every region of a tiling of the whole device (the
request's decode grid tiled as far as it goes, and the rectangular tilings of
`regions.device_tilings`), layers split so that every region keeps the same number of cache
slots per row; each policy reports its best tiling. Per region, slots per row = its free
bytes per core / (its layers' KV bytes per slot + one score per head). No walks here.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.estimate.cost import Grid, Setup
from waferllm.model.budget import vocab_bytes
from waferllm.model.config import ModelConfig
from waferllm.model.kv_cache import KvPolicy, evicts, kv_capacity_tokens, max_new_tokens
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    dequant_chunk_bytes,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    norm_spec,
    tile_bytes,
)
from waferllm.model.plan import plan_model
from waferllm.model.quant import UNCOMPRESSED, Storage
from waferllm.model.regions import device_tilings, region_count, split_layers
from waferllm.model.report import KvCapacity
from waferllm.model.scratch import decode_scratch_bytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class TilingCapacity:
    """The whole model's decode placement over every region of one tiling, per core."""

    grid: Grid
    layers: tuple[int, ...]  # layers per region
    free_bytes: tuple[int, ...]  # per region: SRAM left beside its weights and step scratch
    slot_bytes: tuple[int, ...]  # per region: one cached position of every layer, one score
    slots: int  # cache slots per row (every region, every layer)

    @property
    def cores(self) -> int:
        return len(self.layers) * self.grid[0] * self.grid[1]


@functools.lru_cache(maxsize=4096)  # the device's tilings, asked again by every request
def tiling_capacity(
    config: ModelConfig, device: Device, grid: Grid, storage: Storage = UNCOMPRESSED
) -> TilingCapacity | None:
    """The most slots per row with the layers over all of `grid`'s regions of the device (None
    if the weights do not fit): a region of n layers keeps s slots if n * (W + s * K) + s * S
    + its vocabulary tables + step scratch <= SRAM, W the layer's tiles, K its K and V per
    slot, S one score per head; s is the largest for which the layers can be split. Weights
    and cached positions count as `storage` stores them."""
    rows, cols = grid
    count = min(region_count(device, grid), config.num_hidden_layers)
    if count < 1:
        return None
    sb, cap = device.storage_bytes, device.sram_bytes_per_core
    wdt = storage.weights
    weights = layer_bytes_per_core(config, rows, cols, Phase.DECODE, sb, wdt)
    kv_slot = kv_slot_bytes_per_core(config, cols, sb, storage.kv)
    fixed, score = decode_scratch_bytes(config, rows, cols, sb)
    fixed += dequant_chunk_bytes(config, rows, cols, Phase.DECODE, wdt, sb)
    table = vocab_bytes(config, Phase.DECODE, rows, cols, sb, wdt)
    free = np.full(count, cap - fixed, dtype=np.int64)
    free[0] -= 0 if config.tie_word_embeddings else table
    free[-1] -= table + tile_bytes(norm_spec(config, Phase.DECODE), rows, cols, sb)

    def split(slots: int) -> np.ndarray | None:
        return split_layers(
            config.num_hidden_layers, free - slots * score, weights + slots * kv_slot
        )

    if split(1) is None:
        return None
    low, high = 1, 2
    while split(high) is not None:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if split(mid) is not None else (low, mid)
    sizes = split(low)
    assert sizes is not None
    return TilingCapacity(
        grid=grid,
        layers=tuple(int(n) for n in sizes),
        free_bytes=tuple(int(f) for f in free - sizes * weights),
        slot_bytes=tuple(int(n) * kv_slot + score for n in sizes),
        slots=low,
    )


def whole_device_tilings(
    config: ModelConfig, device: Device, decode_grid: Grid, storage: Storage = UNCOMPRESSED
) -> list[TilingCapacity]:
    """Every candidate tiling that holds the model: the decode grid's, the device's."""
    return list(_holding_tilings(config, device, decode_grid, storage))


@functools.lru_cache(maxsize=256)  # every report asks; one lookup instead of one per tiling
def _holding_tilings(
    config: ModelConfig, device: Device, decode_grid: Grid, storage: Storage
) -> tuple[TilingCapacity, ...]:
    grids = dict.fromkeys([decode_grid, *device_tilings(device, ring=False)])
    found = (tiling_capacity(config, device, g, storage) for g in grids)
    return tuple(t for t in found if t is not None)


def whole_model_capacity(
    setup: Setup, prefill_grid: Grid, decode_grid: Grid, prompt_len: int
) -> tuple[KvCapacity, KvCapacity]:
    """(kv_capacity_tokens, max_new_tokens) of both policies, each on its best tiling of the
    whole device; always the whole model resident (in per-layer mode too); None with the
    reason when it does not fit. With both layouts resident (the other plan's weights share
    every core) or several devices the decode grid's `fit` plan is used."""
    if setup.resident is ResidentLayouts.BOTH or setup.num_devices > 1:
        return _fit_plan_capacity(setup, prefill_grid, decode_grid, prompt_len)
    tilings = whole_device_tilings(setup.config, setup.device, decode_grid, setup.storage)
    if not tilings:
        reason = (
            f"the whole model does not fit one {setup.device.name} (fit): its weights and one "
            "cached position per row exceed the SRAM of every tiling of the device"
        )
        none = KvCapacity(shift=None, concat=None, reason=reason)
        return none, none
    return _capacities(setup.config, [(t.grid[0], t.slots) for t in tilings], prompt_len)


def _fit_plan_capacity(
    setup: Setup, prefill_grid: Grid, decode_grid: Grid, prompt_len: int
) -> tuple[KvCapacity, KvCapacity]:
    try:
        plan = plan_model(
            setup.config,
            setup.device,
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            placement=PlacementMode.FIT,
            resident=setup.resident,
            max_context_tokens=None,
            storage=setup.storage,
            num_devices=setup.num_devices,
        )
    except WaferError as exc:
        where = f"one {setup.device.name}"
        if setup.num_devices > 1:
            where = f"{setup.num_devices} {setup.device.name}s"
        reason = f"the whole model does not fit {where} (fit): {exc}"
        none = KvCapacity(shift=None, concat=None, reason=reason)
        return none, none
    return _capacities(setup.config, [(plan.decode.grid[0], plan.kv_slots)], prompt_len)


def _capacities(
    config: ModelConfig, caches: list[tuple[int, int]], prompt_len: int
) -> tuple[KvCapacity, KvCapacity]:
    """(kv_capacity_tokens, max_new_tokens) of both policies, the best of `caches` (rows,
    slots per row). A sliding window evicts older keys under the shift policy: a cache that
    holds a whole window is bounded by the trained context instead (warned)."""
    limits = {"window": config.sliding_window, "max_positions": config.max_position_embeddings}
    shift, concat = KvPolicy.SHIFT, KvPolicy.CONCAT
    evicting = [(r, s) for r, s in caches if evicts(shift, r, s, config.sliding_window)]
    if evicting:
        rows, slots = evicting[0]
        warnings.warn(
            f"{config.name}'s sliding window ({config.sliding_window} tokens) evicts older keys "
            f"from the shift KV cache, which holds a whole window ({rows * slots} tokens fit): "
            "its capacity is the trained context (max_position_embeddings), not SRAM",
            stacklevel=3,
        )
    best: dict[str, list[int]] = {"capacity": [], "room": []}
    for policy in (shift, concat):
        best["capacity"].append(
            max(kv_capacity_tokens(policy, r, s, prompt_len, **limits) for r, s in caches)
        )
        best["room"].append(
            max(max_new_tokens(policy, r, s, prompt_len, **limits) for r, s in caches)
        )
    capacity, room = best["capacity"], best["room"]
    return (
        KvCapacity(shift=capacity[0], concat=capacity[1]),
        KvCapacity(shift=room[0], concat=room[1]),
    )


__all__ = ["TilingCapacity", "tiling_capacity", "whole_device_tilings", "whole_model_capacity"]
