"""Multi-wafer `fit` in the estimate layer (SPEC.md §10.10): how many devices, and the link.

`devices_needed` finds the fewest linked devices on which the model and the request fit, from
the plans' byte counts alone (`model.pipeline`: a range of layers per device), on the given
grids or on the whole-device rectangular tilings and square grids: `auto` takes it, and a
model that does not fit is an error naming it. `request_over_devices` prices a request over N
devices through the same `CostModel` walks and grid search as one device's (plus the tilings,
`with_tilings`); `pipeline_breakdown` reads the link's records out of its ledgers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, Grid, RequestCost, Setup
from waferllm.estimate.pipeline_schedule import PipelineSchedule, pipeline_schedule
from waferllm.estimate.search import GridSearch, search_grids
from waferllm.mesh.cost import Ledger
from waferllm.mesh.storage import bytes_per_element
from waferllm.model.kv_cache import max_new_tokens
from waferllm.model.pipeline import check_device_count, layers_per_device
from waferllm.model.placement import Phase, PlacementMode
from waferllm.model.plan import ModelPlan, plan_model
from waferllm.model.regions import PhaseRegions, device_tilings

Progress = Callable[[int, int, str], None]

TILINGS_PER_PHASE = 6  # whole-device tilings per phase paired in the device count and search
MAX_DEVICES = 64  # `auto` and the error's count look no further (a 64-wafer pipeline)
LINK_SUFFIX = ".system_link"  # the op suffix of a transfer between devices (mesh.system_link)
LEG_SUFFIXES = (".io_out", ".io_in")  # its on-wafer legs to and from the I/O edge

BUBBLE_NOTE = (
    "batch 1: the devices run one after another (a pipeline of one request has no overlap); "
    "while one device works the others wait, so each is busy only during its own layers "
    "(mean_device_busy_fraction per phase)"
)
BATCH_NOTE = (
    "batch {batch}: the sequences overlap, one per device at a time (breakdown.batch: bubbles, "
    "rounds and throughput); system_link and mean_device_busy_fraction are one sequence's"
)


def _plan(setup: Setup, num_devices: int, grids: tuple[Grid, Grid]) -> ModelPlan | None:
    """The model's plan over `num_devices` on `grids`, or None when it does not fit SRAM."""
    try:
        return plan_model(
            setup.config,
            setup.device,
            prefill_grid=grids[0],
            decode_grid=grids[1],
            placement=setup.placement,
            resident=setup.resident,
            max_context_tokens=None,
            num_devices=num_devices,
            storage=setup.storage,
        )
    except WaferError:
        return None


def _plan_fits(setup: Setup, num_devices: int, grids: tuple[Grid, Grid]) -> bool:
    return _plan(setup, num_devices, grids) is not None


def request_fits(
    setup: Setup, num_devices: int, grids: tuple[Grid, Grid], prompt_len: int, output_len: int
) -> bool:
    """Whether the model's plan over `num_devices` fits SRAM on `grids` with room for the
    prompt's prefill and a KV cache holding the request (byte counts only)."""
    plan = _plan(setup, num_devices, grids)
    if plan is None or plan.max_prompt_tokens < prompt_len:
        return False
    room = max_new_tokens(setup.kv_policy, plan.decode.grid[0], plan.kv_slots, prompt_len)
    return room >= output_len


def tiling_pairs(setup: Setup, grids: tuple[Grid | None, Grid | None]) -> list[tuple[Grid, Grid]]:
    """Pairs of the rectangular grids whose regions tile the whole device
    (`regions.device_tilings`, the first `TILINGS_PER_PHASE` of each phase: fewest regions
    first; prefill's with small logical grids for its ring GEMMs), a given grid kept."""
    device, config = setup.device, setup.config
    dims = (config.hidden_size, config.intermediate_size)
    pre = [grids[0]] if grids[0] else device_tilings(device, ring=True, dims=dims)
    dec = [grids[1]] if grids[1] else device_tilings(device, ring=False)
    return [(p, d) for p in pre[:TILINGS_PER_PHASE] for d in dec[:TILINGS_PER_PHASE]]


