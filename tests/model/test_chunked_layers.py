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
