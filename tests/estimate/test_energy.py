"""Energy per event (estimate/energy.py): static power over the modelled time plus pJ per FLOP,
per SRAM byte and per byte-hop, from the ledgers' events; reported as `energy_j` with its split
in the breakdown, and moved by what-ifs through the events as well as through time."""

from __future__ import annotations

import dataclasses

import pytest

from waferllm import estimate
from waferllm.device import tiny, wse2
from waferllm.errors import WaferError
from waferllm.estimate.energy import event_energy
from waferllm.mesh.cost import Totals


def test_event_energy_is_static_power_times_time_plus_each_event_times_its_energy():
    device = dataclasses.replace(
        tiny(),
        static_power_w=100.0,
        energy_pj_per_flop=2.0,
        energy_pj_per_sram_byte=3.0,
        energy_pj_per_hop_byte=5.0,
    )
    totals = [Totals(flops=10, sram_bytes=20, link_byte_hops=30), Totals(flops=1)]
    energy = event_energy(device, totals, 0.5)
    assert energy.static_j == pytest.approx(50.0)
    assert energy.compute_j == pytest.approx(11 * 2e-12)
    assert energy.sram_j == pytest.approx(20 * 3e-12)
    assert energy.fabric_j == pytest.approx(30 * 5e-12)
    assert energy.power_x_time_j == pytest.approx(device.power_w * 0.5)
    assert energy.total_j == pytest.approx(50.0 + (22 + 60 + 150) * 1e-12)


def _estimate(**overrides):
    return estimate(
        "llama3-8b",
        device="wse2",
        device_overrides=overrides or None,
        prompt_len=512,
        output_len=4,
        prefill_grid=360,
        decode_grid=360,
        placement="per-layer",
    ).to_dict()


@pytest.fixture(scope="module")
def report():
    return _estimate()


def test_the_report_energy_is_the_event_energy_of_its_ledgers_over_its_modelled_time(report):
    m, energy = report["metrics"], report["breakdown"]["energy"]
    seconds = m["ttft_s"] + m["transition_s"] + m["tpot_s"] * 3
    assert m["energy_j"] == pytest.approx(energy["total_j"])
    assert energy["static_j"] == pytest.approx(wse2().static_power_w * seconds)
    assert energy["power_x_time_j"] == pytest.approx(wse2().power_w * seconds)
    assert min(energy["compute_j"], energy["sram_j"], energy["fabric_j"]) > 0
    flops = report["breakdown"]["prefill"]["flops"] + report["breakdown"]["decode"]["flops"]
    assert energy["compute_j"] == pytest.approx(flops * wse2().energy_pj_per_flop * 1e-12)


def test_a_costlier_hop_moves_energy_through_the_fabric_events_only(report):
    dearer = _estimate(energy_pj_per_hop_byte=2 * wse2().energy_pj_per_hop_byte)
    base, new = report["breakdown"]["energy"], dearer["breakdown"]["energy"]
    assert dearer["metrics"]["ttft_s"] == report["metrics"]["ttft_s"]
    assert new["fabric_j"] == pytest.approx(2 * base["fabric_j"])
    assert new["total_j"] - base["total_j"] == pytest.approx(base["fabric_j"])


def test_a_wider_link_changes_energy_through_time_not_through_the_byte_hops(report):
    wide = _estimate(link_bytes_per_cycle=2 * wse2().link_bytes_per_cycle)
    base, new = report["breakdown"]["energy"], wide["breakdown"]["energy"]
    assert new["fabric_j"] == pytest.approx(base["fabric_j"])
    assert new["static_j"] < base["static_j"]


@pytest.mark.parametrize(
    "field",
    ["static_power_w", "energy_pj_per_flop", "energy_pj_per_sram_byte", "energy_pj_per_hop_byte"],
)
def test_energy_constants_must_not_be_negative(field):
    with pytest.raises(WaferError, match=field):
        dataclasses.replace(wse2(), **{field: -1.0})
