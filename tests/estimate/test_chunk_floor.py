"""The chunk floor of the chunk-size pruning (`BudgetLedger` with `chunk_lengths`): every
later chunk as long as the first costs at least the first chunk's cycles, and every chunk at
least its ring GEMMs' floor (`chunked.chunk_floor_cycles`, checked chunk by chunk in
tests/model/test_chunk_floor_gemms.py), so a walk's bound adds those floors for the chunks
still to come; a walk still never gives up at or under its own cost, gives up earlier than
without the floor, and the search is unchanged (tiny models; LLaMA3-8B searches on wse2 and
wse3, float16 and int8, whose chunk candidates the GEMM floor prunes before they start)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from waferllm.device import tiny, wse2, wse3
from waferllm.estimate import cost
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.search import search_grids
from waferllm.mesh.budget import BudgetLedger, OverBudget
from waferllm.mesh.cost import Ledger
from waferllm.mesh.meta import shape_only
from waferllm.mesh.storage import StoredDtype
from waferllm.model.chunked import chunk_candidates, chunk_spans, max_chunk_tokens
from waferllm.model.config_sources import load_config
from waferllm.model.placement import ResidentLayouts
from waferllm.model.quant import UNCOMPRESSED, Storage

INT8 = Storage(weights=StoredDtype.INT8, kv=StoredDtype.INT8)
# (layers, mesh rows, mesh cols, SRAM bytes per core, grid, options, config changes):
# one and several regions, rectangular grids, a sliding window shorter than the prompt,
# int8 weights and KV cache
MODELS = (
    (2, 4, 4, 32768, (4, 4), {}, {}),
    (4, 12, 12, 10000, (6, 6), {}, {}),
    (4, 6, 16, 12000, (6, 8), {}, {}),
    (2, 4, 4, 32768, (4, 4), {}, {"sliding_window": 20}),
    (3, 8, 8, 20000, (4, 4), {"storage": INT8}, {}),
)


def _costs(layers: int, rows: int, cols: int, sram: int, options: dict, changes: dict):
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=layers, **changes)
    device = dataclasses.replace(tiny(), mesh_rows=rows, mesh_cols=cols, sram_bytes_per_core=sram)
    return CostModel(Setup(config=config, device=device, **options))


class _ChunkEnds(Ledger):
    """A ledger that remembers its latency at the end of every chunk but the last."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def over_budget(self) -> bool:
        self.ends.append(self.totals().latency_cycles)
        return False


