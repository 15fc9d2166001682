"""Replicated tiles held once: results bitwise those of computing every copy, held as stride-0
views; reductions across the compacted axis are never compacted."""

from __future__ import annotations

import torch

from waferllm.device import tiny
from waferllm.mesh import Axis, Layout, Ledger, Mesh, ReduceAlgorithm, allreduce, broadcast
from waferllm.mesh.replicas import held_once, on_replicas
from waferllm.mesh.tensor import split_host


def _row_replicated(rows: int, cols: int, *tile: int) -> torch.Tensor:
    """(rows, cols, *tile) holding one tile per column (a stride-0 view along the rows)."""
    return torch.randn(1, cols, *tile).expand(rows, cols, *tile)


def test_on_replicas_computes_once_per_line_and_equals_every_copy_bitwise():
    x, y = _row_replicated(5, 3, 2, 7), _row_replicated(5, 3, 1, 7)
    calls: list[tuple[int, ...]] = []

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(a.shape))
        return a * b + a

    out = on_replicas(fn, x, y)
    assert calls == [(1, 3, 2, 7)]  # one row's worth of work
    assert held_once(out, 0) and out.shape == (5, 3, 2, 7)
    assert torch.equal(out, x.contiguous() * y.contiguous() + x.contiguous())


def test_a_tensor_split_on_both_axes_is_computed_on_every_core():
    x, y = torch.randn(4, 3, 5), _row_replicated(4, 3, 5)
    out = on_replicas(torch.add, x, y)
    assert out.is_contiguous() and torch.equal(out, x + y)


def test_the_axis_a_body_reduces_over_is_never_compacted():
    x = torch.randn(1, 1, 3).expand(4, 6, 3)  # held once on both axes
    out = on_replicas(lambda t: t.sum(dim=0, keepdim=True), x, across=0)
    assert out.shape == (1, 6, 3) and torch.equal(out, x.contiguous().sum(dim=0, keepdim=True))


def test_an_input_reaching_into_the_mesh_dims_from_a_lower_rank_computes_every_copy():
    x, odd = _row_replicated(4, 3, 5), torch.randn(3, 5)  # broadcasts over (cols, tile)
    out = on_replicas(torch.add, x, odd)
    assert torch.equal(out, x + odd)


def test_allreduce_and_broadcast_results_are_held_once_along_their_axis():
    mesh = Mesh(tiny(), 4, 5)
    data = torch.randn(4, 5, 3)
    for algorithm in ReduceAlgorithm:
        out = allreduce(mesh, data, axis=Axis.Y, ledger=Ledger(), op="a", algorithm=algorithm)
        assert held_once(out, 0) and torch.allclose(out, data.sum(0, keepdim=True).expand_as(out))
    out = broadcast(mesh, data, axis=Axis.X, root=2, ledger=Ledger(), op="b")
    assert held_once(out, 1) and torch.equal(out, data[:, 2:3].expand_as(data))


def test_a_host_tensor_scattered_replicated_holds_one_copy_per_line():
    host = torch.randn(6, 8)
    data = split_host(host, Layout((6, 8), x_dim=1), 3, 4)
    assert held_once(data, 0) and not held_once(data, 1)
    assert torch.equal(data[2], host.reshape(6, 4, 2).permute(1, 0, 2))