def _candidate_grids(
    setup: Setup, grids: tuple[Grid | None, Grid | None]
) -> list[tuple[Grid, Grid]]:
    """The given grids, or the tilings' pairs (`tiling_pairs`) and every square side from the
    smallest that holds one layer to the device's shorter side (both phases on the same side
    when neither is given)."""
    if grids[0] is not None and grids[1] is not None:
        return [(grids[0], grids[1])]
    device, config = setup.device, setup.config
    hi = min(device.mesh_rows, device.mesh_cols)
    layer_bytes = config.layer_params * _weight_bytes_per_element(setup)
    lo = min(hi, max(1, math.ceil(math.sqrt(layer_bytes / device.sram_bytes_per_core))))
    squares = [(grids[0] or (s, s), grids[1] or (s, s)) for s in range(lo, hi + 1)]
    return list(dict.fromkeys([*tiling_pairs(setup, grids), *squares]))


def feasible_grids(
    setup: Setup,
    num_devices: int,
    *,
    prompt_len: int,
    output_len: int,
    grids: tuple[Grid | None, Grid | None],
) -> list[tuple[Grid, Grid]]:
    """The candidate grid pairs on which the request fits `num_devices` (byte counts)."""
    return [
        pair
        for pair in _candidate_grids(setup, grids)
        if request_fits(setup, num_devices, pair, prompt_len, output_len)
    ]


def _weight_bytes_per_element(setup: Setup) -> float:
    """Stored bytes per weight (codes and their scales' share when compressed)."""
    return bytes_per_element(setup.storage.weights, setup.device.storage_bytes)


def weights_bound(setup: Setup) -> int:
    """Devices whose whole SRAM at least holds the weights (a lower bound on any placement)."""
    device = setup.device
    weight_bytes = setup.config.num_params * _weight_bytes_per_element(setup)
    return math.ceil(weight_bytes / (device.num_cores * device.sram_bytes_per_core))


def devices_needed(
    setup: Setup,
    *,
    prompt_len: int,
    output_len: int,
    grids: tuple[Grid | None, Grid | None],
    start: int = 1,
) -> int | None:
    """The fewest devices from `start` on which the request fits (see `request_fits`) on
    one of the candidate grids, counting up from the weights' bound; None when even
    `MAX_DEVICES` (or one layer per device) do not."""
    candidates = _candidate_grids(setup, grids)
    last = min(MAX_DEVICES, setup.config.num_hidden_layers)
    for count in range(max(start, weights_bound(setup)), last + 1):
        if any(request_fits(setup, count, pair, prompt_len, output_len) for pair in candidates):
            return count
    return None


def not_enough_devices(setup: Setup, num_devices: int, needed: int | None) -> WaferError:
    """The one-line error for a model or request that does not fit `num_devices` devices."""
    name, device = setup.config.name, setup.device.name
    have = f"one {device}" if num_devices == 1 else f"{num_devices} {device}s"
    if needed is None:
        return WaferError(
            f"{name} does not fit {have} (placement fit) and not even {MAX_DEVICES} linked "
            f"{device} wafers hold this request; use --placement per-layer or a device with "
            "more SRAM"
        )
    return WaferError(
        f"{name} does not fit {have} (placement fit) for this request: it needs {needed} "
        f"linked {device} wafers; use --num-devices {needed} (or auto)"
    )


def single_device_error(
    setup: Setup,
    error: WaferError,
    *,
    prompt_len: int,
    output_len: int,
    grids: tuple[Grid | None, Grid | None],
) -> WaferError:
    """What a one-device `fit` request that failed with `error` raises: when the model's plan
    fits no candidate grid of one device but fits some number of linked devices, the error
    naming that number; otherwise `error` itself."""
    if setup.placement is not PlacementMode.FIT:
        return error
    if any(_plan_fits(setup, 1, pair) for pair in _candidate_grids(setup, grids)):
        return error  # the model fits one device: the request failed for another reason
    lengths = {"prompt_len": prompt_len, "output_len": output_len}
    needed = devices_needed(setup, **lengths, grids=grids, start=2)
    return error if needed is None else not_enough_devices(setup, 1, needed)


FALLBACK_PAIRS = 4  # byte-feasible square sides priced when the grid search's sweep found none


