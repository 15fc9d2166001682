"""Key-streamed prefill attention in estimate mode from its sizes (`attention_stream_cost`)
charges what its walk on meta tensors charges: every record, the SRAM peaks, the routes and the
output, alone, in passes of query heads, and in a whole prefill whose plan streams the keys."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from helpers.closed_forms import assert_same_runs

from waferllm.device import tiny
from waferllm.kernels.attention_stream import prefill_attention_streamed
from waferllm.kernels.heads import head_layout
from waferllm.mesh import Layout, Ledger, Mesh, Mode
from waferllm.mesh.meta import shape_only
from waferllm.model import attention
from waferllm.model.config_sources import load_config
from waferllm.model.quant import Storage
from waferllm.model.transformer import MeshTransformer

DEVICE = dataclasses.replace(
    tiny(), step_overhead_cycles=5.0, op_overhead_cycles=7.0, scalar_cycles_per_element=2.0
)
CASES = [  # (rows, cols, kv heads, n_rep, head_dim)
    pytest.param(3, 4, 2, 2, 8, id="groups-of-2"),
    pytest.param(3, 7, 1, 3, 12, id="one-group-of-7-rectangular"),
    pytest.param(4, 6, 2, 1, 8, id="groups-of-3"),
    pytest.param(3, 2, 4, 2, 4, id="fewer-columns-than-kv-heads"),
    pytest.param(1, 4, 2, 2, 8, id="one-row"),
    pytest.param(5, 1, 2, 2, 8, id="one-column"),
]


def _placed(mesh: Mesh, heads, length: int, dtype: torch.dtype):
    def place(width: int, name: str):
        host = torch.empty(length, mesh.cols * width, dtype=dtype, device="meta")
        return mesh.scatter(host, Layout(tuple(host.shape), y_dim=0, x_dim=1), name)

    return place(heads.q_width, "q"), place(heads.kv_width, "k"), place(heads.v_width, "v")


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_streamed_attention_in_closed_form_charges_what_the_walk_charges(
    rows, cols, kv, n_rep, hd, dtype
):
    heads = head_layout(kv, n_rep, hd, cols)
    compared = 0
    for length in sorted({1, rows, 2 * rows + 1, 5 * rows - 2}):
        runs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, rows, cols, mode=Mode.ESTIMATE, compute_dtype=dtype)
            q, k, v = _placed(mesh, heads, length, dtype)
            ledger = Ledger()
            out = prefill_attention_streamed(
                mesh,
                q=q,
                k=k,
                v=v,
                heads=heads,
                length=length,
                sliding_window=3,
                ledger=ledger,
                walk=walk,
            )
            runs.append((ledger, mesh, out))
        compared += assert_same_runs(runs)
    assert compared > 5


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd"), CASES)
def test_streamed_attention_in_passes_of_query_heads_equals_the_walked_passes(
    rows, cols, kv, n_rep, hd, monkeypatch
):
    heads = head_layout(kv, n_rep, hd, cols)
    walked = functools.partial(prefill_attention_streamed, walk=True)
    runs = []
    for kernel in (walked, prefill_attention_streamed):
        monkeypatch.setattr(attention, "prefill_attention_streamed", kernel)
        mesh = Mesh(DEVICE, rows, cols, mode=Mode.ESTIMATE, compute_dtype=torch.float16)
        length = 3 * rows + 1
        q, k, v = _placed(mesh, heads, length, torch.float16)
        ledger = Ledger()
        out = attention.prefill_attention_passes(
            mesh,
            q=q,
            k=k,
            v=v,
            heads=heads,
            length=length,
            sliding_window=None,
            head_chunk=1,
            streamed=True,
            ledger=ledger,
        )
        runs.append((ledger, mesh, out))
    assert assert_same_runs(runs) >= 3


TINY = load_config("tiny")  # 4 query heads, 2 kv heads


def _streaming_model(config, grid, length: int, stored: str) -> MeshTransformer:
    """An estimate-mode model on the least SRAM whose plan streams the keys of `length`."""
    kwargs = dict(prefill_grid=grid, decode_grid=grid, storage=Storage.of(stored, stored))
    roomy = MeshTransformer(config, None, device=tiny(), **kwargs)
    need = roomy.plan.prefill_need_bytes(length, head_chunk=1, streamed=True)
    device = dataclasses.replace(tiny(), sram_bytes_per_core=need)
    model = MeshTransformer(config, None, device=device, max_context_tokens=length, **kwargs)
    assert model.plan.attention_streamed(length)
    return model


@pytest.mark.parametrize(
    ("config", "grid", "stored"),
    [
        (TINY, (4, 4), "float16"),
        (TINY, (3, 5), "int8"),
        (dataclasses.replace(TINY, sliding_window=9), (4, 3), "float16"),
    ],
)
def test_a_streamed_prefill_in_closed_form_equals_its_walk(config, grid, stored, monkeypatch):
    length = 160
    results = []
    for kernel in (functools.partial(prefill_attention_streamed, walk=True), None):
        if kernel is not None:
            monkeypatch.setattr(attention, "prefill_attention_streamed", kernel)
        model = _streaming_model(config, grid, length, stored)
        ledger = Ledger()
        with shape_only():
            model.prefill([0] * length, ledger)
        monkeypatch.undo()
        meshes = model.prefill_state.all_meshes
        results.append(
            (
                [repr(r) for r in ledger.records],
                [
                    (m.sram.peak_bytes, m.sram.live_bytes_max, m.routes.routes_per_core)
                    for m in meshes
                ],
            )
        )
    assert results[0] == results[1]
    assert any("attn.step" in r for r in results[0][0])
