"""Decode attention's records in closed form (`attention_cost`) equal the walked attention's."""

from __future__ import annotations

import dataclasses

import pytest

from waferllm.device import tiny, wse2
from waferllm.mesh.meta import shape_only
from waferllm.model.config_sources import load_config
from waferllm.model.kv_cache import KvPolicy, RowCounts
from waferllm.model.quant import Storage
from waferllm.model.transformer import MeshTransformer


def _model(config, device, grid, kv="float16", policy=KvPolicy.SHIFT, placement="fit"):
    return MeshTransformer(
        config,
        None,
        device=device,
        prefill_grid=(grid[0], grid[0]),
        decode_grid=grid,
        kv_policy=policy,
        placement=placement,
        storage=Storage.of("float16", kv),
    )


def _compare(model: MeshTransformer, counts: list[RowCounts]) -> int:
    """Both pricings of the step after `counts`; returns the records compared."""
    with shape_only():
        closed = model.decode_attention_records([c.copy() for c in counts])
        walked = model.decode_attention_records([c.copy() for c in counts], walk=True)
    assert [repr(r) for r in closed.records] == [repr(r) for r in walked.records]
    return len(walked.records)


TINY = load_config("tiny")  # 4 query heads, 2 kv heads
CASES = [  # (config, grid, kv storage): every kv-group shape of decode attention
    (TINY, (3, 4), "float16"),  # kv-groups of 2 columns: spread, gather, multicast
    (TINY, (8, 8), "int8"),  # groups of 4, a compressed cache's window reads
    (TINY, (5, 2), "int4"),  # one column per kv head: no spread
    (TINY, (4, 1), "float16"),  # one column holds both kv heads: nothing along X
    (dataclasses.replace(TINY, num_key_value_heads=1), (3, 5), "float16"),  # row K-tree
    (dataclasses.replace(TINY, num_key_value_heads=4), (6, 2), "int8"),  # MHA, 2 per column
    (dataclasses.replace(TINY, sliding_window=5), (3, 4), "float16"),  # a window's mask
]


@pytest.mark.parametrize(("config", "grid", "kv"), CASES)
def test_decode_attention_in_closed_form_equals_the_walk_at_every_width_and_batch(config, grid, kv):
    model = _model(config, tiny(), grid, kv)
    rows, slots = grid[0], model.kv_slots_per_row
    compared = 0
    for batch in (1, 2, 3):
        share = slots // batch
        for total in sorted({0, 1, rows - 1, rows, rows + 1, 2 * rows + 3, rows * share - 1}):
            counts = [RowCounts.balanced(KvPolicy.SHIFT, rows, share, total)] * batch
            compared += _compare(model, counts)
    assert compared > 100


def test_decode_attention_in_closed_form_equals_the_walk_for_uneven_batches_and_concat():
    model = _model(TINY, tiny(), (4, 4), "int8", policy=KvPolicy.CONCAT)
    slots = model.kv_slots_per_row // 2
    first = RowCounts.balanced(KvPolicy.CONCAT, 4, slots, 5)
    second = RowCounts.balanced(KvPolicy.CONCAT, 4, slots, 2)
    second.counts[-1] += 6  # the tokens after the prompt pile on the last row
    assert _compare(model, [first, second]) > 10


@pytest.mark.parametrize(("name", "grid"), [("llama3-8b", (420, 420)), ("llama2-13b", (372, 372))])
def test_decode_attention_in_closed_form_equals_the_walk_at_wafer_scale(name, grid):
    model = _model(load_config(name), wse2(), grid, placement="per-layer")
    rows, slots = grid[0], model.kv_slots_per_row
    for total in (0, rows + 7, 9 * rows + 400, rows * slots - 1):
        assert _compare(model, [RowCounts.balanced(KvPolicy.SHIFT, rows, slots, total)]) > 10


def _traced(attend, trace: list):
    """`attend` recording, per call, every SRAM buffer it allocates (name, bytes per core),
    what it leaves live, and its output's shape, dtype and layout."""

    def run(mesh, q, cache, index, heads, ledger):
        tracker, before = mesh.sram, mesh.sram.live_bytes_max
        alloc = tracker.alloc

        def recorded(name, nbytes, **kwargs):
            trace.append((name, nbytes))
            return alloc(name, nbytes, **kwargs)

        tracker.alloc = recorded
        try:
            out = attend(mesh, q, cache, index, heads, ledger)
        finally:
            del tracker.alloc
        trace.append((tracker.live_bytes_max - before, out.data.shape, out.data.dtype))
        trace.append((out.layout, out.name))
        return out

    return run


def _step(model: MeshTransformer, counts: list[RowCounts]) -> tuple[list[str], tuple, dict]:
    """The estimate-mode decode step after `counts`: every record, each region's own SRAM
    peak during it, the routes per core."""
    from waferllm.estimate.decode_walks import watching

    meshes = model.decode_state.all_meshes
    with shape_only(), watching(meshes) as watches:
        step = model.decode_records([c.copy() for c in counts])
    ledgers = (step.before, step.layer.pre, step.layer.attn, step.layer.post, step.kv, step.after)
    records = [repr(r) for ledger in ledgers for r in ledger.records]
    return records, tuple(w.bytes_per_core for w in watches), model.routes_per_core()


@pytest.mark.parametrize(("config", "grid", "kv"), CASES)
def test_a_decode_step_with_its_attention_estimated_equals_the_step_with_it_walked(
    config, grid, kv, monkeypatch
):
    """The estimate-mode layer's attention from the sizes (records, its SRAM buffers, routes)
    against `decode_attention` on meta tensors, at several widths and batches (each step on
    fresh models: the peaks and routes are the step's own)."""
    from waferllm.mesh.virtual import Mode
    from waferllm.model import decode_attention as layers

    walked_attention = layers.ATTEND[Mode.FUNCTIONAL]
    estimated_attention = layers.ATTEND[Mode.ESTIMATE]
    rows = grid[0]
    compared = 0
    for batch in (1, 3):
        for total in (0, rows + 1, 2 * rows + 3):
            estimated, walked = (_model(config, tiny(), grid, kv) for _ in range(2))
            share = estimated.kv_slots_per_row // batch
            counts = [RowCounts.balanced(KvPolicy.SHIFT, rows, share, total)] * batch
            traces: tuple[list, list] = ([], [])
            with monkeypatch.context() as patch:
                patch.setitem(layers.ATTEND, Mode.ESTIMATE, _traced(estimated_attention, traces[0]))
                got = _step(estimated, counts)
                patch.setitem(layers.ATTEND, Mode.ESTIMATE, _traced(walked_attention, traces[1]))
                want = _step(walked, counts)
            assert got == want
            assert traces[0] == traces[1] and traces[0]
            compared += len(want[0])
    assert compared > 100
