"""Phase costs of a request on given grids, from the mesh transformer in estimate mode.

`CostModel` owns the estimate-mode `MeshTransformer`s of one setup (model, device, placement,
cache policy, resident layouts) and caches what they charge: one model per grid pair, the
prefill ledger per (prefill grid, prompt), the decode ledger per (decode grid, request, batch),
the transition per (grid pair, prompt, batch); decode steps are priced without tokens by
`decode_walks.DecodeWalks`. The grid search and `reproduce` evaluate many requests on few
grids, so every walk happens once per process. A chunk size's walk gives up once its ledger,
with its later full chunks at no less than its first, passes the fastest one priced (exact:
`mesh.budget.BudgetLedger`), and each prefill walk keeps its routes apart, so no walk depends
on which walks came before it.
Walks run under `mesh.meta.shape_only()` (fast output shapes of the meta tensors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.estimate.decode_walks import DecodeWalks, phase_cost, watching
from waferllm.mesh.budget import BudgetLedger, OverBudget
from waferllm.mesh.cost import Ledger, PhaseLedger
from waferllm.mesh.meta import shape_only
from waferllm.model.chunked import chunk_candidates, chunk_floor_cycles, chunk_spans
from waferllm.model.config import ModelConfig
from waferllm.model.kv_cache import Append, KvCacheFullError, KvPolicy, RowCounts, admit
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts
from waferllm.model.quant import UNCOMPRESSED, Storage
from waferllm.model.transformer import MeshTransformer

Grid = tuple[int, int]
ShiftStart = Callable[[], tuple[Append, RowCounts]]  # a shift group's first append and counts
ShiftGroups = dict[int, tuple[ShiftStart, int]]  # first shifting row -> (its start, steps)
Widths = dict[int, tuple[RowCounts, int]]  # window width -> (counts before its first step, steps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """Everything an estimate depends on except the grids and the request's lengths."""

    config: ModelConfig
    device: Device
    placement: PlacementMode = PlacementMode.FIT
    kv_policy: KvPolicy = KvPolicy.SHIFT
    resident: ResidentLayouts = ResidentLayouts.ONE
    storage: Storage = UNCOMPRESSED  # weights and KV cache compressed or not
    num_devices: int = 1  # linked identical devices, a range of layers each (multi-wafer fit)

    @property
    def phases_apart(self) -> bool:
        """Whether a phase's plan and walks depend on its own grid only: one resident layout
        (with both, each phase's SRAM holds the other plan's weights) on one device (over
        several, both phases' layers are split over the devices together)."""
        return self.resident is ResidentLayouts.ONE and self.num_devices == 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestCost:
    """The three ledgers of one request on one grid pair (SPEC.md §10.4's ingredients); with
    `batch` B, of B identical sequences decoded together (their prompts prefilled one at a
    time: `prefill` is one prompt's, `transition` and `decode` the batch's)."""

    prefill_grid: Grid
    decode_grid: Grid
    prefill_chunk_tokens: int | None  # the prompt's chunks (None: prefilled in one piece)
    prefill: PhaseLedger  # TTFT: prefill, final norm, LM head, the first token's argmax
    transition: Ledger
    decode: PhaseLedger  # the O-1 decode steps, identical steps grouped by count
    model: MeshTransformer
    batch: int = 1

    def seconds(self) -> tuple[float, float, float]:
        """(TTFT, transition, decode time), modelled."""
        to_s = self.model.device.cycles_to_seconds
        return (
            to_s(self.prefill.latency_cycles),
            to_s(self.transition.totals().latency_cycles),
            to_s(self.decode.latency_cycles),
        )

    @property
    def objective_s(self) -> float:
        """What the grid search minimises: TTFT + transition + decode time."""
        return sum(self.seconds())


