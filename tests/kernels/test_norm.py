"""RMSNorm on the mesh against transformers' LlamaRMSNorm, with padding and bad input."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from waferllm.device import tiny
from waferllm.errors import WaferError
from waferllm.kernels.norm import rms_norm
from waferllm.mesh import Layout, Ledger, Mesh, ReduceAlgorithm


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
    out = rms_norm(mesh, x=xd, weight=wd, ledger=Ledger(), eps=1e-5)
    assert out.layout == x_layout
    _close(mesh.gather(out), _hf_rms_norm(x, w, 1e-5))


def test_rms_norm_ignores_garbage_in_padding_and_divides_by_the_true_size():
    x, w = torch.randn(2, 10), torch.randn(10)
    mesh = _mesh(4, 1)  # 10 over 4 rows: tiles of 3, two padded slots on the last row
    xd = mesh.scatter(x, Layout((2, 10), y_dim=1), "x")
    xd.data[3, :, :, 1:] = 100.0
    wd = mesh.scatter(w, Layout((10,), y_dim=0), "w")
    out = rms_norm(mesh, x=xd, weight=wd, ledger=Ledger(), eps=1e-6)
    _close(mesh.gather(out), _hf_rms_norm(x, w, 1e-6))


def test_rms_norm_allreduces_one_scalar_per_token():
    mesh = _mesh(8, 2)
    xd = mesh.scatter(torch.randn(3, 64), Layout((3, 64), y_dim=1), "x")
    wd = mesh.scatter(torch.randn(64), Layout((64,), y_dim=0), "w")
    ledger = Ledger()
    rms_norm(mesh, x=xd, weight=wd, ledger=ledger, eps=1e-5, algorithm=ReduceAlgorithm.PIPELINE)
    comm = [r for r in ledger.records if "allreduce" in r.op]
    # pipeline to the middle core (4) of 8: 4 hops and 3 stages, then a 4-hop broadcast
    assert [(r.critical_hops, r.critical_stages) for r in comm] == [(4, 3), (4, 0)]
    assert comm[0].bytes_injected == 7 * 3 * mesh.device.storage_bytes * 2  # 7 senders, 2 lines


def test_rms_norm_rejects_a_weight_split_differently_from_the_hidden_dim():
    mesh = _mesh(2, 2)
    xd = mesh.scatter(torch.randn(4), Layout((4,), y_dim=0), "x")
    wd = mesh.scatter(torch.randn(4), Layout((4,), x_dim=0), "w")
    with pytest.raises(WaferError, match="RMSNorm weight"):
        rms_norm(mesh, x=xd, weight=wd, ledger=Ledger(), eps=1e-5)
