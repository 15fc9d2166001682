"""Primitives the Ladder baseline (and T10's point-to-point moves) need
(reference/t10-ladder-baselines.md §5): XY-routed point-to-point flows and remote loads (request
and reply, per-link and per-ramp contention, relays when routes run out), and a region-wide
stream (the snake chain). Position-blind rings and the fan-in live in `blind_rings.py`.

Costs follow the message model of SPEC.md §10.6; routes follow §10.7 with the rule of
`blind_rings`: one colour per transiting flow plus 2, relays every g = F - 2 hops. Flows much
fewer than the cores (Ladder's tile stores) are priced per flow (`segments.py`), the same
numbers as the per-core walk.
Legend: d hops of the longest flow; lambda streams on the busiest link.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable
from functools import lru_cache

import numpy as np

from waferllm.device import Device
from waferllm.mesh.blind_rings import SEND_RECEIVE_ROUTES, RelayPlan, free_routes, relay_plan
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.segments import StepLoads, step_at, steps
from waferllm.mesh.traffic import Traffic
from waferllm.mesh.virtual import Mesh


# ---- XY-routed point-to-point flows and remote loads -------------------------------------------
@dataclasses.dataclass(frozen=True)
class Flows:
    """Point-to-point messages on a mesh: (F,) arrays of source and destination rows and
    columns and bytes. XY routing: along the source's row to the destination's column, then
    along that column."""

    src_y: np.ndarray
    src_x: np.ndarray
    dst_y: np.ndarray
    dst_x: np.ndarray
    nbytes: np.ndarray

    def reversed(self, nbytes: np.ndarray | int) -> Flows:
        size = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), self.src_y.shape)
        return Flows(self.dst_y, self.dst_x, self.src_y, self.src_x, size)

    @property
    def hops(self) -> np.ndarray:
        return np.abs(self.dst_y - self.src_y) + np.abs(self.dst_x - self.src_x)


def flows(
    src: tuple[np.ndarray, np.ndarray], dst: tuple[np.ndarray, np.ndarray], nbytes: object
) -> Flows:
    """`Flows` from (rows, cols) index arrays and bytes (scalar or per flow)."""
    sy, sx, dy, dx = (np.asarray(a, dtype=np.int64).ravel() for a in (*src, *dst))
    sy, sx, dy, dx = np.broadcast_arrays(sy, sx, dy, dx)
    size = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), sy.shape)
    return Flows(sy, sx, dy, dx, size)


def _leg_links(
    line: np.ndarray, lo_pos: np.ndarray, hi_pos: np.ndarray, size: np.ndarray, lines: int, num: int
) -> np.ndarray:
    """(lines, num-1) bytes on the links of each line, flows covering links lo .. hi-1."""
    width = num + 1
    flat = line * width
    diff = np.bincount(flat + lo_pos, size, minlength=lines * width)
    diff -= np.bincount(flat + hi_pos, size, minlength=lines * width)
    return np.cumsum(diff.reshape(lines, width), axis=1)[:, : num - 1]


class Walk(enum.Enum):
    """How XY flows are priced: per core (per-line sums over the whole mesh, the reference) or
    per flow (`segments`: step functions, for flows much fewer than the cores)."""

    PER_CORE = "per_core"
    PER_FLOW = "per_flow"


FLOWS_PER_CORE_PER_FLOW_WALK = 1 / 8  # below this many flows per core, the per-flow walk is faster


def walk_for(shape: tuple[int, int], f: Flows) -> Walk:
    few = len(f.nbytes) <= FLOWS_PER_CORE_PER_FLOW_WALK * shape[0] * shape[1]
    return Walk.PER_FLOW if few else Walk.PER_CORE


def xy_traffic(
    device: Device, shape: tuple[int, int], f: Flows, *, stages: int, walk: Walk
) -> Traffic:
    """The traffic of `f` at the same time: per-link and per-ramp loads summed, the longest
    flow's hops and `stages` relays on the critical path (the same under either walk)."""
    rows, cols = shape
    size = np.where(f.hops > 0, f.nbytes, 0.0)
    links: dict[tuple[Axis, int], np.ndarray | StepLoads] = {}
    legs = (
        (Axis.X, f.src_y, f.src_x, f.dst_x, rows, cols),
        (Axis.Y, f.dst_x, f.src_y, f.dst_y, cols, rows),
    )
    for axis, line, a, b, lines, num in legs:
        if num == 1:
            continue
        for direction in (+1, -1):
            moving = np.where((b - a) * direction > 0, size, 0.0)
            if moving.any():
                lo, hi = (a, b) if direction > 0 else (b, a)
                if walk is Walk.PER_FLOW:
                    links[(axis, direction)] = _leg_steps(line, lo, hi, moving, lines, num)
                else:
                    links[(axis, direction)] = _leg_links(line, lo, hi, moving, lines, num)
    ends = ((f.src_y, f.src_x), (f.dst_y, f.dst_x))
    ramp_out: np.ndarray | StepLoads
    ramp_in: np.ndarray | StepLoads
    if walk is Walk.PER_FLOW:
        ramp_out, ramp_in = (_ramp_steps(shape, y, x, size) for y, x in ends)
    else:
        ramp_out, ramp_in = (
            np.bincount(y * cols + x, size, minlength=rows * cols).reshape(rows, cols)
            for y, x in ends
        )
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=int(f.hops.max(initial=0)),
        critical_stages=stages,
        bytes_injected=int(size.sum()),
        link_byte_hops=int((size * f.hops).sum()),
        links=links,
        ramp_in=ramp_in,
        ramp_out=ramp_out,
    )


