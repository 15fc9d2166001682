"""A chunked prefill in estimate mode walks its priced layer once per chunk size and replays the
later chunks of that size (`model.chunked_layers`); tests/kernels/test_attention_chunked_cost.py
compares the records, SRAM peaks and routes with every chunk walked."""

from __future__ import annotations

import pytest

from waferllm.device import tiny
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
