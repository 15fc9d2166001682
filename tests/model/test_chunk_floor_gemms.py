"""The ring-GEMM floor of a chunk (`chunked.chunk_floor_cycles`, the chunk-size pruning's
`BudgetLedger(floor_cycles=)`): every chunk of an estimate-mode chunked walk, the last shorter
one included, costs at least it, and its layers' ring GEMM step records alone meet it; where
their compute is the instruction floor (LLaMA3-8B on wafer-scale grids) they equal it, so a
floor set too high shows. Tiny models over random grids, prompts, chunk sizes, overheads and
storage (hypothesis); LLaMA3-8B on grids of the wse2 and wse3 searches, float16 and int8."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waferllm.device import tiny, wse2, wse3
from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, Setup
from waferllm.mesh.cost import Ledger
from waferllm.mesh.meta import shape_only
from waferllm.mesh.storage import StoredDtype
from waferllm.model import chunked
from waferllm.model.chunked import RING_GEMMS, chunk_floor_cycles, max_chunk_tokens
from waferllm.model.config_sources import load_config
from waferllm.model.quant import UNCOMPRESSED, Storage

INT8 = Storage(weights=StoredDtype.INT8, kv=StoredDtype.INT8)
GEMM_STEPS = tuple(f"/{op}/step" for op, _ in RING_GEMMS)


def _chunk_records(model, prompt: int, tokens: int, monkeypatch) -> list[list]:
    """Each chunk's records (its own `_chunk` call's) in an unbudgeted walk."""
    chunks: list[list] = []
    walk_chunk = chunked._chunk

    def kept(model, ids, span, kv, ledger, reuse):  # type: ignore[no-untyped-def]
        start = ledger.mark()
        x = walk_chunk(model, ids, span, kv, ledger, reuse)
        chunks.append(ledger.records[start:])
        return x

    with monkeypatch.context() as patch, shape_only(), contextlib.ExitStack() as apart:
        patch.setattr(chunked, "_chunk", kept)
        for mesh in model.prefill_state.all_meshes:
            apart.enter_context(mesh.routes.kept_apart())
        model.prefill([0] * prompt, Ledger(), chunk_tokens=tokens)
    return chunks


def _latency(records) -> float:  # type: ignore[no-untyped-def]
    return math.fsum(r.latency_cycles * r.count for r in records)


def _check(model, prompt: int, tokens: int, monkeypatch) -> tuple[float, list[float]]:
    """Assert every chunk meets the floor, its GEMM steps too; (floor, GEMM steps / floor)."""
    floor = chunk_floor_cycles(model)
    assert floor > 0
    chunks = _chunk_records(model, prompt, tokens, monkeypatch)
    assert len(chunks) == math.ceil(prompt / tokens) >= 2
    ratios = []
    for records in chunks:
        gemms = _latency(r for r in records if r.op.endswith(GEMM_STEPS))
        assert gemms >= floor * (1 - 1e-12)
        assert _latency(records) >= gemms
        ratios.append(gemms / floor)
    return floor, ratios


LLAMA = [  # (device, storage, grid side, prompt, chunk tokens): the searches' chunked points
    pytest.param(wse2, UNCOMPRESSED, 653, 4096, 2612, id="wse2-653-two-chunks"),
    pytest.param(wse2, UNCOMPRESSED, 653, 4096, 1959, id="wse2-653-three-chunks"),
    pytest.param(wse2, UNCOMPRESSED, 226, 4096, 904, id="wse2-226-nine-regions"),
    pytest.param(wse3, UNCOMPRESSED, 669, 4096, 1500, id="wse3-669"),
    pytest.param(wse2, INT8, 653, 8192, 3000, id="wse2-653-int8"),
]


@pytest.mark.parametrize(("device", "storage", "side", "prompt", "tokens"), LLAMA)
def test_llama_chunks_meet_the_floor_and_their_gemm_steps_equal_it(
    device, storage, side, prompt, tokens, monkeypatch
):
    setup = Setup(config=load_config("llama3-8b"), device=device(), storage=storage)
    model = CostModel(setup).scout((side, side), (side, side))
    _, ratios = _check(model, prompt, tokens, monkeypatch)
    if storage is UNCOMPRESSED:  # the steps' compute is the instruction floor: tight
        assert all(abs(r - 1.0) < 1e-12 for r in ratios)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    layers=st.integers(1, 3),
    side=st.integers(3, 10),
    wide=st.booleans(),
    sram=st.integers(16000, 64000),
    beyond=st.floats(0.0, 2.0),
    pick=st.floats(0.0, 1.0),
    overheads=st.tuples(st.floats(0.0, 50.0), st.floats(0.0, 50.0), st.floats(0.5, 4.0)),
    int8=st.booleans(),
)
def test_every_chunk_of_a_tiny_model_meets_the_floor(
    layers, side, wide, sram, beyond, pick, overheads, int8, monkeypatch
):
    step, op, floor_cycles = overheads
    device = dataclasses.replace(
        tiny(),
        mesh_rows=16,
        mesh_cols=16,
        sram_bytes_per_core=sram,
        step_overhead_cycles=step,
        op_overhead_cycles=op,
        vector_instr_floor_cycles=floor_cycles,
    )
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=layers)
    grid = (side, 2 * side if wide else side)
    try:
        costs = CostModel(
            Setup(config=config, device=device, storage=INT8 if int8 else UNCOMPRESSED)
        )
        model = costs.scout(grid, grid)
        most, room = model.max_prompt_tokens, model.kv_capacity_tokens()
        prompt = min(most + 1 + round(beyond * most), room)  # past what fits at once
        longest = max_chunk_tokens(model.plan, prompt)
    except WaferError:
        return
    if not 0 < longest < prompt:
        return
    tokens = max(1, min(longest, round(pick * longest)))
    if tokens >= prompt:
        return
    try:
        _check(model, prompt, tokens, monkeypatch)
    except WaferError:  # a walk the plan refuses (SRAM, routes) prices nothing to bound
        return
