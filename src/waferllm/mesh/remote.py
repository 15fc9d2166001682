"""Primitives the wafer-side baselines need (T10, Ladder; reference/t10-ladder-baselines.md §5):
shifts along a position-blind ring (any permutation, relayed when routes run out), a direct
fan-in to one root, XY-routed point-to-point flows and remote loads, a region-wide stream.

Costs follow the message model of SPEC.md §10.6; routes follow §10.7 with one rule for arbitrary
flows: a core configures one colour per flow that transits it, plus 2 (send, receive). When a
plan needs more than the free routes F, flows are relayed every g = F - 2 hops, each relay a
stage (beta). WaferLLM's own collectives live in `comm`.
Legend: P cores along the axis; d hops of the longest flow; lambda streams on the busiest link.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable
from functools import lru_cache

import numpy as np
import torch

from waferllm.device import Device
from waferllm.errors import RouteOverflowError, WaferError
from waferllm.mesh.comm import bytes_per_core, shift
from waferllm.mesh.cost import Charge, ChargeKind, Ledger, UnpricedLedger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.patterns import ArrayKey, key, permutation_traffic, unkey
from waferllm.mesh.traffic import Traffic
from waferllm.mesh.virtual import Mesh

SEND_RECEIVE_ROUTES = 2  # a flow's own colour at its two ends
FAN_IN_ROUTES = 1  # every partial travels one way to the root on one colour


# ---- position-blind rings ---------------------------------------------------------------------
def default_stride(num: int) -> int:
    """The stride of a position-blind ring: the integer coprime to `num` nearest num/2 (the
    lower one on a tie), so that ID order has nothing to do with physical order."""
    if num <= 2:
        return num - 1
    for offset in range(num):
        for stride in (num // 2 - offset, num // 2 + offset):
            if 0 < stride < num and math.gcd(stride, num) == 1:
                return stride
    raise AssertionError("1 is always coprime")


@lru_cache(maxsize=1024)
def stride_successor(num: int, stride: int) -> np.ndarray:
    """dst[i] = (i + stride) mod P: the ring that visits cores 0, s, 2s, ... (read-only)."""
    if num > 1 and math.gcd(stride, num) != 1:
        raise WaferError(f"a ring of stride {stride} on {num} cores needs gcd(stride, P) = 1")
    dst = (np.arange(num) + stride) % num
    dst.setflags(write=False)
    return dst


@lru_cache(maxsize=1024)
def stride_position(num: int, stride: int) -> np.ndarray:
    """pos[i]: core i's place in the stride ring (core 0 first)."""
    pos = np.empty(num, dtype=np.int64)
    pos[(np.arange(num) * stride) % num] = np.arange(num)
    pos.setflags(write=False)
    return pos


def transit_per_core(src: np.ndarray, dst: np.ndarray, num: int) -> np.ndarray:
    """(L, P) count of flows along a line that pass through each core without ending there."""
    src2, dst2 = np.broadcast_arrays(np.atleast_2d(src), np.atleast_2d(dst))
    lo, hi = np.minimum(src2, dst2), np.maximum(src2, dst2)
    moving = (hi - lo) > 1
    lines = src2.shape[0]
    flat = np.arange(lines)[:, None] * (num + 1)
    diff = np.bincount((lo + 1 + flat)[moving], minlength=lines * (num + 1))
    diff = diff - np.bincount((hi + flat)[moving], minlength=lines * (num + 1))
    return np.cumsum(diff.reshape(lines, num + 1), axis=1)[:, :num]


