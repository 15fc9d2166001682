"""PLMR device presets, JSON device files and `--set` overrides."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from waferllm.device import (
    PRESETS,
    Device,
    get_device,
    list_devices,
    load_device,
    parse_set_options,
    tiny,
    with_overrides,
    wse2,
    wse3,
)

FIELDS = [f.name for f in dataclasses.fields(Device) if f.name not in ("name", "sources")]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_every_constant_cites_a_source(name):
    device = get_device(name)
    assert device.name == name
    assert dataclasses.replace(device) == device  # __post_init__ accepts it
    for field in FIELDS:
        assert device.sources.get(field, "").strip(), f"{name}.{field} has no source"


def test_the_wafer_presets_carry_the_papers_usable_rectangles_and_f16_storage():
    assert (wse2().mesh_rows, wse2().mesh_cols) == (994, 750)
    assert (wse3().mesh_rows, wse3().mesh_cols) == (1170, 755)
    assert wse2().storage_bytes == wse3().storage_bytes == 2
    assert [d.name for d in list_devices()] == list(PRESETS)


def test_cycles_convert_to_seconds_at_the_clock_and_energy_is_power_times_time():
    device = wse2()
    assert device.cycles_to_seconds(1.1e9) == pytest.approx(1.0)
    assert device.energy_j(2.0) == pytest.approx(2 * device.power_w)


def test_a_full_json_device_file_loads_with_every_field(tmp_path):
    spec = wse2().to_dict()
    spec.pop("sources")
    spec["name"] = "mywafer"
    spec["mesh_rows"] = 100
    path = tmp_path / "mywafer.json"
    path.write_text(json.dumps(spec))
    device = get_device(str(path))
    assert device.name == "mywafer" and device.mesh_rows == 100
    assert device.sources["mesh_rows"] == "user file mywafer.json"
    assert dataclasses.replace(device, name="wse2", mesh_rows=994) == wse2()


def test_a_base_json_device_file_changes_only_what_it_names(tmp_path):
    path = tmp_path / "slowstage.json"
    path.write_text(json.dumps({"base": "wse2", "stage_latency_cycles": 12, "mesh_rows": "500"}))
    device = load_device(path)
    assert device.name == "slowstage"
    assert device.stage_latency_cycles == 12.0 and device.mesh_rows == 500
    assert isinstance(device.mesh_rows, int)
    assert device.sources["stage_latency_cycles"] == "user file slowstage.json"
    assert device.sources["clock_hz"] == wse2().sources["clock_hz"]
    assert (
        dataclasses.replace(
            device, name="wse2", stage_latency_cycles=wse2().stage_latency_cycles, mesh_rows=994
        )
        == wse2()
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "one JSON object"),
        ('{"base": "wse9"}', "not a preset"),
        ('{"base": "wse2", "bogus": 1}', "unknown device field 'bogus'"),
        ('{"base": "wse2", "mesh_rows": true}', "not a number"),
        ('{"base": "wse2", "mesh_rows": 0}', "positive integer"),
        ('{"name": "x", "mesh_rows": 4}', "lacks"),
    ],
)
def test_bad_device_files_raise_one_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        get_device(str(path))


def test_a_device_file_whose_base_is_itself_is_refused_not_recursed(tmp_path):
    path = tmp_path / "loop.json"
    path.write_text(json.dumps({"base": str(path)}))
    with pytest.raises(ValueError, match="not a preset"):
        load_device(path)


def test_a_missing_device_file_or_unknown_name_lists_the_presets(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        get_device(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="presets: wse2, wse3, tiny"):
        get_device("wse4")


def test_set_overrides_coerce_types_and_record_their_source():
    device = get_device(
        "tiny",
        parse_set_options(["mesh_rows=32", "stage_latency_cycles=2.5", "storage_dtype=float32"]),
    )
    assert device.mesh_rows == 32 and isinstance(device.mesh_rows, int)
    assert device.stage_latency_cycles == 2.5 and device.storage_bytes == 4
    assert device.sources["mesh_rows"] == "user override (--set)"
    assert device.sources["clock_hz"] == tiny().sources["clock_hz"]


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("bogus=1", "unknown device field 'bogus'; valid fields: name, mesh_rows"),
        ("sources=x", "unknown device field"),
        ("mesh_rows=2.5", "must be an integer"),
        ("mesh_rows=inf", "finite"),
        ("clock_hz=nan", "finite"),
        ("power_w=-1", "positive number"),
        ("hop_latency_cycles=-0.5", ">= 0"),
        ("clock_hz=fast", "not a number"),
        ("storage_dtype=int8", "float16, bfloat16, float32"),
        ("mesh_rows", "key=value"),
        ("=3", "key=value"),
    ],
)
def test_bad_overrides_are_rejected_naming_the_field(item, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        with_overrides(tiny(), parse_set_options([item]))


def test_devices_are_hashable_and_compare_without_their_sources():
    a, b = tiny(), dataclasses.replace(tiny(), sources={})
    assert a == b and hash(a) == hash(b)
    assert with_overrides(a, {"stage_latency_cycles": 1}) != a
