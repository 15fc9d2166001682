"""The transformer's mesh ops against their dense torch / transformers equivalents, with padding,
masks and ties; estimate and functional ledgers; bad input."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from transformers import LlamaConfig
from transformers.masking_utils import causal_mask_function, sliding_window_overlay
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.kernels import ops
from waferllm.mesh import Axis, Layout, Ledger, Mesh, Mode, ReduceAlgorithm


def _mesh(rows: int, cols: int, **kw) -> Mesh:
    return Mesh(tiny(), rows, cols, **kw)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale


# ---- RMSNorm -------------------------------------------------------------------------------------
def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = LlamaRMSNorm(weight.shape[0], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (4, 4), (5, 3)])
@pytest.mark.parametrize("plan", ["decode", "prefill"])
def test_rms_norm_matches_transformers_with_padded_hidden_dim(grid, plan):
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(6, 13, generator=gen), torch.randn(13, generator=gen)
    mesh = _mesh(*grid)
    if plan == "decode":  # E_y L^x: hidden along Y, tokens replicated
        x_layout, w_layout = Layout((6, 13), y_dim=1), Layout((13,), y_dim=0)
    else:  # L_y E_x: tokens along Y, hidden along X
        x_layout, w_layout = Layout((6, 13), y_dim=0, x_dim=1), Layout((13,), x_dim=0)
    xd, wd = mesh.scatter(x, x_layout, "x"), mesh.scatter(w, w_layout, "w")
    out = ops.rms_norm(mesh, x=xd, weight=wd, ledger=Ledger(), eps=1e-5)
    assert out.layout == x_layout
    _close(mesh.gather(out), _hf_rms_norm(x, w, 1e-5))


def test_rms_norm_ignores_garbage_in_padding_and_divides_by_the_true_size():
    x, w = torch.randn(2, 10), torch.randn(10)
    mesh = _mesh(4, 1)  # 10 over 4 rows: tiles of 3, two padded slots on the last row
    xd = mesh.scatter(x, Layout((2, 10), y_dim=1), "x")
    xd.data[3, :, :, 1:] = 100.0
    wd = mesh.scatter(w, Layout((10,), y_dim=0), "w")
    out = ops.rms_norm(mesh, x=xd, weight=wd, ledger=Ledger(), eps=1e-6)
    _close(mesh.gather(out), _hf_rms_norm(x, w, 1e-6))


def test_rms_norm_allreduces_one_scalar_per_token():
    mesh = _mesh(8, 2)
    xd = mesh.scatter(torch.randn(3, 64), Layout((3, 64), y_dim=1), "x")
    wd = mesh.scatter(torch.randn(64), Layout((64,), y_dim=0), "w")
    ledger = Ledger()
    ops.rms_norm(mesh, x=xd, weight=wd, ledger=ledger, eps=1e-5, algorithm=ReduceAlgorithm.PIPELINE)
    comm = [r for r in ledger.records if "allreduce" in r.op]
    # pipeline to the middle core (4) of 8: 4 hops and 3 stages, then a 4-hop broadcast
    assert [(r.critical_hops, r.critical_stages) for r in comm] == [(4, 3), (4, 0)]
    assert comm[0].bytes_injected == 7 * 3 * mesh.device.storage_bytes * 2  # 7 senders, 2 lines


def test_rms_norm_rejects_a_weight_split_differently_from_the_hidden_dim():
    mesh = _mesh(2, 2)
    xd = mesh.scatter(torch.randn(4), Layout((4,), y_dim=0), "x")
    wd = mesh.scatter(torch.randn(4), Layout((4,), x_dim=0), "w")
    with pytest.raises(WaferError, match="RMSNorm weight"):
        ops.rms_norm(mesh, x=xd, weight=wd, ledger=Ledger(), eps=1e-5)


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
    mask = ops.score_mask(sd, query_dim=0, key_dim=1, sliding_window=window)
    out = ops.softmax(mesh, scores=sd, ledger=Ledger(), mask=mask, scale=0.25)
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
    mask = ops.causal_mask(
        query_positions=torch.tensor(7),
        key_positions=ops.tile_positions(sd, 1, key_pos),
        sliding_window=6,
    )
    out = ops.softmax(mesh, scores=sd, ledger=Ledger(), axis=Axis.Y, mask=mask)
    keep = (key_pos >= 0) & (key_pos <= 7) & (7 - key_pos < 6)
    want = torch.softmax(scores.masked_fill(~keep, -math.inf), dim=-1)
    _close(mesh.gather(out), want, 1e-6)


def test_segmented_softmax_normalises_each_group_of_columns_on_its_own():
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(3, 10, generator=gen)
    mesh = _mesh(2, 5)  # tiles of 2 keys; kv-groups of 2 and 3 columns: keys 0-3 and 4-9
    sd = mesh.scatter(scores, Layout((3, 10), x_dim=1), "scores")
    ledger = Ledger()
    out = ops.softmax(mesh, scores=sd, ledger=ledger, group_sizes=(2, 3))
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
    out = ops.softmax(mesh, scores=sd, ledger=Ledger(), mask=mask)
    assert torch.equal(mesh.gather(out), torch.zeros(3, 4))


def test_softmax_is_in_place_and_padding_gets_zero_probability():
    mesh = _mesh(1, 3)
    sd = mesh.scatter(torch.randn(2, 7), Layout((2, 7), x_dim=1), "scores")
    live = dict(mesh.sram.live)
    out = ops.softmax(mesh, scores=sd, ledger=Ledger())
    assert mesh.sram.live == live and out.sram_key == sd.sram_key
    assert torch.equal(out.data[0, 2, :, 1:], torch.zeros(2, 2))  # 7 over 3: 2 padded slots


def test_masks_reject_a_non_positive_window():
    with pytest.raises(WaferError, match="sliding_window"):
        ops.causal_mask(
            query_positions=torch.tensor(1), key_positions=torch.tensor(0), sliding_window=0
        )


# ---- RoPE ---------------------------------------------------------------------------------------
def _llama3_rotary(head_dim: int) -> LlamaRotaryEmbedding:
    config = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("num_tiles", [1, 2, 3, 4, 8])
def test_rope_on_permuted_tiles_matches_transformers_rotate_half(num_tiles):
    head_dim, heads, tokens = 16, 3, 5
    gen = torch.Generator().manual_seed(num_tiles)
    q = torch.randn(tokens, heads, head_dim, generator=gen)
    positions = torch.tensor([0, 1, 7, 40, 200])
    rotary = _llama3_rotary(head_dim)
    cos_hf, sin_hf = rotary(q, positions[None])
    want, _ = apply_rotary_pos_emb(q.transpose(0, 1)[None], q.transpose(0, 1)[None], cos_hf, sin_hf)
    want = want[0].transpose(0, 1)  # [T, H, hd]

    perm = ops.rope_pair_permutation(head_dim, num_tiles)
    width = len(perm)
    mesh = _mesh(2, num_tiles)
    qd = mesh.scatter(
        ops.permute_padded(q, perm, dim=2), Layout((tokens, heads, width), y_dim=0, x_dim=2), "q"
    )
    cos, sin = ops.rope_cos_sin(
        positions, rotary.inv_freq, num_tiles=num_tiles, attention_scaling=1.0
    )
    table = Layout((tokens, width), y_dim=0, x_dim=1)
    cd, sd = mesh.scatter(cos, table, "cos"), mesh.scatter(sin, table, "sin")
    got = mesh.gather(ops.rope(mesh, x=qd, cos=cd, sin=sd, ledger=Ledger()))
    real = perm >= 0
    unpermuted = torch.empty_like(q)
    unpermuted[..., perm[real]] = got[..., real]
    _close(unpermuted, want, 1e-6)
    assert not got[..., ~real].any()


@settings(max_examples=30, deadline=None)
@given(half=st.integers(1, 40), num_tiles=st.integers(1, 12))
def test_rope_pair_permutation_keeps_every_pair_in_one_tile(half, num_tiles):
    head_dim = 2 * half
    perm = ops.rope_pair_permutation(head_dim, num_tiles)
    tile = ops.rope_tile_size(head_dim, num_tiles)
    assert len(perm) == num_tiles * tile
    assert sorted(perm[perm >= 0].tolist()) == list(range(head_dim))
    tiles = perm.reshape(num_tiles, 2, tile // 2)
    first, second = tiles[:, 0], tiles[:, 1]
    assert torch.equal(second[first >= 0], first[first >= 0] + half)
    assert torch.equal(first < 0, second < 0)
    if half % num_tiles == 0:
        assert (perm >= 0).all()  # a true permutation


def test_the_permutation_leaves_q_dot_k_unchanged():
    q, k = torch.randn(4, 24), torch.randn(4, 24)
    perm = ops.rope_pair_permutation(24, 5)
    dots = (ops.permute_padded(q, perm, dim=1) * ops.permute_padded(k, perm, dim=1)).sum(-1)
    _close(dots, (q * k).sum(-1), 1e-6)


def test_rope_rejects_tables_that_do_not_match_the_slices():
    mesh = _mesh(1, 2)
    qd = mesh.scatter(torch.randn(2, 8), Layout((2, 8), x_dim=1), "q")
    cd = mesh.scatter(torch.randn(2, 6), Layout((2, 6), x_dim=1), "cos")
    with pytest.raises(WaferError, match="RoPE table"):
        ops.rope(mesh, x=qd, cos=cd, sin=cd, ledger=Ledger())
    with pytest.raises(WaferError, match="even head_dim"):
        ops.rope_pair_permutation(7, 2)


# ---- SiLU-gated product and residual add ---------------------------------------------------------
def test_silu_gated_product_and_residual_add_match_torch_and_keep_padding_zero():
    gen = torch.Generator().manual_seed(6)
    gate, up, res = (torch.randn(2, 11, generator=gen) for _ in range(3))
    mesh = _mesh(3, 4)
    layout = Layout((2, 11), x_dim=1)
    g, u, r = (mesh.scatter(t, layout, n) for t, n in ((gate, "g"), (up, "u"), (res, "r")))
    ledger = Ledger()
    h = ops.silu_mul(mesh, gate=g, up=u, ledger=ledger)
    _close(mesh.gather(h), torch.nn.functional.silu(gate) * up, 1e-6)
    out = ops.add(mesh, x=r, y=h, ledger=ledger)
    _close(mesh.gather(out), res + torch.nn.functional.silu(gate) * up, 1e-6)
    assert not out.data[:, 3, :, 2:].any()  # 11 over 4 columns: tiles of 3, one padded slot
    assert [rec.op for rec in ledger.records] == ["silu_mul", "add"]


def test_elementwise_ops_reject_different_layouts():
    mesh = _mesh(2, 2)
    a = mesh.scatter(torch.randn(4), Layout((4,), x_dim=0), "a")
    b = mesh.scatter(torch.randn(4), Layout((4,), y_dim=0), "b")
    with pytest.raises(WaferError, match="must match"):
        ops.add(mesh, x=a, y=b, ledger=Ledger())


# ---- embedding -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("table_layout", "tokens_axis", "out_layout"),
    [
        (Layout((19, 10), x_dim=0, y_dim=1), None, Layout((5, 10), y_dim=1)),  # decode E_y L^x
        (Layout((19, 10), y_dim=0, x_dim=1), Axis.Y, Layout((5, 10), y_dim=0, x_dim=1)),  # L_y E_x
        (Layout((19, 10), y_dim=0, x_dim=1), None, Layout((5, 10), x_dim=1)),
        (Layout((19, 10), x_dim=0, y_dim=1), Axis.X, Layout((5, 10), x_dim=0, y_dim=1)),
    ],
)
def test_embedding_lookup_matches_indexing_the_table(table_layout, tokens_axis, out_layout):
    table = torch.randn(19, 10)
    ids = torch.tensor([18, 0, 7, 7, 3])
    mesh = _mesh(3, 4)
    td = mesh.scatter(table, table_layout, "table")
    out = ops.embed(mesh, ids=ids, table=td, ledger=Ledger(), tokens_axis=tokens_axis)
    assert out.layout == out_layout
    assert torch.equal(mesh.gather(out), table[ids])


def test_embedding_cost_does_not_depend_on_the_ids_and_estimate_mode_agrees():
    ledgers = []
    for mode, ids in (
        (Mode.FUNCTIONAL, [0, 1]),
        (Mode.FUNCTIONAL, [18, 9]),
        (Mode.ESTIMATE, [0, 0]),
    ):
        mesh = _mesh(3, 4, mode=mode)
        td = mesh.scatter(torch.randn(19, 10), Layout((19, 10), x_dim=0, y_dim=1), "table")
        ledger = Ledger()
        ops.embed(mesh, ids=torch.tensor(ids), table=td, ledger=ledger)
        ledgers.append(ledger.expanded())
    assert ledgers[0] == ledgers[1] == ledgers[2]
    bcast = [r for r in ledgers[0] if r.op.endswith("bcast")][0]
    assert bcast.critical_hops == 3  # from the end of a 4-core row


def test_embedding_rejects_ids_outside_the_vocabulary():
    mesh = _mesh(2, 2)
    td = mesh.scatter(torch.randn(6, 4), Layout((6, 4), x_dim=0, y_dim=1), "table")
    with pytest.raises(WaferError, match="token ids"):
        ops.embed(mesh, ids=torch.tensor([6]), table=td, ledger=Ledger())


# ---- argmax --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_argmax_breaks_ties_to_the_lowest_index_across_cores(axis):
    logits = -torch.rand(4, 17) - 1.0  # all negative: a zero in the padding would win if unmasked
    logits[0, [3, 12]] = 5.0  # tie in different tiles (tiles of 4)
    logits[1, [13, 14]] = 2.0  # tie inside one tile
    logits[2, 16] = -0.5  # the last real entry, next to the padding
    mesh = _mesh(5, 5)
    ld = mesh.scatter(logits, Layout((4, 17), **{f"{axis.value}_dim": 1}), "logits")
    ids = ops.argmax(mesh, logits=ld, ledger=Ledger())
    assert ids.layout == Layout((4,))
    assert torch.equal(mesh.gather(ids), torch.argmax(logits, dim=-1))
    assert mesh.gather(ids).tolist()[:3] == [3, 13, 16]


def test_argmax_keeps_a_token_split_and_charges_two_allreduces():
    logits = torch.randn(6, 9)
    mesh = _mesh(3, 2)
    ld = mesh.scatter(logits, Layout((6, 9), y_dim=0, x_dim=1), "logits")
    ledger = Ledger()
    ids = ops.argmax(mesh, logits=ld, ledger=ledger)
    assert ids.layout == Layout((6,), y_dim=0)
    assert torch.equal(mesh.gather(ids), logits.argmax(-1))
    reduces = [r for r in ledger.records if r.op.endswith(".reduce")]
    assert [r.op.split(".")[1] for r in reduces] == ["allreduce_max", "allreduce_index"]


# ---- both modes ----------------------------------------------------------------------------------
def _decode_ops(mode: Mode) -> tuple[list, int, int]:
    """A decode-shaped chain of every op on one mesh; returns (ledger, routes, peak SRAM)."""
    mesh = _mesh(4, 6, mode=mode)
    ledger = Ledger()
    table = mesh.scatter(torch.randn(50, 20), Layout((50, 20), x_dim=0, y_dim=1), "table")
    x = ops.embed(mesh, ids=torch.tensor([4]), table=table, ledger=ledger)
    w = mesh.scatter(torch.randn(20), Layout((20,), y_dim=0), "w")
    h = ops.rms_norm(mesh, x=x, weight=w, ledger=ledger, eps=1e-5)
    x = ops.add(mesh, x=x, y=h, ledger=ledger)
    perm = ops.rope_pair_permutation(8, 6)
    q = mesh.scatter(torch.randn(1, 2, len(perm)), Layout((1, 2, len(perm)), x_dim=2), "q")
    cos, sin = ops.rope_cos_sin(torch.tensor([3]), torch.rand(4), num_tiles=6)
    table_layout = Layout((1, len(perm)), x_dim=1)
    cd, sd = mesh.scatter(cos, table_layout, "cos"), mesh.scatter(sin, table_layout, "sin")
    ops.rope(mesh, x=q, cos=cd, sin=sd, ledger=ledger)
    scores = mesh.scatter(torch.randn(2, 9), Layout((2, 9), y_dim=1), "scores")
    mask = ops.causal_mask(
        query_positions=torch.tensor(5).to(mesh.torch_device),
        key_positions=ops.tile_positions(scores, 1),
    )
    ops.softmax(mesh, scores=scores, ledger=ledger, mask=mask, scale=0.3)
    g = mesh.scatter(torch.randn(1, 30), Layout((1, 30), x_dim=1), "g")
    u = mesh.scatter(torch.randn(1, 30), Layout((1, 30), x_dim=1), "u")
    ops.silu_mul(mesh, gate=g, up=u, ledger=ledger)
    logits = mesh.scatter(torch.randn(1, 50), Layout((1, 50), x_dim=1), "logits")
    ops.argmax(mesh, logits=logits, ledger=ledger)
    return ledger.expanded(), mesh.routes.routes_per_core, mesh.sram.peak_bytes


def test_estimate_and_functional_ledgers_are_identical_for_every_op():
    functional, estimate = _decode_ops(Mode.FUNCTIONAL), _decode_ops(Mode.ESTIMATE)
    assert functional == estimate
    assert len(functional[0]) > 20 and functional[1] == 20
