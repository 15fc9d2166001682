"""Position-blind rings and a direct fan-in, the T10 baseline's primitives
(reference/t10-ladder-baselines.md §5): shifts along a ring in any permutation of the cores,
relayed when routes run out, and every core's partial sent straight to one root. XY-routed flows,
remote loads and the region-wide chain are in `remote.py`; WaferLLM's own collectives in `comm`.

Routes follow SPEC.md §10.7 with one rule for arbitrary flows: a core configures one colour per
flow that transits it, plus 2 (send, receive). When a plan needs more than the free routes F,
flows are relayed every g = F - 2 hops, each relay a stage (beta).
Legend: P cores along the axis; d hops of the longest flow; lambda streams on the busiest link.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np
import torch

from waferllm.errors import RouteOverflowError, WaferError
from waferllm.mesh.comm import bytes_per_core, shift
from waferllm.mesh.cost import Charge, ChargeKind, Ledger, UnpricedLedger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.patterns import ArrayKey, key, permutation_traffic, unkey
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
