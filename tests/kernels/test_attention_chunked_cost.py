"""Chunked prefill attention in estimate mode from its sizes (`attention_chunked_cost`) charges
what its walk on meta tensors charges: every record, the SRAM peaks, the routes and the output,
for one call and for a whole chunked prefill (key blocks reused across chunks)."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from helpers.closed_forms import assert_same_runs

from waferllm.device import tiny
from waferllm.kernels.attention_chunked import KeyChunk, cached_prefill_attention
from waferllm.kernels.attention_chunked_cost import BlockRecords
from waferllm.kernels.heads import head_layout
from waferllm.mesh import Layout, Ledger, Mesh, Mode
from waferllm.mesh.budget import BudgetLedger, OverBudget
from waferllm.mesh.meta import shape_only
from waferllm.model import transformer
from waferllm.model.chunked import prefill_chunks
from waferllm.model.config_sources import load_config
from waferllm.model.quant import Storage
from waferllm.model.transformer import MeshTransformer

DEVICE = dataclasses.replace(
    tiny(), step_overhead_cycles=5.0, op_overhead_cycles=7.0, scalar_cycles_per_element=2.0
)
KERNEL_CASES = [  # (rows, cols, kv heads, n_rep, head_dim, chunk tokens, prompt tokens)
    pytest.param(3, 4, 2, 2, 8, 6, 16, id="groups-of-2-short-last-chunk"),
    pytest.param(4, 4, 1, 4, 8, 8, 24, id="one-group-of-4-equal-chunks"),
    pytest.param(3, 7, 1, 3, 12, 5, 13, id="rectangular-group-of-7"),
    pytest.param(5, 2, 4, 2, 4, 7, 19, id="fewer-columns-than-kv-heads"),
    pytest.param(1, 4, 2, 1, 8, 3, 7, id="one-row"),
    pytest.param(4, 1, 2, 2, 8, 4, 10, id="one-column"),
]


def _chunks(mesh: Mesh, heads, chunk: int, length: int, dtype: torch.dtype) -> list[KeyChunk]:
    def place(tokens: int, width: int, name: str):
        host = torch.empty(tokens, width, dtype=dtype, device="meta")
        return mesh.scatter(host, Layout((tokens, width), y_dim=0, x_dim=1), name)

    return [
        KeyChunk(
            k=place(min(chunk, length - s), mesh.cols * heads.kv_width, "k"),
            v=place(min(chunk, length - s), mesh.cols * heads.v_width, "v"),
            start=s,
            length=min(chunk, length - s),
        )
        for s in range(0, length, chunk)
    ]


def _attend(mesh: Mesh, heads, keys, ledger: Ledger, dtype, **kwargs):
    """The last chunk's query against `keys` (itself last)."""
    own = keys[-1]
    host = torch.empty(own.length, mesh.cols * heads.q_width, dtype=dtype, device="meta")
    q = mesh.scatter(host, Layout(tuple(host.shape), y_dim=0, x_dim=1), "q")
    return cached_prefill_attention(
        mesh,
        q=q,
        query_start=own.start,
        query_length=own.length,
        keys=keys,
        heads=heads,
        sliding_window=None,
        ledger=ledger,
        **kwargs,
    )


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "chunk", "length"), KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cached_prefill_attention_in_closed_form_charges_what_the_walk_charges(
    rows, cols, kv, n_rep, hd, chunk, length, dtype
):
    heads = head_layout(kv, n_rep, hd, cols)
    compared = 0
    for count in range(1, -(-length // chunk) + 1):  # every chunk's attention in turn
        runs = []
        for walk in (True, False):
            mesh = Mesh(DEVICE, rows, cols, mode=Mode.ESTIMATE, compute_dtype=dtype)
            keys = _chunks(mesh, heads, chunk, length, dtype)[:count]
            ledger = Ledger()
            runs.append((ledger, mesh, _attend(mesh, heads, keys, ledger, dtype, walk=walk)))
        compared += assert_same_runs(runs)
    assert compared > 20


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "chunk", "length"), KERNEL_CASES)
def test_key_blocks_reused_across_chunks_append_the_records_the_walk_charges(
    rows, cols, kv, n_rep, hd, chunk, length
):
    """Every chunk's attention after the first, on one mesh, each into a fresh ledger: with
    the walk's `BlockRecords` against the walk (SRAM peaks and routes of the whole walk)."""
    heads = head_layout(kv, n_rep, hd, cols)
    meshes = [
        Mesh(DEVICE, rows, cols, mode=Mode.ESTIMATE, compute_dtype=torch.float16) for _ in range(2)
    ]
    blocks = BlockRecords()
    compared = 0
    for count in range(1, -(-length // chunk) + 1):
        runs = []
        for mesh, kwargs in zip(meshes, ({"walk": True}, {"blocks": blocks}), strict=True):
            with mesh.sram.scope():
                keys = _chunks(mesh, heads, chunk, length, torch.float16)[:count]
                ledger = Ledger()
                runs.append(
                    (ledger, mesh, _attend(mesh, heads, keys, ledger, torch.float16, **kwargs))
                )
        compared += assert_same_runs(runs)
    assert compared > 20


def test_a_budget_stops_reused_key_blocks_with_the_walks_buffers_allocated():
    """A `BudgetLedger` layer stops both at a block's first records (the reused block checks
    its records together: the walk's are a prefix) with the same buffers live."""
    heads = head_layout(2, 2, 8, 4)
    seen = []
    for kwargs in ({"walk": True}, {"blocks": BlockRecords()}):
        mesh = Mesh(DEVICE, 3, 4, mode=Mode.ESTIMATE)
        keys = _chunks(mesh, heads, 6, 18, torch.float16)
        _attend(mesh, heads, keys[:1], Ledger(), torch.float16, **kwargs)  # priced: reusable
        ledger = BudgetLedger(budget_cycles=1.0).per_layer(4)
        with pytest.raises(OverBudget):
            _attend(mesh, heads, keys, ledger, torch.float16, **kwargs)
        seen.append(([repr(r) for r in ledger.records], mesh.sram.peak_bytes))
    (walked, walked_peak), (closed, closed_peak) = seen
    assert closed[: len(walked)] == walked and walked
    assert closed_peak == walked_peak


TINY = load_config("tiny")  # 4 query heads, 2 kv heads
SMALL = dataclasses.replace(tiny(), sram_bytes_per_core=24000)  # 3x3: two regions
MODEL_CASES = [  # (config, device, prefill grid, prompt tokens, chunk tokens, storage)
    (TINY, tiny(), (3, 4), 17, 6, "float16"),  # short last chunk
    (TINY, tiny(), (4, 4), 16, 8, "int8"),  # equal chunks, int8 weights and cache
    (TINY, tiny(), (3, 5), 20, 7, "float16"),  # rectangular: groups of 2 and 3 columns
    (TINY, tiny(), (5, 2), 23, 5, "int8"),
    (dataclasses.replace(TINY, sliding_window=6), tiny(), (3, 4), 19, 4, "float16"),  # evictions
    (dataclasses.replace(TINY, num_key_value_heads=1), tiny(), (4, 3), 14, 6, "float16"),
    (TINY, SMALL, (3, 3), 40, 9, "float16"),  # two regions, each walked
]


def _prefill(model: MeshTransformer, prompts: list[int], chunk: int, walk: bool, patch):
    """The estimate-mode chunked prefill of `prompts` (lengths): every record, each prefill
    mesh's SRAM peak and live maximum, its routes."""
    if walk:  # every chunk's layer walked, its attention on meta tensors
        patch.setattr(transformer, "prefill_chunks", functools.partial(prefill_chunks, walk=True))
    ledgers = [Ledger() for _ in prompts]
    with shape_only():
        model.prefill_batch(
            [[0] * p for p in prompts], ledgers, chunk_tokens=[chunk] * len(prompts)
        )
    patch.undo()
    meshes = model.prefill_state.all_meshes
    return (
        [[repr(r) for r in ledger.records] for ledger in ledgers],
        [(m.sram.peak_bytes, m.sram.live_bytes_max, m.routes.routes_per_core) for m in meshes],
    )


@pytest.mark.parametrize(("config", "device", "grid", "length", "chunk", "stored"), MODEL_CASES)
def test_a_chunked_prefill_in_closed_form_equals_its_walk(
    config, device, grid, length, chunk, stored, monkeypatch
):
    results = []
    for walk in (True, False):
        for prompts in ([length], [length, length - 3]):  # batch 1 and 2
            model = MeshTransformer(
                config,
                None,
                device=device,
                prefill_grid=grid,
                decode_grid=grid,
                storage=Storage.of(stored, stored),
                walk_every_region=True,
            )
            results.append(_prefill(model, prompts, chunk, walk, monkeypatch))
    assert results[:2] == results[2:]
    assert sum(len(r) for r in results[0][0]) > 50
