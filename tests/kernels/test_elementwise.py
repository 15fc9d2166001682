"""SiLU-gated product, residual add, embedding and argmax on the mesh; every vector op's
estimate and functional ledgers agree."""

from __future__ import annotations

import pytest
import torch

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.kernels.elementwise import add, argmax, embed, meta_pointwise, silu_mul
from waferllm.kernels.heads import head_layout
from waferllm.kernels.norm import rms_norm
from waferllm.kernels.rope import rope
from waferllm.kernels.softmax import causal_mask, softmax
from waferllm.kernels.vector import tile_positions
from waferllm.mesh import Axis, Layout, Ledger, Mesh, Mode


def _mesh(rows: int, cols: int, **kw) -> Mesh:
    return Mesh(tiny(), rows, cols, **kw)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale


# ---- SiLU-gated product and residual add ---------------------------------------------------------
def test_silu_gated_product_and_residual_add_match_torch_and_keep_padding_zero():
    gen = torch.Generator().manual_seed(6)
    gate, up, res = (torch.randn(2, 11, generator=gen) for _ in range(3))
    mesh = _mesh(3, 4)
    layout = Layout((2, 11), x_dim=1)
    g, u, r = (mesh.scatter(t, layout, n) for t, n in ((gate, "g"), (up, "u"), (res, "r")))
    ledger = Ledger()
    h = silu_mul(mesh, gate=g, up=u, ledger=ledger)
    _close(mesh.gather(h), torch.nn.functional.silu(gate) * up, 1e-6)
    out = add(mesh, x=r, y=h, ledger=ledger)
    _close(mesh.gather(out), res + torch.nn.functional.silu(gate) * up, 1e-6)
    assert not out.data[:, 3, :, 2:].any()  # 11 over 4 columns: tiles of 3, one padded slot
    assert [rec.op for rec in ledger.records] == ["silu_mul", "add"]


def test_elementwise_ops_reject_different_layouts():
    mesh = _mesh(2, 2)
    a = mesh.scatter(torch.randn(4), Layout((4,), x_dim=0), "a")
    b = mesh.scatter(torch.randn(4), Layout((4,), y_dim=0), "b")
    with pytest.raises(WaferError, match="must match"):
        add(mesh, x=a, y=b, ledger=Ledger())


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
    out = embed(mesh, ids=ids, table=td, ledger=Ledger(), tokens_axis=tokens_axis)
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
        embed(mesh, ids=torch.tensor(ids), table=td, ledger=ledger)
        ledgers.append(ledger.expanded())
    assert ledgers[0] == ledgers[1] == ledgers[2]
    bcast = [r for r in ledgers[0] if r.op.endswith("bcast")][0]
    assert bcast.critical_hops == 3  # from the end of a 4-core row


def test_embedding_rejects_ids_outside_the_vocabulary():
    mesh = _mesh(2, 2)
    td = mesh.scatter(torch.randn(6, 4), Layout((6, 4), x_dim=0, y_dim=1), "table")
    with pytest.raises(WaferError, match="token ids"):
        embed(mesh, ids=torch.tensor([6]), table=td, ledger=Ledger())


# ---- argmax --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_argmax_breaks_ties_to_the_lowest_index_across_cores(axis):
    logits = -torch.rand(4, 17) - 1.0  # all negative: a zero in the padding would win if unmasked
    logits[0, [3, 12]] = 5.0  # tie in different tiles (tiles of 4)
    logits[1, [13, 14]] = 2.0  # tie inside one tile
    logits[2, 16] = -0.5  # the last real entry, next to the padding
    mesh = _mesh(5, 5)
    ld = mesh.scatter(logits, Layout((4, 17), **{f"{axis.value}_dim": 1}), "logits")
    ids = argmax(mesh, logits=ld, ledger=Ledger())
    assert ids.layout == Layout((4,))
    assert torch.equal(mesh.gather(ids), torch.argmax(logits, dim=-1))
    assert mesh.gather(ids).tolist()[:3] == [3, 13, 16]


def test_argmax_keeps_a_token_split_and_charges_two_allreduces():
    logits = torch.randn(6, 9)
    mesh = _mesh(3, 2)
    ld = mesh.scatter(logits, Layout((6, 9), y_dim=0, x_dim=1), "logits")
    ledger = Ledger()
    ids = argmax(mesh, logits=ld, ledger=ledger)
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
    x = embed(mesh, ids=torch.tensor([4]), table=table, ledger=ledger)
    w = mesh.scatter(torch.randn(20), Layout((20,), y_dim=0), "w")
    h = rms_norm(mesh, x=x, weight=w, ledger=ledger, eps=1e-5)
    x = add(mesh, x=x, y=h, ledger=ledger)
    width = 6 * head_layout(1, 2, 8, 6).head_slots
    q = mesh.scatter(torch.randn(1, 2, width), Layout((1, 2, width), x_dim=2), "q")
    table_layout = Layout((1, width), x_dim=1)
    cos, sin = torch.rand(1, width), torch.rand(1, width)
    cd, sd = mesh.scatter(cos, table_layout, "cos"), mesh.scatter(sin, table_layout, "sin")
    rope(mesh, x=q, cos=cd, sin=sd, ledger=ledger)
    scores = mesh.scatter(torch.randn(2, 9), Layout((2, 9), y_dim=1), "scores")
    mask = causal_mask(
        query_positions=torch.tensor(5).to(mesh.torch_device),
        key_positions=tile_positions(scores, 1),
    )
    softmax(mesh, scores=scores, ledger=ledger, mask=mask, scale=0.3)
    g = mesh.scatter(torch.randn(1, 30), Layout((1, 30), x_dim=1), "g")
    u = mesh.scatter(torch.randn(1, 30), Layout((1, 30), x_dim=1), "u")
    silu_mul(mesh, gate=g, up=u, ledger=ledger)
    logits = mesh.scatter(torch.randn(1, 50), Layout((1, 50), x_dim=1), "logits")
    argmax(mesh, logits=logits, ledger=ledger)
    return ledger.expanded(), mesh.routes.routes_per_core, mesh.sram.peak_bytes


def test_estimate_and_functional_ledgers_are_identical_for_every_op():
    functional, estimate = _decode_ops(Mode.FUNCTIONAL), _decode_ops(Mode.ESTIMATE)
    assert functional == estimate
    assert len(functional[0]) > 20 and functional[1] == 20


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((3, 2, 5, 7), (3, 2, 5, 7)),
        ((3, 2, 5, 7), (1, 2, 5, 7)),
        ((1, 1, 4), (3, 2, 4)),
    ],
)
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.float16, torch.float32)])
def test_meta_pointwise_gives_the_ops_meta_output_without_them(a, b, dtypes):
    x = torch.empty(a, dtype=dtypes[0], device="meta")
    y = torch.empty(b, dtype=dtypes[1], device="meta")
    got = meta_pointwise(x, y)
    for want in (torch.add(x, y), torch.nn.functional.silu(x) * y):
        assert got is not None
        assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device)
    assert meta_pointwise(torch.zeros(a), torch.zeros(b)) is None  # real tiles: the op runs
