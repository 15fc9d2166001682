"""Multi-wafer `fit` placement (SPEC.md §10.10): a contiguous range of layers per device, as even
as each device's room allows (the end devices, holding the vocabulary tables, take fewer), each
placed by the single-device `fit` placement, vocabulary tables on the end devices only."""

from __future__ import annotations

import pytest

from waferllm.device import tiny, wse3
from waferllm.errors import WaferError
from waferllm.model.config_sources import load_config
from waferllm.model.pipeline import (
    check_device_count,
    device_count,
    device_rooms,
    layers_per_device,
    pipeline_layer_ranges,
    place_layer_range,
    plan_pipeline_phase,
)
from waferllm.model.placement import PlacementMode, ResidentLayouts
from waferllm.model.plan import plan_model
from waferllm.model.regions import Footprint, plan_phase

FP = Footprint(layer=1000, first=500, last=700, reserve=100)
WHOLE = (64, 64)  # the tiny device's whole mesh: one slot per device


def _ranges(num_layers: int, cap: int, grid=WHOLE, num_devices: int = 3):
    return pipeline_layer_ranges(
        tiny(), [(grid, FP)], num_layers=num_layers, num_devices=num_devices, capacity_bytes=cap
    )


def test_a_device_holds_the_layers_of_every_slot_its_ends_carrying_the_tables():
    # one slot: (4500 - 100 - table) // 1000; four 32x32 slots: ends (4400-500)//1000 = 3 or
    # (4400-700)//1000 = 3, plus 4 for each other slot
    assert device_rooms(tiny(), WHOLE, FP, num_devices=3, capacity_bytes=4500).tolist() == [3, 4, 3]
    four = device_rooms(tiny(), (32, 32), FP, num_devices=3, capacity_bytes=4500)
    assert four.tolist() == [4 + 3 + 2 * 4, 4 * 4, 4 + 3 + 2 * 4]
    # 1700 - 100 - 700 leaves the LM head's device no room for a layer
    assert device_rooms(tiny(), WHOLE, FP, num_devices=2, capacity_bytes=1700).tolist() == [1, 0]


def test_devices_holding_a_vocabulary_table_take_fewer_layers_when_room_is_short():
    assert _ranges(10, 4500) == (range(0, 3), range(3, 7), range(7, 10))  # rooms 3, 4, 3


def test_with_room_to_spare_the_split_is_even_and_the_end_devices_give_up_the_surplus():
    # level ceil(10 / 3) = 4 places 12: the two surplus layers come off the least room (the
    # LM head's device, then the embedding's)
    assert _ranges(10, 100_000) == (range(0, 3), range(3, 7), range(7, 10))
    assert _ranges(12, 100_000) == (range(0, 4), range(4, 8), range(8, 12))
    assert _ranges(80, 10**6, num_devices=8) == tuple(range(10 * d, 10 * d + 10) for d in range(8))


def test_a_model_larger_than_the_devices_rooms_is_an_error_naming_them():
    with pytest.raises(
        WaferError, match=r"hold \[3, 4, 3\] layers per device and the model has 11"
    ):
        _ranges(11, 4500)
    with pytest.raises(WaferError, match="more than the model's 4 layers"):
        check_device_count(4, 5)


def test_each_device_holds_its_range_as_the_single_device_fit_would_place_it():
    cap = 4500  # 3 layers + reserve + one end table per region at most
    ranges = _ranges(13, cap, grid=(32, 32))
    plan = plan_pipeline_phase(tiny(), (32, 32), FP, ranges=ranges, capacity_bytes=cap, what="d")
    assert device_count(plan) == 3
    assert layers_per_device(plan) == ranges
    assert [r.index for r in plan.regions] == list(range(len(plan.regions)))
    for d, layers in enumerate(ranges):
        own = FP.__class__(
            layer=FP.layer, first=FP.first if d == 0 else 0, last=FP.last if d == 2 else 0,
            reserve=FP.reserve,
        )  # fmt: skip
        alone = plan_phase(
            tiny(), (32, 32), len(layers), own, mode=PlacementMode.FIT, capacity_bytes=cap,
            what="decode",
        )  # fmt: skip
        mine = [r for r in plan.regions if r.device == d]
        assert [r.origin for r in mine] == [r.origin for r in alone.regions]
        shifted = [range(r.layers.start + layers.start, r.layers.stop + layers.start)
                   for r in alone.regions]  # fmt: skip
        assert [r.layers for r in mine] == shifted
    covered = [i for r in plan.regions for i in r.layers]
    assert covered == list(range(13))


def test_the_end_tables_sit_on_the_end_devices_only():
    # a region holds 4 layers, the reserve and the embedding table (500 B) but not the LM
    # head (700 B): only the last device needs a second region
    cap = 4 * FP.layer + FP.reserve + FP.first
    ranges = (range(0, 4), range(4, 8), range(8, 12))
    plan = plan_pipeline_phase(tiny(), (32, 32), FP, ranges=ranges, capacity_bytes=cap, what="d")
    per_device = [sum(1 for r in plan.regions if r.device == d) for d in range(3)]
    assert per_device == [1, 1, 2]


def test_a_range_that_does_not_fit_its_device_names_the_device_and_the_layers():
    ranges = (range(0, 20), range(20, 40))
    with pytest.raises(WaferError, match="layers 0-19 do not fit device 0 of 2 tinys"):
        plan_pipeline_phase(tiny(), (32, 32), FP, ranges=ranges, capacity_bytes=4000, what="d")


def test_place_layer_range_drops_the_tables_a_middle_device_does_not_hold():
    regions = place_layer_range(
        tiny(), (32, 32), range(8, 12), FP, first=False, last=False, capacity_bytes=4100,
        what="decode",
    )  # fmt: skip
    assert [len(r.layers) for r in regions] == [4]


def test_more_devices_leave_more_room_for_the_kv_cache_on_the_same_grid():
    config, device = load_config("llama3-8b"), wse3()
    grid = (380, 380)  # one wse3 needs 3 regions of 11, 11, 10 layers; two hold 8 per region
    args = dict(prefill_grid=grid, decode_grid=grid, placement=PlacementMode.FIT,
                resident=ResidentLayouts.ONE, max_context_tokens=None)  # fmt: skip
    one = plan_model(config, device, **args)
    two = plan_model(config, device, **args, num_devices=2)
    assert [len(r.layers) for r in one.decode.regions] == [11, 11, 10]
    assert [(r.device, len(r.layers)) for r in two.decode.regions] == [
        (0, 8),
        (0, 8),
        (1, 8),
        (1, 8),
    ]
    assert two.kv_slots > 5 * one.kv_slots
    assert [r.device for r in two.prefill.regions] == [0, 0, 1, 1]  # a layer's KV stays home
