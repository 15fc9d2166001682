"""Multi-wafer `fit` placement (SPEC.md §10.10): a contiguous range of layers per device, each
placed by the single-device `fit` placement, vocabulary tables on the end devices only."""

from __future__ import annotations

import pytest

from waferllm.device import tiny, wse3
from waferllm.errors import WaferError
from waferllm.model.config import load_config
from waferllm.model.pipeline import (
    device_count,
    device_layer_ranges,
    place_layer_range,
    plan_pipeline_phase,
)
from waferllm.model.placement import PlacementMode, ResidentLayouts
from waferllm.model.plan import plan_model
from waferllm.model.regions import Footprint, plan_phase

FP = Footprint(layer=1000, first=500, last=700, reserve=100)


def test_layers_split_into_contiguous_ranges_differing_by_at_most_one():
    assert device_layer_ranges(10, 3) == (range(0, 4), range(4, 7), range(7, 10))
    assert device_layer_ranges(80, 8) == tuple(range(10 * d, 10 * d + 10) for d in range(8))
    with pytest.raises(WaferError, match="more than the model's 4 layers"):
        device_layer_ranges(4, 5)


def test_each_device_holds_its_range_as_the_single_device_fit_would_place_it():
    cap = 4500  # 3 layers + reserve + one end table per region at most
    plan = plan_pipeline_phase(
        tiny(), (32, 32), 13, FP, num_devices=3, capacity_bytes=cap, what="decode"
    )
    assert device_count(plan) == 3
    assert [r.index for r in plan.regions] == list(range(len(plan.regions)))
    for d, layers in enumerate(device_layer_ranges(13, 3)):
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
    plan = plan_pipeline_phase(
        tiny(), (32, 32), 12, FP, num_devices=3, capacity_bytes=cap, what="decode"
    )
    per_device = [sum(1 for r in plan.regions if r.device == d) for d in range(3)]
    assert per_device == [1, 1, 2]


def test_a_range_that_does_not_fit_its_device_names_the_device_and_the_layers():
    with pytest.raises(WaferError, match="layers 0-19 do not fit device 0 of 2 tinys"):
        plan_pipeline_phase(
            tiny(), (32, 32), 40, FP, num_devices=2, capacity_bytes=4000, what="decode"
        )


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