@dataclasses.dataclass(frozen=True)
class RelayPlan:
    """How a set of flows is routed: directly (`segment_hops` None) or relayed every
    `segment_hops` hops; `routes_per_core` is what it configures on the busiest core."""

    hops: int
    routes_needed: int
    routes_per_core: int
    segment_hops: int | None

    @property
    def stages(self) -> int:
        """Relays on the longest flow: ceil(d / g) - 1."""
        if self.segment_hops is None or self.hops == 0:
            return 0
        return -(-self.hops // self.segment_hops) - 1


def relay_plan(*, hops: int, routes_needed: int, free_routes: int, name: str) -> RelayPlan:
    """Direct when `routes_needed` fit in `free_routes`, else relays every F - 2 hops."""
    if routes_needed <= free_routes:
        return RelayPlan(hops, routes_needed, routes_needed, None)
    segment = free_routes - SEND_RECEIVE_ROUTES
    if segment < 1:
        raise RouteOverflowError(routes=name, core=(0, 0), needed=3, limit=free_routes)
    return RelayPlan(hops, routes_needed, free_routes, segment)


def free_routes(mesh: Mesh, *, own: str = "") -> int:
    """The routes still free on the busiest core, plus those route set `own` already holds
    (a program that runs the same pattern again reuses its colours)."""
    held = int(np.max(mesh.routes.sets.get(own, 0))) if own else 0
    return mesh.device.routes_per_core - mesh.routes.routes_per_core + held


def permuted_shift(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    dst: np.ndarray,
    ledger: Ledger,
    op: str,
    route_name: str,
    route_budget: int | None = None,
    phase: int = 0,
) -> torch.Tensor:
    """`comm.shift` for any permutation `dst` ((P,) or (L, P)), routed as the hardware must.

    Routes: transit flows per core + 2 (a stride-s ring on P cores: up to about P); when they
    exceed F = `route_budget` (default: every free route; a kernel running several sets at
    once gives each its share, fixed before the first), every flow is relayed every
    g = F - 2 hops. Cost: d*alpha + (ceil(d/g) - 1)*beta + lambda*tile/W with
    d = max |dst - i| and lambda the most tiles on one directed link (stride s, gcd(s, P) = 1:
    d = max(s, P - s), lambda = min(s, P - s)).
    """
    dst = np.asarray(dst, dtype=np.int64)
    num = mesh.size(axis)
    if num == 1:
        return data.clone()
    budget = free_routes(mesh, own=route_name) if route_budget is None else route_budget
    plan = _shift_plan(key(dst), num, budget, route_name)
    mesh.routes.require(route_name, plan.routes_per_core)
    moved = shift(mesh, data, axis=axis, dst=dst, ledger=UnpricedLedger(), op=op)
    if ledger.prices:
        traffic = permutation_traffic(
            mesh.device, mesh.shape, axis, key(dst), bytes_per_core(mesh, data)
        )
        traffic = dataclasses.replace(traffic, critical_stages=plan.stages)
        ledger.charge(op, Charge.comm(traffic), phase=phase)
    return moved


@lru_cache(maxsize=256)
def _shift_plan(dst_key: ArrayKey, num: int, free: int, name: str) -> RelayPlan:
    dst = unkey(dst_key)
    src = np.broadcast_to(np.arange(num), dst.shape)
    hops = int(np.abs(dst - src).max(initial=0))
    needed = int(transit_per_core(src, dst, num).max(initial=0)) + SEND_RECEIVE_ROUTES
    return relay_plan(hops=hops, routes_needed=needed, free_routes=free, name=name)


# ---- direct fan-in -----------------------------------------------------------------------------
def fan_in_reduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    root: int,
    ledger: Ledger,
    op: str,
    per_partial_cycles: float,
    phase: int = 0,
) -> torch.Tensor:
    """Every core of a line sends its partial straight to `root`, which adds them in arrival
    order (T10's order-free exchange). Returns the line sums (keepdim over `axis`).

    Cost: max(root, P-1-root)*alpha + (P-1)*max(n/W, c_p) + op overhead, where n is the
    partial's bytes and c_p (`per_partial_cycles`) the root's cost to receive and add one
    partial: the root's ramp and adder take the P-1 partials one after the other.
    Routes: 1 per core (all flows run one way to one core on one colour).
    """
    num = mesh.size(axis)
    out = data.sum(dim=axis.tensor_dim, keepdim=True)
    if num == 1:
        return out
    if not 0 <= root < num:
        raise WaferError(f"fan-in root {root} out of range 0..{num - 1}")
    mesh.routes.require(f"{axis.value}_fan_in", FAN_IN_ROUTES)
    if ledger.prices:
        nbytes = bytes_per_core(mesh, data)
        traffic = permutation_traffic(
            mesh.device, mesh.shape, axis, key(_to_root(num, root)), nbytes
        )
        d = mesh.device
        serial = (num - 1) * max(nbytes / d.ramp_bytes_per_cycle, per_partial_cycles)
        charge = Charge(
            kind=ChargeKind.COMM,
            cycles=traffic.latency_term_cycles + serial,
            bytes_injected=traffic.bytes_injected,
            link_byte_hops=traffic.link_byte_hops,
            critical_hops=traffic.critical_hops,
            overhead_cycles=d.op_overhead_cycles,
        )
        ledger.charge(op, charge, phase=phase)
    return out


@lru_cache(maxsize=256)
def _to_root(num: int, root: int) -> np.ndarray:
    """Destinations of a fan-in: every core to `root` (not a permutation: priced only)."""
    return np.full(num, root, dtype=np.int64)


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


def xy_traffic(device: Device, shape: tuple[int, int], f: Flows, *, stages: int) -> Traffic:
    """The traffic of `f` at the same time: per-link and per-ramp loads summed, the longest
    flow's hops and `stages` relays on the critical path."""
    rows, cols = shape
    size = np.where(f.hops > 0, f.nbytes, 0.0)
    links: dict[tuple[Axis, int], np.ndarray] = {}
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
                links[(axis, direction)] = _leg_links(line, lo, hi, moving, lines, num)
    ramp_out = np.bincount(f.src_y * cols + f.src_x, size, minlength=rows * cols)
    ramp_in = np.bincount(f.dst_y * cols + f.dst_x, size, minlength=rows * cols)
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=int(f.hops.max(initial=0)),
        critical_stages=stages,
        bytes_injected=int(size.sum()),
        link_byte_hops=int((size * f.hops).sum()),
        links=links,
        ramp_in=ramp_in.reshape(rows, cols),
        ramp_out=ramp_out.reshape(rows, cols),
    )


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
            traffic = xy_traffic(mesh.device, mesh.shape, f, stages=plan.stages)
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
    return xy_traffic(device, shape, f.value, stages=stages)


def _xy_plan(mesh: Mesh, f: Flows, name: str) -> RelayPlan:
    return xy_relay_plan(mesh.shape, f, free=free_routes(mesh, own=name), name=name)


def xy_relay_plan(shape: tuple[int, int], f: Flows, *, free: int, name: str) -> RelayPlan:
    """How XY-routed flows `f` are routed with `free` routes per core (transit + 2 each)."""
    hops = int(f.hops.max(initial=0))
    needed = int(xy_transit_per_core(shape, f).max(initial=0)) + SEND_RECEIVE_ROUTES
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
    request = xy_traffic(mesh.device, mesh.shape, f.reversed(REQUEST_BYTES), stages=plan.stages)
    reply = xy_traffic(mesh.device, mesh.shape, f, stages=plan.stages)
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