def _walks(setup: tuple):
    """(model, prompt, chunk size) for every candidate of a prompt of about two plans, and
    the longest chunk that fits a 150-token prompt: 2-13 chunks, the last shorter than the
    others (under a sliding window cheaper than the first) or not."""
    layers, rows, cols, sram, grid, options, changes = setup
    costs = _costs(layers, rows, cols, sram, options, changes)
    model = costs.model(grid, grid)
    most, room = model.max_prompt_tokens, model.kv_capacity_tokens()
    prompt = min(2 * most + grid[0] // 2 + 1, room)
    for tokens in chunk_candidates(model.plan, prompt):
        yield costs, model, prompt, tokens
    prompt = min(150, room)
    longest = max_chunk_tokens(model.plan, prompt)
    if 0 < longest < prompt:
        yield costs, model, prompt, longest


def _chunk_cycles(model, prompt: int, tokens: int) -> tuple[list[float], float]:
    """Each chunk's latency but the last's (its records run into the head's), and the walk's."""
    ledger = _ChunkEnds()
    meshes = model.prefill_state.all_meshes
    with shape_only(), contextlib.ExitStack() as apart:
        for mesh in meshes:
            apart.enter_context(mesh.routes.kept_apart())
        model.prefill([0] * prompt, ledger, chunk_tokens=tokens)
    ends = ledger.ends
    return [b - a for a, b in zip([0.0, *ends], ends, strict=False)], ledger.totals().latency_cycles


def _stops(model, prompt: int, tokens: int, ledger: BudgetLedger) -> int:
    """How many records a walk charging `ledger` made before it gave up."""
    with shape_only(), pytest.raises(OverBudget), contextlib.ExitStack() as apart:
        for mesh in model.prefill_state.all_meshes:
            apart.enter_context(mesh.routes.kept_apart())
            apart.enter_context(mesh.sram.freed_if(OverBudget))
        model.prefill([0] * prompt, ledger, chunk_tokens=tokens)
    return len(ledger.records)


@pytest.mark.parametrize("setup", MODELS)
def test_later_full_chunks_cost_at_least_the_first_and_a_walk_never_gives_up_at_its_cost(setup):
    alike = sooner = 0
    for costs, model, prompt, tokens in _walks(setup):
        lengths = [span.length for span in chunk_spans(prompt, tokens)]
        cycles, total = _chunk_cycles(model, prompt, tokens)
        assert len(cycles) == len(lengths) - 1
        for length, chunk in zip(lengths[1:], cycles[1:], strict=False):
            if length == lengths[0]:
                assert chunk >= cycles[0]
                alike += 1
        # a budget at the walk's own cost never stops it, whatever its last chunk costs
        again = costs._prefill_walk(model, prompt, tokens, budget_cycles=total)
        assert again.latency_cycles == total
        budget = total * 0.6  # past it somewhere: the floor stops the walk no later
        floored, plain = (
            _stops(model, prompt, tokens, BudgetLedger(budget_cycles=budget, chunk_lengths=n))
            for n in (lengths, ())
        )
        assert floored <= plain
        sooner += floored < plain
    assert alike and sooner  # the setups have later full chunks; the floor stops walks sooner


# (layers, mesh rows, mesh cols, SRAM bytes per core, prompt, output): chunked prompts on
# several grids of the sweep, with one and several regions
SEARCHES = (
    (4, 12, 12, 16000, 90, 6),
    (4, 12, 12, 12000, 90, 6),
    (6, 16, 16, 12000, 200, 20),
    (4, 10, 10, 10000, 120, 8),
    (4, 6, 16, 8000, 60, 3),
)


def test_the_search_with_the_chunk_floor_is_the_search_without_it(monkeypatch):
    def search(setup: tuple):
        layers, rows, cols, sram, prompt, output = setup
        costs = _costs(layers, rows, cols, sram, {}, {})
        return search_grids(costs, prompt_len=prompt, output_len=output)

    given_up: list[int] = []
    init = BudgetLedger.__init__

    def recorded(self, *, budget_cycles, chunk_lengths=(), floor_cycles=0.0):
        init(
            self,
            budget_cycles=budget_cycles,
            chunk_lengths=chunk_lengths,
            floor_cycles=floor_cycles,
        )
        given_up.append(len(chunk_lengths))

    monkeypatch.setattr(BudgetLedger, "__init__", recorded)
    floored = [search(s) for s in SEARCHES]
    assert any(n >= 3 for n in given_up)  # candidates with later full chunks were budgeted
    monkeypatch.setattr(
        BudgetLedger,
        "__init__",
        lambda self, *, budget_cycles, chunk_lengths=(), floor_cycles=0.0: init(
            self, budget_cycles=budget_cycles
        ),
    )
    plain = [search(s) for s in SEARCHES]
    for fast, slow in zip(floored, plain, strict=True):
        got, want = fast.to_dict(), slow.to_dict()
        del got["host_wall_s"], want["host_wall_s"]
        assert got == want
        assert fast.best.prefill_chunk_tokens == slow.best.prefill_chunk_tokens
        assert fast.best.prefill.ledger.expanded() == slow.best.prefill.ledger.expanded()
        assert fast.best.prefill.regions == slow.best.prefill.regions


LLAMA_SEARCHES = (  # (device, storage, resident layouts, prompt, output)
    ("wse2", UNCOMPRESSED, ResidentLayouts.ONE, 4096, 4096),
    ("wse3", UNCOMPRESSED, ResidentLayouts.ONE, 4096, 4096),
    ("wse2", INT8, ResidentLayouts.ONE, 8192, 512),
    ("wse2", UNCOMPRESSED, ResidentLayouts.ONE, 6000, 64),
)


@pytest.mark.parametrize(("device", "storage", "resident", "prompt", "output"), LLAMA_SEARCHES)
def test_llama_searches_with_the_gemm_floor_are_the_searches_without_it(
    device, storage, resident, prompt, output, monkeypatch
):
    def search():  # type: ignore[no-untyped-def]
        load_device_named = {"wse2": wse2, "wse3": wse3}.__getitem__
        setup = Setup(
            config=load_config("llama3-8b"),
            device=load_device_named(device)(),
            storage=storage,
            resident=resident,
        )
        return search_grids(CostModel(setup), prompt_len=prompt, output_len=output)

    hopeless: list[bool] = []
    check = BudgetLedger.hopeless
    monkeypatch.setattr(
        BudgetLedger, "hopeless", lambda self: hopeless.append(check(self)) or hopeless[-1]
    )
    floored = search()
    monkeypatch.setattr(cost, "chunk_floor_cycles", lambda model: 0.0)
    plain = search()
    assert any(hopeless)  # some chunk sizes were never walked
    got, want = floored.to_dict(), plain.to_dict()
    del got["host_wall_s"], want["host_wall_s"]
    assert got == want
    assert floored.best.prefill_chunk_tokens == plain.best.prefill_chunk_tokens
    assert floored.best.prefill.ledger.expanded() == plain.best.prefill.ledger.expanded()
    assert floored.best.decode.ledger.expanded() == plain.best.decode.ledger.expanded()
