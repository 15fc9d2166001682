"""A chunked prefill in estimate mode walks its priced layer once per chunk size and replays the
later chunks of that size (`model.chunked_layers`); tests/kernels/test_attention_chunked_cost.py
compares the records, SRAM peaks and routes with every chunk walked."""

from __future__ import annotations

import dataclasses

import pytest

from waferllm.device import tiny
from waferllm.errors import SramOverflowError
from waferllm.mesh.cost import Ledger
from waferllm.mesh.meta import shape_only
from waferllm.model import chunked
from waferllm.model.config_sources import load_config
from waferllm.model.transformer import MeshTransformer


@pytest.mark.parametrize(("length", "chunk", "walks"), [(17, 6, 2), (24, 6, 1), (7, 6, 2)])
def test_a_chunk_of_a_size_already_walked_is_replayed(length, chunk, walks, monkeypatch):
    model = MeshTransformer(
        load_config("tiny"), None, device=tiny(), prefill_grid=(3, 4), decode_grid=(3, 4)
    )
    walked: list[int] = []

    def counted(mesh, w, x, ctx, ledger, **kwargs):
        walked.append(ctx.length)
        return layer(mesh, w, x, ctx, ledger, **kwargs)

    layer = chunked.prefill_layer
    monkeypatch.setattr(chunked, "prefill_layer", counted)
    for walk, want in ((False, walks), (True, -(-length // chunk))):
        walked.clear()
        with shape_only():
            chunked.prefill_chunks(model, [0] * length, Ledger(), chunk, walk=walk)
        assert len(walked) == want


def test_a_replay_that_would_pass_the_sram_walks_the_chunk_and_raises_what_the_walk_raises():
    """The SRAM that holds two chunks of 6 tokens: the third chunk overflows it."""
    config = load_config("tiny")

    def model(device):
        return MeshTransformer(config, None, device=device, prefill_grid=(3, 4), decode_grid=(3, 4))

    roomy = model(tiny())
    with shape_only():
        chunked.prefill_chunks(roomy, [0] * 12, Ledger(), 6, walk=True)
    device = dataclasses.replace(tiny(), sram_bytes_per_core=roomy.peak_sram_bytes_per_core())
    errors = []
    for walk in (True, False):
        with pytest.raises(SramOverflowError) as raised, shape_only():
            chunked.prefill_chunks(model(device), [0] * 18, Ledger(), 6, walk=walk)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("every_region", [True, False])
@pytest.mark.parametrize(("layers", "sram", "grid", "length", "chunk"), [(4, 24000, (3, 3), 40, 9)])
def test_later_chunks_register_the_rope_tables_and_kept_kv_of_the_first_of_their_length(
    layers, sram, grid, length, chunk, every_region, monkeypatch
):
    """Several regions (each walked, or a scout's first only), four chunks of 9 and a last of
    4: the walk that registers the tables and placed k/v again (`ChunkBuffers`) charges the
    records of the walk that builds them every chunk, leaves the same buffers live (names
    and bytes) with the same SRAM peaks and routes, and builds them once per length."""
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=layers)
    device = dataclasses.replace(tiny(), mesh_rows=6, mesh_cols=6, sram_bytes_per_core=sram)
    built: list[int] = []

    def counted(mesh, heads, inv_freq, positions, **kwargs):
        built.append(len(positions))
        return tables(mesh, heads, inv_freq, positions, **kwargs)

    tables = chunked.rope_tables
    monkeypatch.setattr(chunked, "rope_tables", counted)
    runs = []
    for walk in (True, False):
        built.clear()
        model = MeshTransformer(
            config,
            None,
            device=device,
            prefill_grid=grid,
            decode_grid=grid,
            walk_every_region=every_region,
        )
        ledger = Ledger()
        with shape_only():
            chunked.prefill_chunks(model, [0] * length, ledger, chunk, walk=walk)
        meshes = model.prefill_state.all_meshes
        assert len(meshes) > 1
        runs.append(
            (
                [repr(r) for r in ledger.records],
                [sorted(m.sram.live.items()) for m in meshes],
                [(m.sram.peak_bytes, m.routes.routes_per_core) for m in meshes],
            )
        )
        every_chunk = 4 if walk else 1  # chunks of 9 whose tables are built, on each mesh
        assert built == [chunk] * len(meshes) * every_chunk + [4] * len(meshes)
    assert runs[0] == runs[1]
