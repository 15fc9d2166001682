"""Ladder's layer plans (estimate/systems/ladder.py) in closed form on one layer of the tiny
model (pinned device, tests/helpers/baselines.py)."""

from __future__ import annotations

from helpers.baselines import ALPHA, LINK, pinned_device, tiny_shapes

from waferllm.device import with_overrides
from waferllm.estimate.systems.ladder import LadderConstants, ladder_decode, ladder_prefill

SHAPES = tiny_shapes()


def device():
    return pinned_device()


def test_ladder_decode_projection_walks_k_in_chunks_of_16_overlapping_loads():
    """q_proj: K = N = 64, one core of 64 features, 4 chunks. Per chunk the next chunk's load,
    a stream through the 4 cores of a row (3*alpha + 65*16*2/W: one collective, no relay),
    overlaps T_mv =
    16 instructions of length 64 (max(10, 16, 32) = 32 cycles each)."""
    plan = ladder_decode(
        device(), (4, 4), SHAPES, 16, LadderConstants(prefill_span=1, decode_span=1)
    )
    chunks = [r for r in plan.ledger.expanded() if r.op == "ladder/q_proj/chunk"]
    assert len(chunks) == 4
    assert chunks[0].latency_cycles == max(3 * ALPHA + 65 * 16 * 2 / LINK, 16 * 32)


def test_ladder_prefill_runs_ceil_k_over_tk_chunks_per_gemm():
    """48 KB cores; the layer's weights and 8-token cache striped over 16 cores hold
    46720/16*2 = 5840 bytes each. Tiles shrink to the matrix (t_m = 8 tokens, t_n = 64), so
    t_k = (49152 - 5840 - 8*64*2) // (2*(8 + 64)*2) = 146: q_proj (K = 64) is one chunk,
    down_proj (K = 176) two."""
    dev = with_overrides(device(), {"sram_bytes_per_core": 48 * 1024})
    plan = ladder_prefill(dev, (4, 4), SHAPES, 8, LadderConstants(prefill_span=1, decode_span=1))
    chunks: dict[str, int] = {}
    for r in plan.ledger.expanded():
        if r.op.endswith("/chunk"):
            chunks[r.op] = chunks.get(r.op, 0) + 1
    assert chunks["ladder/q_proj/chunk"] == 1
    assert chunks["ladder/down_proj/chunk"] == 2
