"""`estimate(num_devices=...)` (SPEC.md §10.10): a report over linked devices, `auto`, and the
errors of a model that does not fit the devices it is given."""

from __future__ import annotations

import dataclasses

import pytest

from waferllm import estimate
from waferllm.device import tiny, wse2
from waferllm.errors import WaferError

# a 4 x 4-core device on which the 2-layer tiny model needs two devices (one layer each)
SMALL = dataclasses.replace(
    tiny(), name="small", mesh_rows=4, mesh_cols=4, sram_bytes_per_core=16384
)
TINY = dict(model="tiny", device=SMALL, prompt_len=12, output_len=4, prefill_grid=4, decode_grid=4)
LLAMA = dict(model="llama3-8b", device="wse2", prompt_len=128, output_len=4,
             prefill_grid=480, decode_grid=480)  # fmt: skip


def test_a_two_wafer_report_counts_both_devices_and_shows_the_link_cost():
    est = estimate(**LLAMA, num_devices=2)
    report, device = est.to_dict(), wse2()
    assert report["num_devices"] == 2
    pipeline = report["breakdown"]["pipeline"]
    assert [(d["first_layer"], d["num_layers"]) for d in pipeline["devices"]] == [(0, 16), (16, 16)]
    link = pipeline["system_link"]
    prefill_bytes, token_bytes = 128 * 4096 * 2, 4096 * 2
    ttft_s = report["metrics"]["ttft_s"]
    link_s = 5e-6 + prefill_bytes / 150e9
    legs = [r for r in est.ledgers.prefill.ledger.records if r.op in ("hop1.io_out", "hop1.io_in")]
    legs_s = device.cycles_to_seconds(sum(r.latency_cycles for r in legs))
    assert link["prefill"] == {
        "transfers": 1,
        "bytes": prefill_bytes,
        "modelled_s": pytest.approx(link_s, rel=1e-12),
        "io_legs_modelled_s": pytest.approx(legs_s, rel=1e-12),
        "mean_device_busy_fraction": pytest.approx((ttft_s - link_s) / (2 * ttft_s)),
    }
    assert legs_s > 0 and link["decode"]["io_legs_modelled_s"] == 0.0  # decode leaves at column 0
    assert link["decode"]["transfers"] == 3 and link["decode"]["bytes"] == 3 * token_bytes
    assert link["decode"]["modelled_s"] == pytest.approx(3 * (5e-6 + token_bytes / 150e9))
    m = report["metrics"]
    total_s = m["ttft_s"] + m["transition_s"] + m["tpot_s"] * 3
    energy = report["breakdown"]["energy"]  # both wafers draw power the whole time
    assert energy["static_j"] == pytest.approx(2 * device.static_power_w * total_s)
    assert energy["power_x_time_j"] == pytest.approx(2 * device.power_w * total_s)
    assert m["energy_j"] == pytest.approx(energy["total_j"])
    regions = report["breakdown"]["placement"]["decode"]["regions"]
    assert [(r["origin"], r["device"]) for r in regions] == [([0, 0], 0), ([0, 0], 1)]
    cores = 2 * 480 * 480
    sram = 2 * device.sram_bytes_per_core * device.num_cores
    peak = m["peak_sram_bytes_per_core"]
    # each region (one per wafer) at its own peak core's bytes: the peak core's region at
    # least, both regions at that peak at most
    assert peak * cores / 2 / sram < report["sram_used_fraction"] <= peak * cores / sram


def test_one_device_reports_stay_as_they_were():
    report = estimate(**LLAMA).to_dict()
    assert report["num_devices"] == 1 and "pipeline" not in report["breakdown"]
    assert all("device" not in r for r in report["breakdown"]["placement"]["decode"]["regions"])


def test_auto_takes_the_fewest_devices_that_fit():
    with pytest.raises(WaferError, match="needs 2 linked small wafers; use --num-devices 2"):
        estimate(**TINY)
    est = estimate(**TINY, num_devices="auto")
    assert est.report.num_devices == 2
    one = estimate(**{**TINY, "device": tiny()}, num_devices="auto")
    assert one.report.num_devices == 1


def test_a_model_too_large_for_the_devices_given_says_how_many_it_needs():
    # 6 since each device takes the layers its room allows, the end devices fewer (was 7
    # with an even split; 8 before the prefill plan budgeted the walk's actual peak)
    with pytest.raises(
        WaferError, match=r"llama3-70b does not fit 2 wse3s .* needs 6 linked wse3 wafers"
    ):
        estimate("llama3-70b", device="wse3", prompt_len=128, output_len=4, prefill_grid=514,
                 decode_grid=514, num_devices=2)  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"num_devices": 0}, "num_devices=0 must be a positive integer or 'auto'"),
        ({"num_devices": "two"}, "num_devices='two' must be"),
        ({"num_devices": True}, "num_devices=True must be"),
        ({"num_devices": 3, "model": "tiny"}, "more than the model's 2 layers"),
        ({"num_devices": 2, "placement": "per-layer"}, "needs placement fit"),
        ({"num_devices": 2, "system": "t10"}, "applies to system waferllm only"),
    ],
)
def test_bad_device_counts_are_user_errors(extra, message):
    args = {**TINY, "device": tiny(), **extra}
    with pytest.raises(WaferError, match=message):
        estimate(**args)


def test_a_batch_over_two_wafers_overlaps_its_sequences_and_reports_the_bubbles():
    one = estimate(**LLAMA, num_devices=2).to_dict()
    assert estimate(**LLAMA, num_devices=2, batch_size=1).to_dict()["metrics"] == one["metrics"]
    est = estimate(**LLAMA, num_devices=2, batch_size=3)
    report, device = est.to_dict(), wse2()
    batch, m = report["breakdown"]["batch"], report["metrics"]
    stages = [*batch["device_decode_s"], *batch["link_decode_s"]]
    alone = one["breakdown"]["decode"]["modelled_s"]
    assert sum(stages) == pytest.approx(alone, rel=1e-9)  # one sequence's decode, split
    round_s = max(alone, 3 * max(stages)) / 3  # three decode steps
    assert m["tpot_s"] == pytest.approx(round_s, rel=1e-9)
    assert m["ttft_s"] == one["metrics"]["ttft_s"]  # one sequence's own prefill
    busy = 3 * sum(batch["device_decode_s"]) / (2 * 3 * round_s)
    assert batch["decode_bubble_fraction"] == pytest.approx(1 - busy, rel=1e-9)
    assert batch["decode_tokens_per_s"] == pytest.approx(3 / round_s, rel=1e-9)
    assert report["batch_size"] == 3 and device.name == report["device"]
    assert "batch 3: the sequences overlap" in report["breakdown"]["pipeline"]["bubble"]


def test_a_batch_whose_kv_caches_overflow_the_devices_is_an_error():
    # five sequences need a step's scratch each: the 480-row cache of two wse2s holds four
    # (k and v take 10 bytes per position per layer at 480 columns, 16 when both were padded to
    # whole RoPE pairs: it held three)
    with pytest.raises(WaferError, match="the batch's KV cache does not fit: its 5 sequences"):
        estimate(**LLAMA, num_devices=2, batch_size=5)
