"""RoPE on the mesh in `HeadLayout`'s slot order against transformers' rotate_half."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.kernels.heads import gather_rows, head_layout
from waferllm.kernels.rope import rope
from waferllm.mesh import Layout, Ledger, Mesh


def _mesh(rows: int, cols: int, **kw) -> Mesh:
    return Mesh(tiny(), rows, cols, **kw)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale


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


def _tables(mesh: Mesh, heads, inv_freq: torch.Tensor, positions: torch.Tensor):
    """cos/sin [T, C*H] in the heads' slot order (as the model builds them), split along X."""
    pairs = torch.as_tensor(heads.rope_pairs().reshape(-1))
    angle = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[pairs][None, :]
    layout = Layout(tuple(angle.shape), y_dim=0, x_dim=1)
    return mesh.scatter(angle.cos(), layout, "cos"), mesh.scatter(angle.sin(), layout, "sin")


@pytest.mark.parametrize("num_cols", [1, 2, 3, 4, 8])
def test_rope_in_the_head_layout_slot_order_matches_transformers_rotate_half(num_cols):
    head_dim, n_rep, tokens = 16, 3, 5
    gen = torch.Generator().manual_seed(num_cols)
    q = torch.randn(tokens, n_rep, head_dim, generator=gen)  # one kv head's query heads
    positions = torch.tensor([0, 1, 7, 40, 200])
    rotary = _llama3_rotary(head_dim)
    cos_hf, sin_hf = rotary(q, positions[None])
    want, _ = apply_rotary_pos_emb(q.transpose(0, 1)[None], q.transpose(0, 1)[None], cos_hf, sin_hf)
    want = want[0].transpose(0, 1).reshape(tokens, -1)  # [T, n*hd]

    heads = head_layout(1, n_rep, head_dim, num_cols)
    index = heads.q_index()  # (C*G*n*H,), G = 1
    h = heads.head_slots
    slots = gather_rows(q.reshape(tokens, -1).T, index).T  # [T, C*n*H]
    by_head = slots.reshape(tokens, num_cols, n_rep, h).transpose(1, 2)  # [T, n, C*H]
    mesh = _mesh(2, num_cols)
    layout = Layout((tokens, n_rep, num_cols * h), y_dim=0, x_dim=2)
    qd = mesh.scatter(by_head.reshape(tokens, n_rep, -1), layout, "q")
    cd, sd = _tables(mesh, heads, rotary.inv_freq, positions)
    got = mesh.gather(rope(mesh, x=qd, cos=cd, sin=sd, ledger=Ledger()))
    got = got.reshape(tokens, n_rep, num_cols, h).transpose(1, 2).reshape(tokens, -1)
    real = index >= 0
    unpermuted = torch.empty_like(want)
    unpermuted[:, index[real]] = got[:, real]
    _close(unpermuted, want, 1e-6)
    assert not got[:, ~real].any()


def test_the_head_layout_permutation_leaves_q_dot_k_unchanged():
    q, k = torch.randn(24, 4), torch.randn(24, 4)
    index = head_layout(1, 1, 24, 5).kv_index()
    dots = (gather_rows(q, index) * gather_rows(k, index)).sum(0)
    _close(dots, (q * k).sum(0), 1e-6)


def test_rope_rejects_tables_that_do_not_match_the_slices():
    mesh = _mesh(1, 2)
    qd = mesh.scatter(torch.randn(2, 8), Layout((2, 8), x_dim=1), "q")
    cd = mesh.scatter(torch.randn(2, 6), Layout((2, 6), x_dim=1), "cos")
    with pytest.raises(WaferError, match="RoPE table"):
        rope(mesh, x=qd, cos=cd, sin=cd, ledger=Ledger())
    qd = mesh.scatter(torch.randn(2, 6), Layout((2, 6), x_dim=1), "q")
    with pytest.raises(WaferError, match="even slice"):
        rope(mesh, x=qd, cos=cd, sin=cd, ledger=Ledger())


ROPES = [  # (tokens, kv heads per core, query heads per kv head or None, slots, prefill)
    (13, 2, 3, 4, True),
    (13, 2, None, 4, True),
    (2, 2, 3, 4, False),
    (3, 1, None, 6, False),
]


@pytest.mark.parametrize("grid", [(4, 4), (3, 2), (1, 4), (4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_in_estimate_mode_charges_and_gives_what_its_walk_does(grid, dtype):
    """The estimate's RoPE without the rotation's meta ops: the same records, SRAM, routes
    and output tensor (shape, dtype, layout) as the walk on meta tiles."""
    from helpers.closed_forms import assert_same_runs

    from waferllm.mesh import Mode

    compared = 0
    for tokens, kv, n_rep, slots, prefill in ROPES:
        cols = grid[1]
        x_shape = (tokens, cols * kv, *((n_rep,) if n_rep else ()), slots)
        t_shape = (tokens, cols * slots)
        dims = dict(y_dim=0, x_dim=1) if prefill else dict(x_dim=1)
        runs = []
        for walk in (True, False):
            mesh = _mesh(*grid, mode=Mode.ESTIMATE)
            x = mesh.scatter(torch.empty(x_shape, device="meta"), Layout(x_shape, **dims), "x")
            x = x.replace(x.data.to(dtype))  # tiles in this dtype (scatter gives float32)
            tables = [
                mesh.scatter(torch.empty(t_shape, device="meta"), Layout(t_shape, **dims), name)
                for name in ("cos", "sin")
            ]
            ledger = Ledger()
            out = rope(mesh, x=x, cos=tables[0], sin=tables[1], ledger=ledger, walk=walk)
            runs.append((ledger, mesh, out))
        compared += assert_same_runs(runs)
    assert compared == len(ROPES)
