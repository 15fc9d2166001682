"""`estimate(batch_size=B)` / `estimate --batch-size B`: B requests decoded together.

The metrics are one sequence's (TTFT its own prompt's prefill, TPOT the batch's step), the
report says the batch size and the breakdown the batch's throughput; a batch whose KV cache
does not fit is one clear error.
"""

from __future__ import annotations

import json

import pytest

from waferllm import estimate
from waferllm.cli import main
from waferllm.errors import WaferError

TINY = {"device": "tiny", "prefill_grid": 8, "decode_grid": 8}


def test_a_batch_shares_each_decode_step_and_reports_its_throughput():
    one = estimate("tiny", prompt_len=16, output_len=5, **TINY)
    four = estimate("tiny", prompt_len=16, output_len=5, batch_size=4, **TINY)
    assert (one.report.batch_size, four.report.batch_size) == (1, 4)
    assert "batch" not in one.to_dict()["breakdown"]
    assert four.metrics.ttft_s == one.metrics.ttft_s
    # the GEMVs carry 4 vectors, so a step costs more than one sequence's, less than four's
    assert one.metrics.tpot_s < four.metrics.tpot_s < 4 * one.metrics.tpot_s
    batch = four.to_dict()["breakdown"]["batch"]
    decode_s = four.metrics.tpot_s * 4  # O - 1 = 4 steps
    assert batch["decode_tokens_per_s"] == pytest.approx(4 * 4 / decode_s)
    assert batch["prefill_s"] == pytest.approx(4 * one.metrics.ttft_s)
    assert batch["decode_tokens_per_s"] > one.metrics.decode_tpr


def test_a_batch_whose_kv_cache_does_not_fit_is_a_clear_error():
    small = {"sram_bytes_per_core": 20000}
    with pytest.raises(WaferError, match="the batch's KV cache does not fit"):
        estimate("tiny", prompt_len=100, output_len=20, batch_size=8, device="tiny",
                 device_overrides=small, prefill_grid=26, decode_grid=4)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"batch_size": True}, "must be a positive integer"),
        ({"batch_size": 2, "system": "t10"}, "batch_size=2 applies to system waferllm only"),
    ],
)
def test_bad_batch_sizes_are_refused(kwargs, message):
    with pytest.raises(WaferError, match=message):
        estimate("tiny", prompt_len=16, output_len=4, **TINY, **kwargs)


def test_the_cli_flag_sets_the_reports_batch_size(capsys):
    args = ["estimate", "--model", "tiny", "--device", "tiny", "--prompt-len", "16",
            "--output-len", "4", "--prefill-grid", "8", "--decode-grid", "8"]  # fmt: skip
    assert main([*args, "--batch-size", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch_size"] == 3 and report["breakdown"]["batch"]["batch_size"] == 3
    assert main([*args, "--batch-size", "0"]) == 2