class CostModel:
    """Estimate-mode transformers of one `Setup` and the ledgers they charged, cached.

    With one resident layout a phase's plan depends on its own grid only, so a phase's cost is
    cached per (its grid, the request) and shared by every grid pair; with both layouts
    resident, each phase's SRAM holds the other plan's weights too, and the key is the pair.
    """

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._models: dict[tuple[Grid, Grid, int], MeshTransformer] = {}
        self._scouts: dict[tuple[Grid, Grid], MeshTransformer] = {}
        self._walks: dict[tuple[Grid, Grid, int, bool], DecodeWalks] = {}
        self._phases: dict[tuple, PhaseLedger] = {}
        self._chunks: dict[tuple, int | None] = {}
        self._transitions: dict[tuple, Ledger] = {}

    def model(self, prefill_grid: Grid, decode_grid: Grid, batch: int = 1) -> MeshTransformer:
        """The placed model (weights on meta tensors; SRAM and routes checked); one per batch
        size, so that each batch's SRAM peak is its own."""
        key = (prefill_grid, decode_grid, batch)
        if key not in self._models:
            self._models[key] = self._build(prefill_grid, decode_grid, walk_every_region=True)
        return self._models[key]

    def scout(self, prefill_grid: Grid, decode_grid: Grid) -> MeshTransformer:
        """The model of `model()` (batch 1) for callers that ask only the time (the grid
        search): its walks skip the later regions' unpriced layers, so its ledgers are the
        placed model's but its SRAM peaks and routes are not (`MeshTransformer`'s
        `walk_every_region`). With one region per phase that changes nothing: it is the
        placed model, and shares its cached walks."""
        key = (prefill_grid, decode_grid)
        if key in self._scouts:
            return self._scouts[key]
        placed = self._models.get((*key, 1))
        if placed is None:
            placed = self._build(prefill_grid, decode_grid, walk_every_region=False)
            if not any(_scouted(placed, phase) for phase in Phase):
                placed.walk_every_region = True  # one region per phase: no region is skipped
                self._models[(*key, 1)] = placed
        self._scouts[key] = placed
        return placed

    def _build(
        self, prefill_grid: Grid, decode_grid: Grid, *, walk_every_region: bool
    ) -> MeshTransformer:
        s = self.setup
        return MeshTransformer(
            s.config,
            None,
            device=s.device,
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            placement=s.placement,
            kv_policy=s.kv_policy,
            resident_layouts=s.resident,
            storage=s.storage,
            num_devices=s.num_devices,
            walk_every_region=walk_every_region,
        )

    def walks(self, model: MeshTransformer, batch: int = 1) -> DecodeWalks:
        """The decode walks of a model built by `model()` at batch `batch`, cached with it."""
        key = (
            model.plan.prefill.grid,
            model.plan.decode.grid,
            batch,
            _scouted(model, Phase.DECODE),
        )
        if key not in self._walks:
            self._walks[key] = DecodeWalks(model, batch=batch)
        return self._walks[key]

    @staticmethod
    def _grids(model: MeshTransformer) -> tuple[Grid, Grid]:
        return model.plan.prefill.grid, model.plan.decode.grid

    def _key(self, model: MeshTransformer, phase: Phase, *request: int) -> tuple:
        grids = (model.plan.prefill.grid, model.plan.decode.grid)
        if self.setup.phases_apart:
            grids = (model.plan.grid(phase),)  # type: ignore[assignment]
        return (phase, *grids, *request, _scouted(model, phase))

    @shape_only()
    def prefill(self, model: MeshTransformer, prompt_len: int) -> PhaseLedger:
        """TTFT's ledger (prefill, final norm, LM head, the first token's argmax); a prompt
        the plan cannot hold at once, or holds only with the lean schedule (streamed keys):
        the fastest of the candidate chunk sizes and that lean walk."""
        key = self._key(model, Phase.PREFILL, prompt_len)
        if key not in self._phases:
            whole = prompt_len <= model.max_prompt_tokens
            if whole and not model.plan.attention_streamed(prompt_len):
                self._phases[key] = self._prefill_walk(model, prompt_len, None)
                self._chunks[key] = None
            else:
                best = self._best_chunk(model, prompt_len, whole=whole)
                self._phases[key], self._chunks[key] = best
        return self._phases[key]

    def prefill_chunk(self, model: MeshTransformer, prompt_len: int) -> int | None:
        """The chunk size `prefill` priced the prompt with (None: one piece)."""
        self.prefill(model, prompt_len)
        return self._chunks[self._key(model, Phase.PREFILL, prompt_len)]

    def _best_chunk(
        self, model: MeshTransformer, prompt_len: int, *, whole: bool
    ) -> tuple[PhaseLedger, int | None]:
        """The fastest chunked prefill over the candidate chunk sizes, and with `whole` the
        prompt in one piece (None) too (the grid search considers them for every prefill
        grid); raises the plan's error when none fits."""
        candidates: list[int | None] = [None] if whole else []
        candidates += chunk_candidates(model.plan, prompt_len)
        if not candidates:
            model.default_chunk_tokens(prompt_len)  # raises, naming what is needed
        best: tuple[PhaseLedger, int | None] | None = None
        for chunk in candidates:  # the first of the fastest, as min() over all of them
            if best is None:
                best = (self._prefill_walk(model, prompt_len, chunk), chunk)
                continue
            budget = best[0].latency_cycles
            try:
                cost = self._prefill_walk(model, prompt_len, chunk, budget_cycles=budget)
            except OverBudget:  # slower than `best` before its last chunk: it cannot win
                continue
            if cost.latency_cycles < budget:
                best = (cost, chunk)
        assert best is not None
        return best

    def _prefill_walk(
        self,
        model: MeshTransformer,
        prompt_len: int,
        chunk_tokens: int | None,
        *,
        budget_cycles: float | None = None,
    ) -> PhaseLedger:
        """One prefill walk, its routes kept apart (a cached model's walks must not see each
        other's: the walk order, and which walks a pruned search skips, change nothing).
        Raises `OverBudget` once a chunked walk's latency, with the floor of its chunks still to
        come (`BudgetLedger`), passes `budget_cycles` (given)."""
        ledger: Ledger = Ledger()
        if budget_cycles is not None:
            spans = chunk_spans(prompt_len, chunk_tokens) if chunk_tokens is not None else []
            lengths = [span.length for span in spans]
            floor = chunk_floor_cycles(model) if lengths else 0.0
            ledger = BudgetLedger(
                budget_cycles=budget_cycles, chunk_lengths=lengths, floor_cycles=floor
            )
            if ledger.hopeless():  # its chunks' floors alone are slower than the budget
                raise OverBudget(f"{len(lengths)} chunks cost at least {floor} cycles each")
        meshes = model.prefill_state.all_meshes
        with watching(meshes) as watches, contextlib.ExitStack() as apart:
            for mesh in meshes:
                apart.enter_context(mesh.routes.kept_apart())
                apart.enter_context(mesh.sram.freed_if(OverBudget))
            model.prefill([0] * prompt_len, ledger, chunk_tokens=chunk_tokens)
            routes = max(mesh.routes.routes_per_core for mesh in meshes)
        peaks = tuple(w.bytes_per_core for w in watches)
        cost = phase_cost(model, Phase.PREFILL, ledger, peaks)
        return dataclasses.replace(cost, routes_per_core=routes)

    @shape_only()
    def transition(self, model: MeshTransformer, prompt_len: int, batch: int = 1) -> Ledger:
        """The re-layouts between the plans after `batch` prompts of `prompt_len` (both grids
        matter): every sequence's KV cache (from its prefill chunks), the weights once."""
        key = (model.plan.prefill.grid, model.plan.decode.grid, prompt_len, batch)
        if key not in self._transitions:
            ledger = Ledger()
            share = model.kv_budget.equal_share(batch)
            counts = model.handoff_counts(prompt_len, slots=share)
            chunk = self.prefill_chunk(self.model(*self._grids(model)), prompt_len)
            model.charge_transition([counts] * batch, ledger, chunk_tokens=[chunk] * batch)
            self._transitions[key] = ledger
        return self._transitions[key]

    def check_room(
        self, model: MeshTransformer, prompt_len: int, output_len: int, batch: int = 1
    ) -> None:
        """Raise unless the KV cache holds the request (`prompt_len + output_len - 1`), for
        each of `batch` sequences in an equal share of the slots (admission by KV capacity);
        a cache that evicts beyond a sliding window holds any request."""
        if batch > 1:
            context = prompt_len + output_len - 1
            window = model.config.sliding_window
            admit(
                model.kv_policy,
                model.kv_budget,
                [prompt_len] * batch,
                [context] * batch,
                window=window,
            )
            return
        if model.evicts():
            return
        room = model.max_new_tokens(prompt_len)
        if output_len > room:
            rows, cols = model.plan.decode.grid
            capacity = model.kv_capacity_tokens(prompt_len=prompt_len)
            raise KvCacheFullError(
                f"the request needs {prompt_len + output_len - 1} cached positions but the KV "
                f"cache on the {rows}x{cols} decode grid holds {capacity} "
                f"({self.setup.kv_policy.value} policy: {room} new tokens after this prompt); "
                "use a larger decode grid, placement per-layer, or a shorter request"
            )

    @shape_only()
    def decode(
        self, model: MeshTransformer, prompt_len: int, output_len: int, batch: int = 1
    ) -> PhaseLedger:
        """The O-1 decode steps of `batch` sequences after prompts of `prompt_len`; raises if
        the cache cannot hold them."""
        self.check_room(model, prompt_len, output_len, batch)
        key = self._key(model, Phase.DECODE, prompt_len, output_len, batch)
        if key not in self._phases:
            self._phases[key] = self.walks(model, batch).decode(prompt_len, output_len)
        return self._phases[key]

    def request(
        self,
        prefill_grid: Grid,
        decode_grid: Grid,
        prompt_len: int,
        output_len: int,
        batch: int = 1,
    ) -> RequestCost:
        """All three ledgers of one request (of `batch` identical ones decoded together);
        raises the model's errors (SRAM, routes, KV)."""
        if prompt_len < 1 or output_len < 1 or batch < 1:
            raise WaferError(
                f"prompt_len={prompt_len}, output_len={output_len} and batch={batch} must "
                "all be >= 1"
            )
        model = self.model(prefill_grid, decode_grid, batch)
        self.check_room(model, prompt_len, output_len, batch)
        single = self.model(prefill_grid, decode_grid)  # prompts are prefilled one at a time
        return RequestCost(
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            prefill_chunk_tokens=self.prefill_chunk(single, prompt_len),
            prefill=self.prefill(single, prompt_len),
            transition=self.transition(model, prompt_len, batch),
            decode=self.decode(model, prompt_len, output_len, batch),
            model=model,
            batch=batch,
        )


def _scouted(model: MeshTransformer, phase: Phase) -> bool:
    """Whether `model`'s walks of `phase` skip regions (a `CostModel.scout` of several)."""
    state = model.prefill_state if phase is Phase.PREFILL else model.decode_state
    return not model.walk_every_region and len(state.regions.regions) > 1


@functools.lru_cache(maxsize=32)
def cost_model(setup: Setup) -> CostModel:
    """The process-wide cache of walks for one setup."""
    return CostModel(setup)


def clear_cache() -> None:
    """Forget every cached walk (benchmarks time a cold estimate with it)."""
    cost_model.cache_clear()


__all__ = [
    "CostModel",
    "Grid",
    "PhaseLedger",
    "RequestCost",
    "Setup",
    "clear_cache",
    "cost_model",
]
