"""Softmax and attention masks on the mesh against torch and transformers' masks."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.masking_utils import causal_mask_function, sliding_window_overlay

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.kernels.softmax import causal_mask, score_mask, softmax
from waferllm.kernels.vector import tile_positions
from waferllm.mesh import Axis, Layout, Ledger, Mesh


def _mesh(rows: int, cols: int, **kw) -> Mesh:
    return Mesh(tiny(), rows, cols, **kw)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale


# ---- softmax and masks ---------------------------------------------------------------------------
def _hf_mask(num_q: int, num_k: int, window: int | None) -> torch.Tensor:
    keep = torch.zeros(num_q, num_k, dtype=torch.bool)
    for q in range(num_q):
        for k in range(num_k):
            ok = causal_mask_function(0, 0, q, k)
            if window is not None:
                ok = ok and sliding_window_overlay(window)(0, 0, q, k)
            keep[q, k] = bool(ok)
    return keep


@pytest.mark.parametrize("grid", [(1, 1), (3, 3), (3, 5), (4, 2)])
@pytest.mark.parametrize("window", [None, 1, 3])
def test_prefill_softmax_with_causal_and_sliding_window_masks_matches_torch(grid, window):
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(7, 7, generator=gen)
    mesh = _mesh(*grid)
    sd = mesh.scatter(scores, Layout((7, 7), y_dim=0, x_dim=1), "scores")
    mask = score_mask(sd, query_dim=0, key_dim=1, sliding_window=window)
    out = softmax(mesh, scores=sd, ledger=Ledger(), mask=mask, scale=0.25)
    keep = _hf_mask(7, 7, window)
    want = torch.softmax((scores * 0.25).masked_fill(~keep, -math.inf), dim=-1)
    _close(mesh.gather(out), want, 1e-6)


def test_decode_softmax_over_sequence_rows_masks_empty_cache_slots():
    gen = torch.Generator().manual_seed(4)
    n_rep, slots = 4, 11  # 11 slots over 3 rows: 4, 4, 3 (+1 padding)
    scores = torch.randn(n_rep, slots, generator=gen)
    key_pos = torch.tensor([0, 1, 2, -1, 3, 4, 5, -1, 6, 7, -1])  # per-row partly empty
    mesh = _mesh(3, 2)
    sd = mesh.scatter(scores, Layout((n_rep, slots), y_dim=1), "scores")
    mask = causal_mask(
        query_positions=torch.tensor(7),
        key_positions=tile_positions(sd, 1, key_pos),
        sliding_window=6,
    )
    out = softmax(mesh, scores=sd, ledger=Ledger(), axis=Axis.Y, mask=mask)
    keep = (key_pos >= 0) & (key_pos <= 7) & (7 - key_pos < 6)
    want = torch.softmax(scores.masked_fill(~keep, -math.inf), dim=-1)
    _close(mesh.gather(out), want, 1e-6)


def test_segmented_softmax_normalises_each_group_of_columns_on_its_own():
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(3, 10, generator=gen)
    mesh = _mesh(2, 5)  # tiles of 2 keys; kv-groups of 2 and 3 columns: keys 0-3 and 4-9
    sd = mesh.scatter(scores, Layout((3, 10), x_dim=1), "scores")
    ledger = Ledger()
    out = softmax(mesh, scores=sd, ledger=ledger, group_sizes=(2, 3))
    want = torch.cat([torch.softmax(scores[:, :4], -1), torch.softmax(scores[:, 4:], -1)], -1)
    _close(mesh.gather(out), want, 1e-6)
    assert {r.op.rsplit(".", 1)[-1] for r in ledger.records if "allreduce" in r.op} == {
        "reduce",
        "bcast",
    }


def test_a_row_with_nothing_to_attend_gives_zeros_not_nan():
    mesh = _mesh(2, 2)
    sd = mesh.scatter(torch.randn(3, 4), Layout((3, 4), y_dim=0, x_dim=1), "scores")
    mask = torch.zeros(sd.data.shape, dtype=torch.bool)
    out = softmax(mesh, scores=sd, ledger=Ledger(), mask=mask)
    assert torch.equal(mesh.gather(out), torch.zeros(3, 4))


def test_softmax_is_in_place_and_padding_gets_zero_probability():
    mesh = _mesh(1, 3)
    sd = mesh.scatter(torch.randn(2, 7), Layout((2, 7), x_dim=1), "scores")
    live = dict(mesh.sram.live)
    out = softmax(mesh, scores=sd, ledger=Ledger())
    assert mesh.sram.live == live and out.sram_key == sd.sram_key
    assert torch.equal(out.data[0, 2, :, 1:], torch.zeros(2, 2))  # 7 over 3: 2 padded slots


def test_masks_reject_a_non_positive_window():
    with pytest.raises(WaferError, match="sliding_window"):
        causal_mask(
            query_positions=torch.tensor(1), key_positions=torch.tensor(0), sliding_window=0
        )