def _leg_steps(
    line: np.ndarray, lo: np.ndarray, hi: np.ndarray, size: np.ndarray, lines: int, num: int
) -> StepLoads:
    """`_leg_links` as a step function: only the flows' ends are touched."""
    keep = size != 0
    return StepLoads.of_segments(
        (lines, num - 1), line=line[keep], lo=lo[keep], hi=hi[keep], size=size[keep]
    )


def _ramp_steps(
    shape: tuple[int, int], y: np.ndarray, x: np.ndarray, size: np.ndarray
) -> StepLoads:
    """Bytes through each core's ramp (a one-core segment per flow) as a step function."""
    keep = size != 0
    return StepLoads.of_segments(shape, line=y[keep], lo=x[keep], hi=x[keep] + 1, size=size[keep])


def xy_transit_per_core(shape: tuple[int, int], f: Flows) -> np.ndarray:
    """(rows, cols) count of flows passing through each core (neither source nor destination):
    the X leg's cores strictly between the ends on the source row, the turn core, and the Y
    leg's cores strictly between on the destination column."""
    rows, cols = shape
    along_x = _passing(f.src_y, f.src_x, f.dst_x, rows, cols)
    along_y = _passing(f.dst_x, f.src_y, f.dst_y, cols, rows).T
    turns = (f.src_x != f.dst_x) & (f.src_y != f.dst_y)
    corner = np.bincount(f.src_y[turns] * cols + f.dst_x[turns], minlength=rows * cols).reshape(
        rows, cols
    )
    return along_x + along_y + corner


def xy_transit_max(shape: tuple[int, int], f: Flows) -> int:
    """`xy_transit_per_core(shape, f).max()` from the flows: the Y legs' counts are a step
    function down each column; only the rows where an X leg passes or a flow turns add to it,
    and those few rows are summed in full."""
    rows, cols = shape
    lo, hi = np.minimum(f.src_y, f.dst_y), np.maximum(f.src_y, f.dst_y)
    inner = hi - lo > 1
    col = f.dst_x[inner]
    keys, values = steps(col * rows + lo[inner] + 1, col * rows + hi[inner], np.ones(len(col)))
    best = float(values.max(initial=0.0))
    passes = np.abs(f.dst_x - f.src_x) > 1
    turns = (f.src_x != f.dst_x) & (f.src_y != f.dst_y)
    busy = np.unique(f.src_y[passes | turns])  # the other rows carry Y legs only
    if len(busy):
        at = np.searchsorted(busy, f.src_y)  # the busy row of every flow that passes or turns
        along_x = _passing(at, f.src_x, f.dst_x, len(busy), cols)
        corner = np.bincount(at[turns] * cols + f.dst_x[turns], minlength=len(busy) * cols)
        along_y = step_at(keys, values, np.arange(cols)[None, :] * rows + busy[:, None])
        total = along_x + corner.reshape(len(busy), cols) + along_y
        best = max(best, float(total.max()))
    return int(best)


