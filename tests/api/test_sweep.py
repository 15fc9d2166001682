"""waferllm.sweep (SPEC.md §10.14): typed axes, their product, rows per point (errors too),
the files, the disk cache, and the same rows from every way of running the points."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from waferllm.api import sweep_run
from waferllm.api.estimate import estimate
from waferllm.api.sweep import sweep
from waferllm.api.sweep_output import COLUMNS
from waferllm.api.sweep_run import check_ray_address, estimate_kwargs
from waferllm.api.sweep_spec import SweepPoint, load_sweep
from waferllm.device import tiny
from waferllm.errors import WaferError

# the tiny model on the tiny device with grids given: a fraction of a second per point
TINY = {"model": "tiny", "device": "tiny", "output_len": 4, "prefill_grid": 8, "decode_grid": 8}


def _points(**values: Any) -> list[SweepPoint]:
    return list(load_sweep(values=values).points())


# ---- parsing -------------------------------------------------------------------------------------
def test_axis_strings_are_typed_per_key():
    spec = load_sweep(
        axes=[
            "model=tiny,llama3-8b",
            "device=tiny",
            "prompt_len=16,32",
            "output_len=4",
            "batch_size=1,2",
            "prefill_grid=8,4x8",
            "decode_grid=2x3",
            "placement=fit,per-layer",
            "system=waferllm,t10",
            "num_devices=1,2,auto",
            "weight_dtype=float16,int4",
            "kv_dtype=int8",
            "device.sram_bytes_per_core=49152",
            "device.stage_latency_cycles=20,34.3",
            "device.storage_dtype=float32",
        ]
    )
    axes = dict(spec.axes)
    assert axes["model"] == ("tiny", "llama3-8b")
    assert axes["prompt_len"] == (16, 32) and axes["num_devices"] == (1, 2, "auto")
    assert axes["prefill_grid"] == ((8, 8), (4, 8)) and axes["decode_grid"] == ((2, 3),)
    assert axes["placement"] == ("fit", "per-layer") and axes["kv_dtype"] == ("int8",)
    assert axes["device.sram_bytes_per_core"] == (49152,)
    assert type(axes["device.sram_bytes_per_core"][0]) is int
    assert axes["device.stage_latency_cycles"] == (20.0, 34.3)
    assert type(axes["device.stage_latency_cycles"][0]) is float
    assert axes["device.storage_dtype"] == ("float32",)
    assert spec.num_points == 2 * 2 * 2 * 2 * 2 * 2 * 3 * 2 * 2


def test_a_toml_file_gives_scalars_lists_grids_and_device_tables(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'model = "tiny"\nprompt_len = [16, 32]\noutput_len = 4\nprefill_grid = [8, "4x8"]\n'
        'decode_grid = [[2, 3]]\n"device.power_w" = [100, 200.5]\n'
    )
    axes = dict(load_sweep(path).axes)
    assert axes["model"] == ("tiny",) and axes["output_len"] == (4,)
    assert axes["prefill_grid"] == ((8, 8), (4, 8)) and axes["decode_grid"] == ((2, 3),)
    assert axes["device.power_w"] == (100.0, 200.5)
    nested = tmp_path / "n.toml"
    nested.write_text('model = "tiny"\nprompt_len = 16\noutput_len = 4\n[device]\nmesh_rows = 32\n')
    assert dict(load_sweep(nested).axes)["device.mesh_rows"] == (32,)


def test_a_json_file_and_axis_options_combine_the_options_replacing_an_axis(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"model": "tiny", "prompt_len": [16, 32], "output_len": 4}))
    axes = dict(load_sweep(path, axes=["prompt_len=64", "device=wse3"]).axes)
    assert axes["prompt_len"] == (64,) and axes["device"] == ("wse3",)


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (["colour=red"], "unknown sweep key 'colour'"),
        (["prompt_len="], "is empty"),
        (["prompt_len=abc"], "is not an integer"),
        (["prompt_len=0"], "must be a positive integer"),
        (["output_len=1.5"], "is not an integer"),
        (["placement=everywhere"], "is not one of fit, per-layer"),
        (["kv_dtype=int3"], "is not one of"),
        (["prefill_grid=0x3"], "prefill_grid"),
        (["device.warp_drive=1"], "unknown device field 'warp_drive'"),
        (["device.mesh_rows=many"], "is not an integer"),
        (["device.power_w=lots"], "is not a number"),
        (["prompt_len=16,16"], "repeats a value"),
        (["noequals"], "--axis expects key=v1,v2"),
    ],
)
def test_bad_axes_are_user_errors_naming_the_key(axes, message):
    base = ["model=tiny", "prompt_len=16", "output_len=4"]
    with pytest.raises(WaferError, match=message.replace("(", r"\(")):
        load_sweep(axes=[*base, *axes])


def test_bad_file_values_are_user_errors(tmp_path):
    cases = {
        "empty.toml": 'model = "tiny"\nprompt_len = []\noutput_len = 4\n',
        "float.toml": 'model = "tiny"\nprompt_len = [16.0]\noutput_len = 4\n',
        "bool.json": '{"model": "tiny", "prompt_len": true, "output_len": 4}',
        "table.toml": 'model = "tiny"\nprompt_len = 16\noutput_len = 4\n[grids]\na = 1\n',
        "broken.toml": "model = \n",
        "broken.json": "{",
        "list.json": "[1, 2]",
        "missing.toml": 'model = "tiny"\nprompt_len = 16\n',
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(WaferError):
            load_sweep(path)
    with pytest.raises(WaferError, match="cannot read sweep file"):
        load_sweep(tmp_path / "absent.toml")


# ---- the product ---------------------------------------------------------------------------------
def test_the_points_are_the_product_with_the_last_axis_fastest():
    points = _points(
        model="tiny", prompt_len=[16, 32], output_len=[4, 8], **{"device.power_w": [1, 2]}
    )
    assert len(points) == 8
    assert [(p.prompt_len, p.output_len, p.device_overrides) for p in points[:3]] == [
        (16, 4, (("power_w", 1.0),)),
        (16, 4, (("power_w", 2.0),)),
        (16, 8, (("power_w", 1.0),)),
    ]
    assert points[0].device == "wse2" and points[0].batch_size == 1  # estimate's defaults


def test_estimate_kwargs_pass_through_only_non_default_inputs_the_estimate_takes(monkeypatch):
    (point,) = _points(**TINY, prompt_len=16, batch_size=2)
    assert estimate_kwargs(point)["batch_size"] == 2
    (default,) = _points(**TINY, prompt_len=16)
    assert "batch_size" not in estimate_kwargs(default)

    def older_estimate(model: str, **kwargs: Any) -> None:
        """An estimate that does not model batching."""

    monkeypatch.setattr(sweep_run, "estimate", older_estimate)
    with pytest.raises(WaferError, match="batch_size=2 is not supported"):
        estimate_kwargs(point)


def test_a_batch_size_point_runs_the_batched_estimate(tmp_path):
    result = sweep({**TINY, "prompt_len": 16, "batch_size": [1, 2]}, out=tmp_path, workers=1,
                   plots=False)  # fmt: skip
    one, two = result.rows
    assert one["error"] is None and two["error"] is None
    assert (one["batch_size"], two["batch_size"]) == (1, 2)
    assert one["ttft_s"] == two["ttft_s"]  # each prompt's own prefill
    assert one["tpot_s"] < two["tpot_s"] < 2 * one["tpot_s"]  # one step carries both


# ---- rows and files ------------------------------------------------------------------------------
def test_every_row_holds_inputs_device_constants_metrics_and_provenance(tmp_path):
    result = sweep({**TINY, "prompt_len": 16}, out=tmp_path, workers=1, plots=False)
    (row,) = result.rows
    direct = estimate("tiny", device="tiny", prompt_len=16, output_len=4, prefill_grid=8,
                      decode_grid=8).to_dict()  # fmt: skip
    assert set(row) == {name for name, _ in COLUMNS}
    for name in ("ttft_s", "tpot_s", "e2e_tpr", "energy_j", "peak_sram_bytes_per_core"):
        assert row[name] == direct["metrics"][name]
    assert row["kv_capacity_tokens.shift"] == direct["kv_capacity_tokens"]["shift"]
    assert row["max_new_tokens.concat"] == direct["max_new_tokens"]["concat"]
    assert (row["prefill_grid_rows"], row["decode_grid_cols"]) == (8, 8)
    assert row["device.sram_bytes_per_core"] == tiny().sram_bytes_per_core
    assert row["error"] is None and row["version"] and row["commit"]


def test_failing_points_are_rows_with_the_error_and_no_metrics(tmp_path):
    result = sweep(
        {**TINY, "prompt_len": 16, "prefill_grid": [8, 100], "device.mesh_rows": [64, 0]},
        out=tmp_path,
        workers=1,
        plots=False,
    )
    ok, bad_device, bad_grid, both = result.rows
    assert ok["error"] is None and result.errors == 3
    assert "mesh_rows=0 must be a positive integer" in bad_device["error"]
    assert bad_device["device.mesh_rows"] is None and bad_device["ttft_s"] is None
    assert "larger than the tiny mesh" in bad_grid["error"]
    assert bad_grid["device.mesh_rows"] == 64 and bad_grid["e2e_tpr"] is None
    assert both["error"] and "\n" not in both["error"]


def test_the_files_hold_one_typed_row_per_point(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is the [sweep] extra")
    result = sweep({**TINY, "prompt_len": [16, 32], "batch_size": [1, 2]}, out=tmp_path)
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.column_names == [name for name, _ in COLUMNS]
    assert table.to_pylist() == result.rows
    assert str(table.schema.field("peak_sram_bytes_per_core").type) == "int64"
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4
    if importlib.util.find_spec("matplotlib"):
        names = {path.name for path in result.files}
        assert {"heatmap_prompt_len__batch_size.png", "pareto_throughput_energy.png"} <= names
        assert all(path.stat().st_size > 0 for path in result.files)


# ---- the cache -----------------------------------------------------------------------------------
def test_a_rerun_reads_the_cache_and_never_calls_the_estimate(tmp_path, monkeypatch):
    axes = {**TINY, "prompt_len": [16, 32], "batch_size": [1, 3]}
    first = sweep(axes, out=tmp_path, workers=1, plots=False)
    assert (first.computed, first.cached) == (4, 0)

    def no_estimate(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(sweep_run, "estimate", no_estimate)
    second = sweep(axes, out=tmp_path, workers=1, plots=False)
    assert (second.computed, second.cached) == (0, 4)
    assert second.rows == first.rows


def test_a_changed_device_constant_misses_the_cache(tmp_path, monkeypatch):
    sweep({**TINY, "prompt_len": 16}, out=tmp_path, workers=1, plots=False)
    calls: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return estimate(*args, **kwargs)

    monkeypatch.setattr(sweep_run, "estimate", spy)
    again = sweep(
        {**TINY, "prompt_len": 16, "device.static_power_w": 1.0},
        out=tmp_path,
        workers=1,
        plots=False,
    )
    assert again.computed == 1 and calls[0]["device_overrides"] == {"static_power_w": 1.0}
    assert again.rows[0]["energy_j"] < 1e-3


# ---- execution -----------------------------------------------------------------------------------
def test_a_process_pool_gives_the_serial_rows_in_point_order(tmp_path):
    axes = {**TINY, "prompt_len": [16, 32, 48], "device.stage_latency_cycles": [1, 3]}
    serial = sweep(axes, out=tmp_path / "serial", workers=1, plots=False)
    done: list[int] = []
    pooled = sweep(
        axes, out=tmp_path / "pool", workers=2, plots=False, progress=lambda d, t: done.append(d)
    )
    assert pooled.rows == serial.rows and pooled.computed == 6
    assert done[-1] == 6 and done == sorted(done)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is not installed (the [cluster] extra; CI installs it with [test])",
)
def test_ray_tasks_give_the_pool_rows(tmp_path):
    axes = {**TINY, "prompt_len": [16, 32]}
    pooled = sweep(axes, out=tmp_path / "pool", workers=2, plots=False)
    on_ray = sweep(axes, out=tmp_path / "ray", workers=1, ray=True, plots=False)
    assert on_ray.rows == pooled.rows and on_ray.computed == 2


def test_bad_ray_addresses_are_user_errors():
    for address in ("nowhere", "host:port", "ray://:10001", "h:70000"):
        with pytest.raises(WaferError, match="is not host:port"):
            check_ray_address(address)
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(WaferError, match="cannot reach the Ray cluster"):
        check_ray_address(f"127.0.0.1:{port}", timeout_s=2.0)
    with pytest.raises(WaferError, match="needs ray=True"):
        sweep({**TINY, "prompt_len": 16}, out=Path("unused"), ray_address="127.0.0.1:1")


def test_num_devices_auto_is_a_point_value_and_the_row_says_how_many_it_took(tmp_path):
    # a 4 x 4-core device on which the 2-layer tiny model needs two devices (one layer each)
    small = {"device.mesh_rows": 4, "device.mesh_cols": 4, "device.sram_bytes_per_core": 16384}
    values = {**TINY, **small, "prompt_len": 12, "prefill_grid": 4, "decode_grid": 4}
    result = sweep({**values, "num_devices": [1, "auto"]}, out=tmp_path, workers=1, plots=False)
    one, auto = result.rows
    assert (one["num_devices"], auto["num_devices"]) == ("1", "auto")
    assert "needs 2 linked tiny wafers" in one["error"] and one["num_devices_used"] is None
    assert auto["error"] is None and auto["num_devices_used"] == 2