def fastest_feasible(
    costs: CostModel, pairs: list[tuple[Grid, Grid]], *, prompt_len: int, output_len: int
) -> RequestCost:
    """The fastest of up to `FALLBACK_PAIRS` byte-feasible grid pairs spread over `pairs`
    (for when the grid search's coarse sweep of sides misses every side that fits N
    devices); raises the first pair's error when none runs."""
    step = max(1, len(pairs) // FALLBACK_PAIRS)
    best: RequestCost | None = None
    errors: list[WaferError] = []
    for prefill, decode in pairs[::step][:FALLBACK_PAIRS]:
        try:
            cost = costs.request(prefill, decode, prompt_len, output_len)
        except WaferError as exc:
            errors.append(exc)
            continue
        if best is None or cost.objective_s < best.objective_s:
            best = cost
    if best is None:
        raise errors[0]
    return best


def resolve_num_devices(
    setup: Setup,
    value: int | str,
    *,
    prompt_len: int,
    output_len: int,
    grids: tuple[Grid | None, Grid | None],
) -> int:
    """`--num-devices`: a positive integer, or "auto" for the fewest devices that fit."""
    if value == "auto":
        count = None
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        count = value
    else:
        raise WaferError(f"num_devices={value!r} must be a positive integer or 'auto'")
    if setup.placement is not PlacementMode.FIT and count != 1:
        raise WaferError(
            f"num_devices={value!r} needs placement fit (per-layer extrapolates one layer on "
            "one device)"
        )
    if count is not None:
        check_device_count(setup.config.num_hidden_layers, count)
    if count is None:
        count = devices_needed(
            setup, prompt_len=prompt_len, output_len=output_len, grids=grids, start=1
        )
        if count is None:
            raise not_enough_devices(setup, 1, None)
    if count > 1 and setup.config.tie_word_embeddings:
        raise WaferError(
            f"{setup.config.name} ties its embedding to the LM head (one table, on the last "
            f"device): a pipeline over {count} devices is not modelled for it; use one device"
        )
    return count


def grid_request(
    costs: CostModel,
    *,
    prompt_len: int,
    output_len: int,
    grids: tuple[Grid | None, Grid | None],
    progress: Progress | None,
) -> tuple[RequestCost, GridSearch | None]:
    """A request on the given grids, or on the grid search's choice (and the search)."""
    if grids[0] is not None and grids[1] is not None:
        return costs.request(grids[0], grids[1], prompt_len, output_len), None
    search = search_grids(
        costs,
        prompt_len=prompt_len,
        output_len=output_len,
        prefill_grid=grids[0],
        decode_grid=grids[1],
        progress=progress,
    )
    return search.best, search


def request_over_devices(
    costs: CostModel,
    *,
    prompt_len: int,
    output_len: int,
    grids: tuple[Grid | None, Grid | None],
    progress: Progress | None,
) -> tuple[RequestCost, GridSearch | None]:
    """A request over `costs.setup.num_devices` linked devices: on the given grids, or the grid
    search's choice (the fastest of a few byte-feasible pairs if its sweep finds none). A
    request that does not fit says how many devices it needs."""
    setup, count = costs.setup, costs.setup.num_devices
    given = grids[0] is not None and grids[1] is not None
    lengths = {"prompt_len": prompt_len, "output_len": output_len}
    try:
        cost, search = grid_request(costs, **lengths, grids=grids, progress=progress)
    except WaferError as exc:
        error = exc
    else:
        return (cost, search) if search is None else with_tilings(costs, search, **lengths)
    needed = devices_needed(setup, **lengths, grids=grids, start=count)
    if needed is None or needed > count:
        raise not_enough_devices(setup, count, needed) from None
    if given:
        raise error
    pairs = feasible_grids(setup, count, **lengths, grids=grids)
    return fastest_feasible(costs, pairs, **lengths), None


def spread_by_prefill(pairs: list[tuple[Grid, Grid]]) -> list[tuple[Grid, Grid]]:
    """`pairs` with the first pair of each prefill grid first (a ring GEMM's lcm padding
    makes prefill times differ most between tilings), the others after, in order."""
    firsts = list({p: (p, d) for p, d in reversed(pairs)}.values())[::-1]
    return firsts + [pair for pair in pairs if pair not in firsts]


def with_tilings(
    costs: CostModel, search: GridSearch, *, prompt_len: int, output_len: int
) -> tuple[RequestCost, GridSearch]:
    """The grid search's choice, or the fastest of `FALLBACK_PAIRS` byte-feasible pairs of
    whole-device tilings (`tiling_pairs`, one per prefill grid first: `spread_by_prefill`)
    where that is faster: over several devices a tiling that uses the whole mesh holds more
    layers per device (the search itself tries tilings only where no square works)."""
    lengths = {"prompt_len": prompt_len, "output_len": output_len}
    searched = {p.phase for p in search.points}  # a phase given its grid keeps it
    grids = (
        None if Phase.PREFILL in searched else search.best.prefill_grid,
        None if Phase.DECODE in searched else search.best.decode_grid,
    )
    count = costs.setup.num_devices
    pairs = [
        pair
        for pair in tiling_pairs(costs.setup, grids)
        if request_fits(costs.setup, count, pair, **lengths)
    ]
    try:
        tried = spread_by_prefill(pairs)[:FALLBACK_PAIRS]
        best = fastest_feasible(costs, tried, **lengths) if pairs else None
    except WaferError:
        best = None
    if best is None or best.objective_s >= search.best.objective_s:
        return search.best, search
    chosen = (best.prefill_grid, best.decode_grid, best.objective_s)
    return best, dataclasses.replace(
        search,
        best=best,
        pairs=(*search.pairs, chosen),
        space=f"{search.space}; over {count} devices, pairs of whole-device tilings",
    )


def batch_over_devices(
    costs: CostModel, cost: RequestCost, *, prompt_len: int, output_len: int, batch: int
) -> RequestCost:
    """`batch` sequences over the devices of `cost` (one sequence's ledgers, kept): the KV
    cache must hold them all (an equal share of the slots each), the transition re-lays all
    their caches; `pipeline_schedule_of` overlaps them."""
    costs.check_room(cost.model, prompt_len, output_len, batch)
    transition = costs.transition(cost.model, prompt_len, batch)
    return dataclasses.replace(cost, transition=transition, batch=batch)


def pipeline_schedule_of(setup: Setup, cost: RequestCost) -> PipelineSchedule | None:
    """The batched pipeline of a request over several devices with a batch, else None."""
    if setup.num_devices == 1 or cost.batch == 1:
        return None
    plan = cost.model.plan
    return pipeline_schedule(
        cost.batch, cost.prefill.ledger, cost.decode.ledger, (plan.prefill, plan.decode)
    )


# ---- the report ----------------------------------------------------------------------------------
def _link_totals(setup: Setup, ledger: Ledger) -> dict[str, Any]:
    """The phase's link transfers, their on-wafer legs to and from the I/O edge, and the mean
    share of the phase each device works: with one request the devices take turns and none
    works while the link carries the stream, so (phase - link) / (N x phase)."""
    records = [r for r in ledger.records if r.op.endswith(LINK_SUFFIX)]
    legs = [r for r in ledger.records if r.op.endswith(LEG_SUFFIXES)]
    cycles = sum(r.latency_cycles * r.count for r in records)
    phase = ledger.totals().latency_cycles
    busy = (phase - cycles) / (setup.num_devices * phase) if phase > 0 else None
    to_s = setup.device.cycles_to_seconds
    return {
        "transfers": sum(r.count for r in records),
        "bytes": sum(r.bytes_injected * r.count for r in records),
        "modelled_s": to_s(cycles),
        "io_legs_modelled_s": to_s(sum(r.latency_cycles * r.count for r in legs)),
        "mean_device_busy_fraction": busy,
    }


def _stages(regions: PhaseRegions) -> list[int]:
    counts = [0] * (regions.regions[-1].device + 1)
    for region in regions.regions:
        counts[region.device] += 1
    return counts


def pipeline_breakdown(
    setup: Setup, cost: RequestCost, prefill: PhaseRegions, decode: PhaseRegions
) -> dict[str, Any]:
    """The devices' layer ranges and regions, the link's constants and what it cost per phase
    (time inside TTFT and the decode steps; in `decode`, summed over the O-1 steps)."""
    device = setup.device
    ranges = layers_per_device(decode)  # prefill splits the layers alike
    pre, dec = _stages(prefill), _stages(decode)
    return {
        "num_devices": setup.num_devices,
        "devices": [
            {
                "device": d,
                "first_layer": layers.start,
                "num_layers": len(layers),
                "prefill_regions": pre[d],
                "decode_regions": dec[d],
            }
            for d, layers in enumerate(ranges)
        ],
        "system_link": {
            "bytes_per_s": device.system_link_bytes_per_s,
            "latency_s": device.system_link_latency_s,
            "prefill": _link_totals(setup, cost.prefill.ledger),
            "decode": _link_totals(setup, cost.decode.ledger),
        },
        "bubble": BUBBLE_NOTE if cost.batch == 1 else BATCH_NOTE.format(batch=cost.batch),
    }


__all__ = [
    "batch_over_devices",
    "devices_needed",
    "fastest_feasible",
    "grid_request",
    "feasible_grids",
    "not_enough_devices",
    "pipeline_breakdown",
    "pipeline_schedule_of",
    "request_fits",
    "request_over_devices",
    "resolve_num_devices",
    "single_device_error",
    "spread_by_prefill",
    "tiling_pairs",
    "weights_bound",
    "with_tilings",
]
