"""The grid search of SPEC.md §5: the fastest feasible (prefill grid, decode grid) pair.

Objective: TTFT + transition + decode time of the request, every candidate run through the
mesh transformer in estimate mode (SRAM and routes enforced: an infeasible grid is a point
with its reason, not a crash). The space is square grids P x P, as the paper autotunes, and
rectangular grids whose regions tile the whole device (`regions.device_tilings`). Stage 1 walks
each phase on its own: a coarse sweep of P from the smallest side that can hold one layer to
the device's shorter side, then halving steps around the best side (a phase's time depends on
its own grid only; the walks are cached per grid by `CostModel`, and with `Setup.phases_apart` a
decode point reuses a model built for a prefill point, or the cheapest one), then the tilings
(`_PhaseSweep.run_tilings`); decode is ranked there by its first and last steps (see
`_Search._decode_cycles`). Stage 2 prices pairs of the best grids exactly, transition
included (it depends on both grids), in order of TTFT + decode time, stopping once that bound
exceeds the best full objective. A prompt longer than a prefill grid's plan holds at once is
priced there in chunks, at the fastest of the candidate chunk sizes (`CostModel.prefill`), so
the search weighs chunk sizes with grids. Functional runs without grids take `default_grids`:
the smallest squares that hold the model, from byte counts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, Grid, RequestCost
from waferllm.estimate.search_errors import nothing_fits
from waferllm.mesh.storage import bytes_per_element
from waferllm.model.config import ModelConfig
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts
from waferllm.model.plan import plan_model
from waferllm.model.quant import UNCOMPRESSED, Storage
from waferllm.model.regions import device_tilings
from waferllm.model.transformer import MeshTransformer

__all__ = ["GridPoint", "GridSearch", "default_grids", "search_grids"]

COARSE_POINTS = 6  # sides in the first sweep
FINEST_STEP = 16  # refinement halves the step while it exceeds this many cores of side
PAIRS_PER_PHASE = 2  # stage 2 pairs the best few grids of each phase
TILINGS_FEASIBLE = 2  # where no square works, the rectangular tilings tried until this many work

Progress = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridPoint:
    """One phase on one grid: its modelled time, or None and why it is infeasible."""

    phase: Phase
    grid: Grid
    seconds: float | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"grid": list(self.grid), "seconds": self.seconds}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridSearch:
    """The chosen pair (`best`, its three ledgers) and every point the search evaluated."""

    best: RequestCost
    points: tuple[GridPoint, ...]
    pairs: tuple[tuple[Grid, Grid, float | None], ...]  # stage 2: (prefill, decode, objective)
    host_wall_s: float
    space: str

    @property
    def objective_s(self) -> float:
        return self.best.objective_s

    @property
    def evaluated(self) -> int:
        return len(self.points) + len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": "ttft_s + transition_s + decode_time_s",
            "objective_s": self.objective_s,
            "prefill_grid": list(self.best.prefill_grid),
            "decode_grid": list(self.best.decode_grid),
            "space": self.space,
            "evaluated": self.evaluated,
            "prefill_points": [p.to_dict() for p in self.points if p.phase is Phase.PREFILL],
            "decode_points": [p.to_dict() for p in self.points if p.phase is Phase.DECODE],
            "pairs": [
                {"prefill_grid": list(p), "decode_grid": list(d), "objective_s": s}
                for p, d, s in self.pairs
            ],
            "host_wall_s": self.host_wall_s,
        }


class _PhaseSweep:
    """Stage 1 for one phase: evaluate grids, remember every point."""

    def __init__(self, search: _Search, phase: Phase) -> None:
        self.search = search
        self.phase = phase
        self.points: dict[Grid, GridPoint] = {}

    def evaluate(self, grid: Grid) -> GridPoint:
        if grid not in self.points:
            self.points[grid] = self.search.phase_point(self.phase, grid)
        return self.points[grid]

    def run(self, sides: list[int]) -> None:
        for side in sides:
            self.evaluate((side, side))
        step = sides[1] - sides[0] if len(sides) > 1 else 0
        while step > FINEST_STEP:
            step //= 2
            best = [g for g in self.best_grids(1) if g[0] == g[1]]
            if not best:
                return
            centre = best[0][0]
            for side in (centre - step, centre + step):
                if self.search.lo <= side <= self.search.hi:
                    self.evaluate((side, side))

    def run_tilings(self, tilings: list[Grid]) -> None:
        """Where no square works: rectangular grids tiling the whole device, fewest regions
        first, until `TILINGS_FEASIBLE` work. (Where a square works, a rectangle pays the
        lcm padding of its ring GEMMs and was not faster in the cases measured: skipped, to
        keep the search fast.)"""
        if self.best_grids(1):
            return
        found = 0
        for grid in tilings:
            found += self.evaluate(grid).seconds is not None
            if found >= TILINGS_FEASIBLE:
                return

    def best_grids(self, count: int) -> list[Grid]:
        feasible = [(p.seconds, g) for g, p in self.points.items() if p.seconds is not None]
        return [g for _, g in sorted(feasible)[:count]]


class _Search:
    def __init__(
        self,
        costs: CostModel,
        prompt_len: int,
        output_len: int,
        progress: Progress | None,
        total: int,
    ) -> None:
        self.costs = costs
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.progress = progress
        self.total = total
        self.done = 0
        device = costs.setup.device
        self.hi = min(device.mesh_rows, device.mesh_cols)
        self.lo = min(self.hi, _smallest_side(costs))
        self.partner: dict[Phase, Grid] = {}  # a grid known to work for each phase
        self.priced: dict[tuple[Phase, Grid], MeshTransformer] = {}  # each point's model
        self.apart = costs.setup.phases_apart

    def tick(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done), what)

    def phase_point(self, phase: Phase, grid: Grid) -> GridPoint:
        """One phase's time on `grid`; the other phase on a grid known to work (or the same
        grid): with one resident layout a phase's plan ignores the other's grid."""
        try:
            model = self._scout(phase, grid)
            if phase is Phase.PREFILL:
                cycles = self.costs.prefill(model, self.prompt_len).latency_cycles
            else:
                cycles = self._decode_cycles(model)
        except WaferError as exc:
            point = GridPoint(phase=phase, grid=grid, seconds=None, reason=str(exc))
        else:
            seconds = self.costs.setup.device.cycles_to_seconds(cycles)
            point = GridPoint(phase=phase, grid=grid, seconds=seconds)
            self.partner.setdefault(phase, grid)
            self.priced[phase, grid] = model
        self.tick(f"{phase.value} {grid[0]}x{grid[1]}")
        return point

    def _scout(self, phase: Phase, grid: Grid) -> MeshTransformer:
        """The model a point on `grid` is priced on, for the time only (a `CostModel.scout`:
        skips the later regions' walks): the other phase on a grid known to work (or the
        same grid). With `phases_apart`, a decode point takes the model a prefill point on
        `grid` was priced on (the prefill sweep's squares serve the decode sweep's), else
        the feasible prefill grid with the fewest regions (the cheapest build: each
        region's layers are placed)."""
        other = Phase.DECODE if phase is Phase.PREFILL else Phase.PREFILL
        partner = self.partner.get(other, grid)
        if self.apart and phase is Phase.DECODE:
            built = self.priced.get((other, grid))  # (grid, grid): no decode grid given
            if built is not None:
                return built
            known = [g for p, g in self.priced if p is other] or [partner]
            partner = min(known, key=self._prefill_regions)
        pair = (grid, partner) if phase is Phase.PREFILL else (partner, grid)
        return self.costs.scout(*pair)

    def _prefill_regions(self, grid: Grid) -> int:
        model = self.priced.get((Phase.PREFILL, grid))
        return 0 if model is None else len(model.plan.prefill.regions)  # None: a given grid

    def _decode_cycles(self, model: MeshTransformer) -> float:
        """Stage 1's decode time: the O-1 steps priced by the mean of the first and the last
        step (the cache window, the only thing that changes, grows steadily); exact with one
        step. The pairs of stage 2 are priced exactly."""
        steps = self.output_len - 1
        self.costs.check_room(model, self.prompt_len, self.output_len)
        if steps == 0:
            return 0.0
        first = self.prompt_len + 1  # the cache holds the prompt and the first fed-back token
        contexts = sorted({first, self.prompt_len + steps})  # the widest window last
        walks = self.costs.walks(model)
        for context in reversed(contexts):  # the widest walked in full, the first re-walks
            walks.decode_step(context, self.prompt_len)  # its attention only (cached)
        cycles = [walks.decode_step(c, self.prompt_len).totals().latency_cycles for c in contexts]
        return steps * sum(cycles) / len(cycles)


def _smallest_side(costs: CostModel) -> int:
    """The smallest square side on which one decoder layer's weights fit SRAM (a bound: any
    plan needs at least one layer per region)."""
    setup = costs.setup
    bpe = bytes_per_element(setup.storage.weights, setup.device.storage_bytes)
    layer_bytes = setup.config.layer_params * bpe
    return max(1, math.ceil(math.sqrt(layer_bytes / setup.device.sram_bytes_per_core)))


def _coarse_sides(lo: int, hi: int) -> list[int]:
    if hi - lo + 1 <= COARSE_POINTS:
        return list(range(lo, hi + 1))
    step = (hi - lo) / (COARSE_POINTS - 1)
    return sorted({hi - round(i * step) for i in range(COARSE_POINTS)})


def search_grids(
    costs: CostModel,
    *,
    prompt_len: int,
    output_len: int,
    prefill_grid: Grid | None = None,
    decode_grid: Grid | None = None,
    progress: Progress | None = None,
) -> GridSearch:
    """The fastest feasible pair; a phase whose grid is given keeps it. Raises a WaferError
    naming what is needed when no grid works for a phase."""
    start = time.perf_counter()
    phases = [p for p, g in ((Phase.PREFILL, prefill_grid), (Phase.DECODE, decode_grid)) if not g]
    estimate = len(phases) * (COARSE_POINTS + 2 * 3) + PAIRS_PER_PHASE**2
    search = _Search(costs, prompt_len, output_len, progress, estimate)
    for phase, grid in ((Phase.PREFILL, prefill_grid), (Phase.DECODE, decode_grid)):
        if grid is not None:
            search.partner[phase] = grid
    sweeps = {phase: _PhaseSweep(search, phase) for phase in phases}
    sides = _coarse_sides(search.lo, search.hi)
    config, device = costs.setup.config, costs.setup.device
    dims = (config.hidden_size, config.intermediate_size)
    for phase, sweep in sweeps.items():
        sweep.run(sides)
        ring = phase is Phase.PREFILL
        sweep.run_tilings(device_tilings(device, ring=ring, dims=dims if ring else ()))
    choices: dict[Phase, list[Grid]] = {}
    for phase, grid in ((Phase.PREFILL, prefill_grid), (Phase.DECODE, decode_grid)):
        if grid is not None:
            choices[phase] = [grid]
            continue
        best = sweeps[phase].best_grids(PAIRS_PER_PHASE)
        if not best:
            tried = sweeps[phase].points
            reasons = [p.reason for p in tried.values() if p.reason]
            raise nothing_fits(costs, phase, grids=list(tried), reasons=reasons)
        choices[phase] = best
    best_cost, pairs = _pairs(search, choices)
    points = tuple(p for sweep in sweeps.values() for p in sweep.points.values())
    return GridSearch(
        best=best_cost,
        points=points,
        pairs=pairs,
        host_wall_s=time.perf_counter() - start,
        space=f"square grids {search.lo}..{search.hi} and rectangular tilings of the device",
    )


def _pairs(
    search: _Search, choices: dict[Phase, list[Grid]]
) -> tuple[RequestCost, tuple[tuple[Grid, Grid, float | None], ...]]:
    """Stage 2: full requests in order of the lower bound TTFT + decode (transition >= 0)."""
    first = choices[Phase.PREFILL][0]
    bound = {
        (p, d): _bound(search, p, d, first if search.apart else p)
        for p in choices[Phase.PREFILL]
        for d in choices[Phase.DECODE]
    }
    best: RequestCost | None = None
    tried: list[tuple[Grid, Grid, float | None]] = []
    errors: list[str] = []
    for (p, d), low in sorted(bound.items(), key=lambda item: item[1]):
        if best is not None and low >= best.objective_s:
            break
        try:
            cost = search.costs.request(p, d, search.prompt_len, search.output_len)
        except WaferError as exc:
            tried.append((p, d, None))
            errors.append(str(exc))
            continue
        finally:
            search.tick(f"pair {p[0]}x{p[1]} / {d[0]}x{d[1]}")
        tried.append((p, d, cost.objective_s))
        if best is None or cost.objective_s < best.objective_s:
            best = cost
    if best is None:
        raise WaferError(f"no feasible grid pair for this request: {errors[0]}")
    return best, tuple(tried)


def _bound(search: _Search, prefill: Grid, decode: Grid, placed: Grid) -> float:
    """TTFT + decode time: TTFT from stage 1's walk (on a given grid, a scout's), decode on
    the placed model of (`placed`, `decode`) (a request's decode walks one step on every
    region, then the narrower windows' attention on one layer: a scout would save little,
    and the winner's decode is then cached); with phases apart `placed` is the first prefill
    choice for every pair (the decode is cached per decode grid: one model per decode grid
    is built, and a pair's own when it is priced), else the pair's prefill grid."""
    total = 0.0
    for phase, grid in ((Phase.PREFILL, prefill), (Phase.DECODE, decode)):
        try:
            if phase is Phase.PREFILL:
                model = search.priced.get((phase, grid))
                if model is None:
                    model = search.costs.scout(grid, decode)
                cost = search.costs.prefill(model, search.prompt_len)
            else:
                model = search.costs.model(placed, grid)
                cost = search.costs.decode(model, search.prompt_len, search.output_len)
        except WaferError:
            return math.inf
        total += search.costs.setup.device.cycles_to_seconds(cost.latency_cycles)
    return total


# ---- functional runs: the smallest grids that hold the model ------------------------------------
# The context a default placement leaves room for (prompt + new tokens, capped by the model's
# max_position_embeddings): the smallest grid that merely holds the weights would cache a
# handful of tokens, and a request would be refused for want of a larger grid.
DEFAULT_CONTEXT_TOKENS = 256


def default_grids(
    config: ModelConfig,
    device: Device,
    *,
    prefill: tuple[int, int] | None,
    decode: tuple[int, int] | None,
    placement: PlacementMode = PlacementMode.FIT,
    resident_layouts: ResidentLayouts = ResidentLayouts.ONE,
    storage: Storage = UNCOMPRESSED,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Fill the missing grid(s) with the smallest square on which the model fits one region
    in that phase with headroom: a prompt and a KV cache of `DEFAULT_CONTEXT_TOKENS` (or
    max_position_embeddings if fewer). Failing that, the smallest square holding it in one
    region; failing that, the smallest on which it fits at all (over several regions).
    Decided from the plan's byte counts alone, before any weight is placed (both KV policies
    use the same plan)."""
    want = min(DEFAULT_CONTEXT_TOKENS, config.max_position_embeddings)
    one_region: tuple[tuple[int, int], tuple[int, int]] | None = None
    fallback: tuple[tuple[int, int], tuple[int, int]] | None = None
    last: WaferError | None = None
    for side in range(1, min(device.mesh_rows, device.mesh_cols) + 1):
        grids = (prefill or (side, side), decode or (side, side))
        try:
            plan = plan_model(
                config,
                device,
                prefill_grid=grids[0],
                decode_grid=grids[1],
                placement=placement,
                resident=resident_layouts,
                max_context_tokens=None,
                storage=storage,
            )
        except WaferError as err:  # SRAM overflow, or too many regions for the device
            last = err
            continue
        chosen = [p for p, g in ((plan.prefill, prefill), (plan.decode, decode)) if g is None]
        if not all(len(p.regions) == 1 for p in chosen):
            fallback = fallback or grids
            continue
        one_region = one_region or grids
        room = [
            plan.kv_slots * plan.decode.grid[0] >= want if decode is None else True,
            plan.max_prompt_tokens >= want if prefill is None else True,
        ]
        if all(room):
            return grids
    if one_region is not None or fallback is not None:
        return one_region or fallback  # type: ignore[return-value]
    assert last is not None
    raise last
