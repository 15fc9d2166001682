"""The embedding lookup and the on-mesh argmax in estimate mode, charged from the tile shapes
alone, charge what their walks on meta tensors charge: every record, the SRAM, the routes, and
the same output (shape, dtype, layout, name, SRAM buffer); and so do the model's vocabulary
ends (`model.vocab`) on a planned model, tied and untied, float16 and int8 tables."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from helpers.closed_forms import assert_same_runs

from waferllm.device import get_device, tiny
from waferllm.kernels import elementwise
from waferllm.mesh import Layout, Ledger, Mesh, Mode
from waferllm.mesh.comm import ReduceAlgorithm
from waferllm.mesh.geometry import Axis
from waferllm.mesh.storage import StoredDtype
from waferllm.model import vocab
from waferllm.model.config_sources import load_config
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts
from waferllm.model.plan import build_phase, plan_model
from waferllm.model.quant import Storage

DEVICE = dataclasses.replace(tiny(), step_overhead_cycles=5.0)
GRIDS = [(4, 4), (3, 5), (1, 4), (4, 1), (6, 2)]


def _tensor(mesh: Mesh, shape, layout: Layout, name: str, **kwargs):
    return mesh.scatter(torch.empty(shape, device="meta"), layout, name, **kwargs)


EMBEDS = [  # (table [V, D] layout kwargs, tokens split along the vocab axis)
    (dict(y_dim=0, x_dim=1), True),  # prefill: L_y E_x
    (dict(y_dim=0, x_dim=1), False),
    (dict(x_dim=0, y_dim=1), False),  # decode: E_y L^x
    (dict(x_dim=0, y_dim=1), True),
    (dict(y_dim=0), True),  # D replicated
    (dict(x_dim=0), False),
]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("stored", [StoredDtype.FLOAT16, StoredDtype.INT8])
@pytest.mark.parametrize("num_tokens", [1, 3, 13])
def test_embed_in_closed_form_charges_what_the_walk_charges(grid, stored, num_tokens):
    compared = 0
    for dims, split in EMBEDS:
        runs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, *grid, mode=Mode.ESTIMATE)
            table = _tensor(mesh, (37, 10), Layout((37, 10), **dims), "table", stored=stored)
            axis = Axis.Y if dims.get("y_dim") == 0 else Axis.X
            ledger = Ledger()
            out = elementwise.embed(
                mesh,
                ids=torch.empty((num_tokens,), dtype=torch.int64, device="meta"),
                table=table,
                ledger=ledger,
                tokens_axis=axis if split else None,
                walk=walk,
            )
            runs.append((ledger, mesh, out))
        compared += assert_same_runs(runs)
    assert compared > len(EMBEDS)  # the extracts and at least one multicast


ARGMAXES = [  # (logits shape, layout kwargs)
    ((37,), dict(x_dim=0)),  # one token, V along X
    ((3, 37), dict(x_dim=1)),  # decode batch: V along X, tokens replicated
    ((2, 41), dict(y_dim=1)),  # V along Y
    ((13, 37), dict(y_dim=0, x_dim=1)),  # tokens along Y, V along X
    ((5, 37), dict(x_dim=0, y_dim=1)),  # tokens along X, V along Y
    ((4, 9), dict(y_dim=0)),  # V local
]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("algorithm", [ReduceAlgorithm.KTREE, ReduceAlgorithm.PIPELINE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_argmax_in_closed_form_charges_what_the_walk_charges(grid, algorithm, dtype):
    compared = 0
    for shape, dims in ARGMAXES:
        runs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, *grid, mode=Mode.ESTIMATE, compute_dtype=dtype)
            logits = _tensor(mesh, shape, Layout(shape, **dims), "logits")
            ledger = Ledger()
            out = elementwise.argmax(
                mesh, logits=logits, ledger=ledger, algorithm=algorithm, walk=walk
            )
            runs.append((ledger, mesh, out))
        compared += assert_same_runs(runs)
    assert compared >= len(ARGMAXES)


def _walked(monkeypatch) -> None:
    for name in ("embed", "argmax"):
        monkeypatch.setattr(
            elementwise, name, functools.partial(getattr(elementwise, name), walk=True)
        )


def _vocab_ends(phase: Phase, tied: bool, stored: StoredDtype, grid, tokens: int):
    """One phase's embedding, LM head and argmax on a planned LLaMA3-8B-shaped model."""
    config = dataclasses.replace(load_config("llama3-8b"), tie_word_embeddings=tied)
    plan = plan_model(
        config,
        get_device("wse2"),
        prefill_grid=grid,
        decode_grid=grid,
        placement=PlacementMode.PER_LAYER,
        resident=ResidentLayouts.ONE,
        max_context_tokens=None,
        storage=Storage(weights=stored),
    )
    state = build_phase(plan, phase, None, {"mode": Mode.ESTIMATE})
    ledger = Ledger()
    prefill = phase is Phase.PREFILL
    x = vocab.embed(
        state,
        [0] * tokens,
        ledger,
        config=config,
        device=plan.device,
        tokens_axis=Axis.Y if prefill else None,
    )
    if prefill:  # the head reads the last token's hidden state [D_x]
        x = x.mesh.register(
            torch.empty((*x.mesh.shape, x.data.shape[-1]), device="meta"),
            Layout((config.hidden_size,), x_dim=0),
            "last",
        )
    logits = vocab.lm_head(state, x, ledger, config=config, axis=Axis.X if prefill else Axis.Y)
    algorithm = ReduceAlgorithm.RING if prefill else ReduceAlgorithm.KTREE
    ids = vocab.argmax_tokens(logits, ledger, algorithm=algorithm)
    meshes = state.all_meshes
    return ledger, [(m.sram.peak_bytes, m.routes.routes_per_core) for m in meshes], ids


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("stored", [StoredDtype.FLOAT16, StoredDtype.INT8])
@pytest.mark.parametrize(
    "phase, grid, tokens",
    [
        (Phase.PREFILL, (300, 300), 700),
        (Phase.PREFILL, (240, 420), 33),
        (Phase.DECODE, (300, 360), 3),
    ],
)
def test_the_models_vocabulary_ends_charge_what_their_walks_charge(
    monkeypatch, tied, stored, phase, grid, tokens
):
    closed, closed_meshes, closed_ids = _vocab_ends(phase, tied, stored, grid, tokens)
    with monkeypatch.context() as patched:
        _walked(patched)
        walked, walked_meshes, walked_ids = _vocab_ends(phase, tied, stored, grid, tokens)
    assert len(walked.records) >= 5
    assert [repr(r) for r in closed.records] == [repr(r) for r in walked.records]
    assert closed_meshes == walked_meshes
    assert closed_ids == walked_ids


@pytest.mark.parametrize("grid", GRIDS)
def test_argmax_tokens_in_estimate_mode_charges_the_gather_it_skips(grid):
    ledgers = []
    for skip in (False, True):
        mesh = Mesh(DEVICE, *grid, mode=Mode.ESTIMATE)
        logits = _tensor(mesh, (3, 37), Layout((3, 37), x_dim=1), "logits")
        ledger = Ledger()
        if skip:
            tokens = vocab.argmax_tokens(logits, ledger, algorithm=ReduceAlgorithm.KTREE)
            assert tokens == [0, 0, 0]
        else:
            ids = elementwise.argmax(mesh, logits=logits, ledger=ledger)
            assert mesh.gather(ids, ledger=ledger).shape == (3,)
        ledgers.append([repr(r) for r in ledger.records])
    assert ledgers[0] == ledgers[1]
    assert any("gather.argmax.out" in r for r in ledgers[0])
