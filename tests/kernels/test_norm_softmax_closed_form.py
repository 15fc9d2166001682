"""RMSNorm and softmax in estimate mode from the tile shapes alone charge what their walks on
meta tensors charge: every record, the SRAM, the routes, and the same output tensor shape."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.closed_forms import assert_same_runs

from waferllm.device import tiny
from waferllm.kernels.norm import rms_norm
from waferllm.kernels.softmax import softmax
from waferllm.mesh import Layout, Ledger, Mesh, Mode
from waferllm.mesh.comm import ReduceAlgorithm
from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import shape_only

DEVICE = dataclasses.replace(tiny(), step_overhead_cycles=5.0)
GRIDS = [(4, 4), (3, 5), (1, 4), (4, 1), (6, 2)]


def _tensor(mesh: Mesh, shape, layout: Layout, name: str, dtype=torch.float32):
    return mesh.scatter(torch.empty(shape, dtype=dtype, device="meta"), layout, name)


NORMS = [  # (x shape, x layout kwargs, weight layout kwargs, algorithm)
    ((13, 10), dict(y_dim=0, x_dim=1), dict(x_dim=0), ReduceAlgorithm.PIPELINE),  # prefill
    ((3, 10), dict(x_dim=1), dict(x_dim=0), ReduceAlgorithm.KTREE),  # tokens replicated
    ((2, 11), dict(y_dim=1), dict(y_dim=0), ReduceAlgorithm.KTREE),  # decode: D along Y
    ((2, 5, 12), dict(y_dim=1, x_dim=2), dict(x_dim=0), ReduceAlgorithm.KTREE),  # batched
    ((7, 9), dict(y_dim=0), dict(), ReduceAlgorithm.KTREE),  # D local
]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rms_norm_in_closed_form_charges_what_the_walk_charges(grid, dtype):
    compared = 0
    for shape, x_dims, w_dims, algorithm in NORMS:
        runs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, *grid, mode=Mode.ESTIMATE)
            x = _tensor(mesh, shape, Layout(shape, **x_dims), "x", dtype)
            w = _tensor(mesh, (shape[-1],), Layout((shape[-1],), **w_dims), "w", dtype)
            ledger = Ledger()
            out = rms_norm(
                mesh, x=x, weight=w, ledger=ledger, eps=1e-5, algorithm=algorithm, walk=walk
            )
            runs.append((ledger, mesh, out))
        compared += assert_same_runs(runs)
    assert compared >= 3 * len(NORMS)


SOFTMAXES = [  # (scores shape, layout kwargs, dim, axis, mask, scale, groups, rows per core)
    ((13, 10), dict(y_dim=0, x_dim=1), -1, None, False, None, None, None),
    ((13, 10), dict(y_dim=0, x_dim=1), -1, None, True, 0.5, None, 3),
    ((2, 3, 9, 7), dict(y_dim=2, x_dim=0), 3, Axis.X, True, 0.25, "groups", None),
    ((5, 7), dict(x_dim=0), 1, None, False, 2.0, None, None),  # a local softmax
    ((4, 2, 9), dict(y_dim=2), 2, None, True, None, None, 1),  # along Y
]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("algorithm", [ReduceAlgorithm.KTREE, ReduceAlgorithm.PIPELINE])
def test_softmax_in_closed_form_charges_what_the_walk_charges(grid, algorithm):
    compared = 0
    for shape, dims, dim, axis, masked, scale, groups, per_core in SOFTMAXES:
        runs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, *grid, mode=Mode.ESTIMATE)
            scores = _tensor(mesh, shape, Layout(shape, **dims), "scores")
            mask = torch.empty(scores.data.shape, dtype=torch.bool, device="meta")
            sizes = None
            if groups and grid[1] > 1:
                sizes = (grid[1] // 2, grid[1] - grid[1] // 2)
            ledger = Ledger()
            out = softmax(
                mesh,
                scores=scores,
                ledger=ledger,
                dim=dim,
                axis=axis,
                mask=mask if masked else None,
                scale=scale,
                group_sizes=sizes,
                algorithm=algorithm,
                rows_per_core=per_core,
                walk=walk,
            )
            runs.append((ledger, mesh, out))
        compared += assert_same_runs(runs)
    assert compared >= 4 * len(SOFTMAXES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rms_norm_in_closed_form_under_the_shape_only_mode_gives_the_walks_output(dtype):
    """Inside `shape_only` (as the estimate layer runs), the closed form's output, made past
    the mode (`meta.meta_empty`), has the walk's shape, dtype and strides."""
    for shape, x_dims, w_dims, algorithm in NORMS:
        outs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, 3, 5, mode=Mode.ESTIMATE, compute_dtype=dtype)
            x = _tensor(mesh, shape, Layout(shape, **x_dims), "x", dtype)
            w = _tensor(mesh, (shape[-1],), Layout((shape[-1],), **w_dims), "w", dtype)
            with shape_only():
                out = rms_norm(
                    mesh, x=x, weight=w, ledger=Ledger(), eps=1e-5, algorithm=algorithm, walk=walk
                )
            outs.append((tuple(out.data.shape), out.data.dtype, out.data.stride()))
        assert outs[0] == outs[1]
        assert outs[0][1] == dtype
