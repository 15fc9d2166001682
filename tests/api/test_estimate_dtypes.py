"""`estimate(weight_dtype=, kv_dtype=)` and the sweep's dtype keys (SPEC.md §10.2, §10.14)."""

from __future__ import annotations

import pytest

from waferllm.api.estimate import estimate
from waferllm.api.sweep import sweep
from waferllm.errors import WaferError

TINY = {"model": "tiny", "device": "tiny", "output_len": 4, "prefill_grid": 8, "decode_grid": 8}


def _estimate(**kwargs):
    return estimate("tiny", device="tiny", prompt_len=16, output_len=4, prefill_grid=8,
                    decode_grid=8, **kwargs)  # fmt: skip


def test_the_report_names_the_stored_dtypes_and_compression_frees_sram_and_costs_time():
    plain, packed = _estimate(), _estimate(weight_dtype="int4", kv_dtype="int8")
    assert (plain.report.weight_dtype, plain.report.kv_dtype) == ("float16", "float16")
    assert (packed.report.weight_dtype, packed.report.kv_dtype) == ("int4", "int8")
    ours, theirs = packed.metrics, plain.metrics
    assert ours.peak_sram_bytes_per_core < theirs.peak_sram_bytes_per_core
    assert ours.tpot_s > theirs.tpot_s  # the dequantisation is paid every step
    # on the request's 8x8 decode plan (the report's whole-device capacity takes the best
    # tiling, 2 x 64x32, whose one-pair kv tiles int8's per-group scales do not shrink)
    assert packed.ledgers.model.kv_capacity_tokens() > plain.ledgers.model.kv_capacity_tokens()
    ops = packed.to_dict()["breakdown"]["decode"]["ops"]
    assert any("dequant" in op for op in ops) and any("kv_quantise" in op for op in ops)
    # the hand-off quantises the prompt's k and v before they travel compressed
    assert "transition/kv_quantise" in packed.to_dict()["breakdown"]["transition"]["ops"]
    assert "transition/kv_quantise" not in plain.to_dict()["breakdown"]["transition"]["ops"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_dtype": "int3"}, "weight_dtype='int3' is not one of float16, int8, int4"),
        ({"kv_dtype": "fp8"}, "kv_dtype=fp8 is not modelled"),
        ({"weight_dtype": "int8", "system": "t10"}, "float16 weights and KV cache only"),
    ],
)
def test_bad_or_unmodelled_dtypes_are_user_errors(kwargs, message):
    with pytest.raises(WaferError, match=message):
        _estimate(**kwargs)


def test_the_sweep_dtype_keys_give_rows_not_errors(tmp_path):
    axes = {**TINY, "prompt_len": 16, "weight_dtype": ["float16", "int8", "int4"],
            "kv_dtype": ["float16", "int4"]}  # fmt: skip
    result = sweep(axes, out=tmp_path, workers=1, plots=False)
    assert result.errors == 0 and len(result.rows) == 6
    for row in result.rows:
        direct = _estimate(weight_dtype=row["weight_dtype"], kv_dtype=row["kv_dtype"])
        assert row["tpot_s"] == direct.metrics.tpot_s
    peaks = [row["peak_sram_bytes_per_core"] for row in result.rows[::2]]
    assert peaks[0] > peaks[1] > peaks[2]
