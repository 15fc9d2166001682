"""Kernels on tiles held once per line (stride-0 views, `mesh.replicas`) give bitwise the
numbers they give on one materialised copy per core."""

from __future__ import annotations

import torch

from waferllm.device import tiny
from waferllm.kernels.elementwise import add, argmax, silu_mul
from waferllm.kernels.norm import rms_norm
from waferllm.kernels.rope import rope
from waferllm.mesh import Layout, Ledger, Mesh
from waferllm.mesh.replicas import held_once

GEN = torch.Generator().manual_seed(7)


def _pair(mesh: Mesh, layout: Layout, name: str):
    """The same logical tensor twice: held once along the replicated axis, and materialised."""
    host = torch.randn(layout.shape, generator=GEN)
    held = mesh.scatter(host, layout, name)
    dense = mesh.register(held.data.contiguous(), layout, f"{name}.dense")
    return held, dense


def test_rms_norm_add_and_silu_on_held_tiles_equal_every_copy_bitwise():
    mesh = Mesh(tiny(), 7, 5)
    x, x_dense = _pair(mesh, Layout((2, 19), y_dim=1), "x")  # replicated along X
    w, w_dense = _pair(mesh, Layout((19,), y_dim=0), "w")
    out = rms_norm(mesh, x=x, weight=w, ledger=Ledger(), eps=1e-6)
    want = rms_norm(mesh, x=x_dense, weight=w_dense, ledger=Ledger(), eps=1e-6)
    # (its allreduced sums differ in the last bits between columns: computed on every copy)
    assert torch.equal(out.data, want.data)
    total = add(mesh, x=x, y=out, ledger=Ledger())
    assert torch.equal(total.data, x_dense.data + want.data)
    g, g_dense = _pair(mesh, Layout((2, 23), x_dim=1), "g")  # replicated along Y
    u, u_dense = _pair(mesh, Layout((2, 23), x_dim=1), "u")
    act = silu_mul(mesh, gate=g, up=u, ledger=Ledger())
    want = silu_mul(mesh, gate=g_dense, up=u_dense, ledger=Ledger())
    assert torch.equal(act.data, want.data)


def test_rope_and_argmax_on_held_tiles_equal_every_copy_bitwise():
    mesh = Mesh(tiny(), 6, 4)
    q, q_dense = _pair(mesh, Layout((3, 4 * 8), x_dim=1), "q")
    cos, cos_dense = _pair(mesh, Layout((3, 4 * 8), x_dim=1), "cos")
    sin, sin_dense = _pair(mesh, Layout((3, 4 * 8), x_dim=1), "sin")
    out = rope(mesh, x=q, cos=cos, sin=sin, ledger=Ledger())
    want = rope(mesh, x=q_dense, cos=cos_dense, sin=sin_dense, ledger=Ledger())
    assert held_once(out.data, 0) and torch.equal(out.data, want.data)
    logits, dense = _pair(mesh, Layout((3, 4 * 9 - 2), x_dim=1), "logits")
    ids = argmax(mesh, logits=logits, ledger=Ledger())
    want = argmax(mesh, logits=dense, ledger=Ledger())
    assert torch.equal(ids.data, want.data)
    assert mesh.gather(ids).tolist() == mesh.gather(logits).argmax(-1).tolist()