def _passing(line: np.ndarray, a: np.ndarray, b: np.ndarray, lines: int, num: int) -> np.ndarray:
    """(lines, num) count of segments a..b on their line passing each core strictly inside."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    inner = hi - lo > 1
    width = num + 1
    flat = line[inner] * width
    diff = np.bincount(flat + lo[inner] + 1, minlength=lines * width)
    diff = diff - np.bincount(flat + hi[inner], minlength=lines * width)
    return np.cumsum(diff.reshape(lines, width), axis=1)[:, :num]


def point_to_point(
    mesh: Mesh,
    f: Flows,
    *,
    ledger: Ledger,
    op: str,
    route_name: str,
    phase: int = 0,
    cache_key: Hashable | None = None,
) -> None:
    """Send every flow of `f` at once (XY-routed), relayed when its colours do not fit.
    `cache_key`: a hashable value that determines `f` (callers whose flows depend on a few
    shapes pass them); the route plan and the traffic are then computed once per key.

    Cost: d*alpha + stages*beta + the busiest link's or ramp's bytes / bandwidth, d the
    longest flow's hops. Routes: transit flows per core + 2; over the free budget F, relays
    every F - 2 hops (stages = ceil(d / (F - 2)) - 1).
    """
    free = free_routes(mesh, own=route_name)
    if cache_key is None:
        plan = xy_relay_plan(mesh.shape, f, free=free, name=route_name)
    else:
        plan = _cached_plan(cache_key, mesh.shape, free, route_name, f)
    mesh.routes.require(route_name, plan.routes_per_core)
    if ledger.prices and len(f.nbytes):
        if cache_key is None:
            walk = walk_for(mesh.shape, f)
            traffic = xy_traffic(mesh.device, mesh.shape, f, stages=plan.stages, walk=walk)
        else:
            traffic = _cached_traffic(cache_key, mesh.device, mesh.shape, plan.stages, f)
        ledger.charge(op, Charge.comm(traffic), phase=phase)


class _Unkeyed:
    """Flows passed beside a cache key: left out of the key (the key stands for them)."""

    def __init__(self, value: Flows) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unkeyed)


def _cached_plan(
    cache_key: Hashable, shape: tuple[int, int], free: int, name: str, f: Flows
) -> RelayPlan:
    return _plan_of(cache_key, shape, free, name, _Unkeyed(f))


def _cached_traffic(
    cache_key: Hashable, device: Device, shape: tuple[int, int], stages: int, f: Flows
) -> Traffic:
    return _traffic_of(cache_key, device, shape, stages, _Unkeyed(f))


@lru_cache(maxsize=256)
def _plan_of(
    cache_key: Hashable, shape: tuple[int, int], free: int, name: str, f: _Unkeyed
) -> RelayPlan:
    return xy_relay_plan(shape, f.value, free=free, name=name)


@lru_cache(maxsize=64)
def _traffic_of(
    cache_key: Hashable, device: Device, shape: tuple[int, int], stages: int, f: _Unkeyed
) -> Traffic:
    return xy_traffic(device, shape, f.value, stages=stages, walk=walk_for(shape, f.value))


def _xy_plan(mesh: Mesh, f: Flows, name: str) -> RelayPlan:
    return xy_relay_plan(mesh.shape, f, free=free_routes(mesh, own=name), name=name)


def xy_relay_plan(shape: tuple[int, int], f: Flows, *, free: int, name: str) -> RelayPlan:
    """How XY-routed flows `f` are routed with `free` routes per core (transit + 2 each)."""
    hops = int(f.hops.max(initial=0))
    if walk_for(shape, f) is Walk.PER_FLOW:
        transit = xy_transit_max(shape, f)
    else:
        transit = int(xy_transit_per_core(shape, f).max(initial=0))
    needed = transit + SEND_RECEIVE_ROUTES
    return relay_plan(hops=hops, routes_needed=needed, free_routes=free, name=name)


REQUEST_BYTES = 4  # one wavelet asks the owner for its data


def remote_load(
    mesh: Mesh, f: Flows, *, ledger: Ledger, op: str, route_name: str, phase: int = 0
) -> None:
    """Consumers read from owners (`f` runs owner -> consumer): a request of one wavelet from
    each consumer, then the reply, one after the other.

    Cost: 2*(d*alpha + stages*beta) + 4/W-ish request sizes + the reply's busiest link or ramp
    (owner hot spots show as a ramp carrying many replies). Routes as `point_to_point`, one
    set for both directions.
    """
    plan = _xy_plan(mesh, f, route_name)
    mesh.routes.require(route_name, plan.routes_per_core)
    if not ledger.prices or not len(f.nbytes):
        return
    walk = walk_for(mesh.shape, f)
    back = f.reversed(REQUEST_BYTES)
    request = xy_traffic(mesh.device, mesh.shape, back, stages=plan.stages, walk=walk)
    reply = xy_traffic(mesh.device, mesh.shape, f, stages=plan.stages, walk=walk)
    ledger.charge(f"{op}.request", Charge.comm(request), phase=phase)
    ledger.charge(f"{op}.reply", Charge.comm(reply), phase=phase + 1)


# ---- region-wide chain -------------------------------------------------------------------------
def snake_chain(
    mesh: Mesh,
    *,
    nbytes: int,
    ledger: Ledger,
    op: str,
    cores: int | None = None,
    streams: int = 1,
    route_budget: int | None = None,
    phase: int = 0,
) -> None:
    """A stream through the first `cores` cores of the region (default all) in snake order
    (row 0 eastwards, row 1 westwards, ...), routed by the switches: a region-wide collective
    (Ladder's loads from unified memory). `streams` such collectives cross every router of
    the snake at once; each needs a colour per router it transits + 2 (send, receive), so
    over the free routes F (`route_budget`, default every free route) they are relayed every
    F - 2 hops, each relay a stage (`relay_plan`).

    Cost: (S - 1)*alpha + stages*beta + nbytes/W + o_op for S cores, stages = ceil((S-1) /
    (F-2)) - 1 when relayed, else 0 (the size is paid once, pipelined; only the busiest
    stream is priced). Routes: min(streams + 2, F) per core.
    """
    span = mesh.num_cores if cores is None else min(cores, mesh.num_cores)
    if span <= 1:
        return
    free = free_routes(mesh, own="snake_chain") if route_budget is None else route_budget
    plan = relay_plan(
        hops=span - 1,
        routes_needed=streams + SEND_RECEIVE_ROUTES,
        free_routes=free,
        name="snake_chain",
    )
    mesh.routes.require("snake_chain", plan.routes_per_core)
    if ledger.prices:
        traffic = snake_traffic(mesh.device, mesh.shape, nbytes, span, plan.stages)
        ledger.charge(op, Charge.comm(traffic), phase=phase)


@lru_cache(maxsize=256)
def snake_traffic(
    device: Device, shape: tuple[int, int], nbytes: int, span: int, stages: int
) -> Traffic:
    """One stream along the first `span` cores of the snake with `stages` relays: each link on
    it and each ramp carries `nbytes` once (kept as (1, 1) loads: only the busiest matters)."""
    load = np.array([[float(nbytes)]])
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=span - 1,
        critical_stages=stages,
        bytes_injected=nbytes * (span - 1),
        link_byte_hops=nbytes * (span - 1),
        links={(Axis.X, +1): load},
        ramp_in=load,
        ramp_out=load,
    )
