"""`waferllm.reproduce`'s pieces: the tables' arithmetic, the artefacts, the kernel claims.

The whole reproduction takes tens of seconds (benchmarks/reproduce_paper.py runs it); these
tests check its parts on synthetic tables and cheap kernel points.
"""

from __future__ import annotations

import json

import pytest

from waferllm.api import paper_figures as paper
from waferllm.api.reproduce import Reproduction, _energy_section, _phase_table
from waferllm.api.reproduce_kernels import _gemv_claims
from waferllm.api.reproduce_output import format_value, to_markdown, write_artifacts
from waferllm.api.tables import Column, Section
from waferllm.device import wse2


def _phase_rows(values: dict[int, float], gpus: dict[int, float]) -> dict:
    return {
        "model": "llama3-8b",
        "source": "ours",
        **{str(p): v for p, v in values.items()},
        **{f"gpu{g}": v for g, v in gpus.items()},
    }


def _tables() -> tuple[Section, Section]:
    prefill = _phase_table(
        "prefill",
        paper.PREFILL_GRIDS,
        [_phase_rows({480: 100.0, 600: 200.0, 720: 150.0}, {1: 10.0, 8: 20.0, 16: 40.0})],
    )
    decode = _phase_table(
        "decode",
        paper.DECODE_GRIDS,
        [_phase_rows({420: 30.0, 540: 20.0, 660: 10.0}, {1: 1.0, 8: 2.0, 16: 3.0})],
    )
    return prefill, decode


def test_phase_tables_state_the_trend_the_model_gives():
    prefill, decode = _tables()
    assert "llama3-8b: prefill TPR is not monotone" in prefill.notes[-1]
    assert "llama3-8b: decode TPR falls with the grid" in decode.notes[-1]


def test_energy_ratios_compare_energy_per_token_at_the_wafers_fastest_grid():
    prefill, decode = _tables()
    device = wse2()
    row = _energy_section(device, prefill, decode).rows[0]
    assert row["prefill_grid"] == 600 and row["decode_grid"] == 420
    # A100 J/token = 400 W x G / TPR; wafer J/token = power / TPR at its fastest grid
    assert row["prefill8"] == pytest.approx((400 * 8 / 20.0) / (device.power_w / 200.0))
    assert row["decode1"] == pytest.approx((400 / 1.0) / (device.power_w / 30.0))


def test_cells_format_by_column_and_missing_values_show_a_dash():
    assert format_value(None, "tpr") == "-"
    assert format_value(12345.678, "tpr") == "12,345.7"
    assert format_value(1.2e-6, "s") == "1.2 us"
    assert format_value(-0.0512, "err") == "-5.1%"
    assert format_value(3.0, "x") == "3.00x"
    assert format_value(float("inf"), "s") == "-"


def _reproduction() -> Reproduction:
    prefill, decode = _tables()
    e2e = Section(
        key="e2e_tpr",
        title="End-to-end",
        columns=(Column("model", "model"), Column("wafer", "wafer", "tpr")),
        rows=(
            {"model": "llama3-8b", "request": "2048/128", "wafer": 900.0, "gpu1": 80.0},
            {"model": "qwen2-72b", "request": "2048/128", "wafer": None, "why": "too big"},
        ),
    )
    return Reproduction(device=wse2(), sections=(prefill, decode, e2e), host_wall_s=1.5)


def test_artefacts_are_markdown_json_and_plots_written_atomically(tmp_path):
    result = _reproduction()
    paths = write_artifacts(result, tmp_path, date="2026-01-02", header={"commit": "abc"})
    names = sorted(p.name for p in paths)
    assert names == [
        "reproduce_throughput_vs_grid_wse2_2026-01-02.png",
        "reproduce_wafer_vs_gpu_wse2_2026-01-02.png",
        "reproduce_wse2_2026-01-02.json",
        "reproduce_wse2_2026-01-02.md",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left
    record = json.loads((tmp_path / "reproduce_wse2_2026-01-02.json").read_text())
    assert record["kind"] == "reproduce" and record["modelled"] is True
    assert set(record["sections"]) == {"prefill_tpr", "decode_tpr", "e2e_tpr"}
    assert record["run"] == {"commit": "abc"}
    markdown = (tmp_path / "reproduce_wse2_2026-01-02.md").read_text()
    assert "| model | source | 480x480 |" in markdown and "modelled" in markdown
    assert markdown == to_markdown(result, header={"commit": "abc"})


def test_meshgemv_beats_the_pipeline_allreduce_gemv_as_the_paper_claims():
    section = _gemv_claims(wse2(), lambda what: None)
    for side in (360, 720):
        rows = {r["algo"]: r for r in section.rows if r["grid"] == side}
        assert rows["pipeline"]["vs_meshgemv"] > 1.0
        assert rows["meshgemv"]["vs_meshgemv"] == pytest.approx(1.0)
    assert "speedup over pipeline" in section.notes[0]
