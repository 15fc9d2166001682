"""Batched pipelines over linked devices: one sequence's ledger split over the devices and
links, and B sequences overlapped (closed forms: one sequence is today's numbers, B >= N
balanced stages fill the pipeline)."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.device import wse2
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.pipeline_schedule import PipelineSchedule, Stages, device_stages
from waferllm.mesh.cost import Ledger, Record
from waferllm.model.config_sources import load_config
from waferllm.model.regions import PhaseRegions, Region

GRID = (300, 300)  # llama3-8b on two wse2s: three regions each (5, 5, 6 and 5, 6, 5 layers)


@pytest.fixture(scope="module")
def two():
    setup = Setup(config=load_config("llama3-8b"), device=wse2(), num_devices=2)
    return CostModel(setup).request(GRID, GRID, 128, 4)


def _stages(devices, links) -> Stages:
    return Stages(devices=np.array(devices, dtype=float), links=np.array(links, dtype=float))


def test_the_devices_and_links_add_up_to_one_sequences_phase(two):
    plan = two.model.plan
    for ledger, regions in ((two.prefill, plan.prefill), (two.decode, plan.decode)):
        stages = device_stages(ledger.ledger, regions)
        assert stages.sequence_cycles == pytest.approx(ledger.latency_cycles, rel=1e-12)
        link = [r for r in ledger.ledger.records if r.op.endswith(".system_link")]
        assert stages.links.tolist() == [sum(r.latency_cycles * r.count for r in link)]


def test_records_go_to_the_device_the_walk_is_on_and_layers_pro_rata():
    regions = PhaseRegions(
        (4, 4),
        (
            Region(0, (0, 0), range(0, 3)),
            Region(1, (0, 4), range(3, 4)),
            Region(2, (0, 0), range(4, 8), device=1),
        ),
    )

    def rec(op: str, cycles: float, count: int = 1) -> Record:
        return Record(op=op, count=count, compute_cycles=cycles)

    ledger = Ledger()
    ledger.records.extend(
        [
            rec("embed/embed.extract", 1.0),
            rec("hop1", 2.0),
            rec("hop2.io_out", 4.0),
            rec("hop2.system_link", 8.0),
            rec("hop2.io_in", 16.0),
            rec("head/lm_head.local", 32.0),
            rec("layer/qkv.local", 10.0, count=8),
            rec("kv_shift", 1.0, count=8),
            rec("host.prompt_in", 64.0),  # a prompt's next chunk enters the first device
            rec("rope.tables", 128.0),
        ]
    )
    stages = device_stages(ledger, regions)
    # device 0: embed, hop1, the leg out, half of the 88 cycles of layers, the next chunk's
    # entry; device 1 the rest
    assert stages.devices.tolist() == [1 + 2 + 4 + 44 + 64 + 128, 16 + 32 + 44]
    assert stages.links.tolist() == [8.0]


def test_one_sequence_is_the_sequence_alone():
    stages = _stages([3, 5], [1])
    schedule = PipelineSchedule(batch=1, prefill=stages, decode=stages)
    assert schedule.decode_cycles() == schedule.prefill_cycles() == 9.0
    assert schedule.bubble_fraction(stages, 9.0) == pytest.approx(1 - 8 / 18)


def test_a_round_is_the_trip_or_b_times_the_bottleneck_whichever_is_longer():
    stages = _stages([3, 5], [1])
    rounds = [PipelineSchedule(batch=b, prefill=stages, decode=stages) for b in (2, 4)]
    assert [s.decode_cycles() for s in rounds] == [max(9, 2 * 5), 4 * 5]
    assert [s.prefill_cycles() for s in rounds] == [9 + 5, 9 + 3 * 5]
    assert rounds[0].bubble_fraction(stages, 10.0) == pytest.approx(1 - 2 * 8 / (2 * 10))


def test_as_many_sequences_as_balanced_devices_fill_the_pipeline():
    stages = _stages([4, 4, 4], [0.5, 0.5])
    full = PipelineSchedule(batch=3, prefill=stages, decode=stages)
    assert full.decode_cycles() == 13.0  # the trip (12 + 1) still exceeds 3 x 4
    more = PipelineSchedule(batch=4, prefill=stages, decode=stages)
    assert more.decode_cycles() == 16.0
    assert more.bubble_fraction(stages, more.decode_cycles()) == 0.0
    assert 1 - full.bubble_fraction(stages, full.decode_cycles()) == pytest.approx(36 / 39)
