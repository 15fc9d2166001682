"""Communication primitives on the virtual mesh: shift, broadcast, reduce, allreduce, segments.

Each moves per-core tiles (`data`: (rows, cols, *tile)) exactly as the hardware would, as one
vectorised tensor operation over the whole mesh, configures its routes (SPEC.md §10.7) and
charges its cost to the caller's ledger (unless the ledger does not price: `Ledger.prices`).
Who sends what to whom is in `patterns` (cached on shapes), the K-tree's plan in `ktree`, the
message model in `traffic`, index arithmetic on lines in `lines`; `charges` prices data that
kernels move by index. Index tensors and validated roots are cached: a decode step makes
hundreds of these calls on small tiles, where per-call host work, not data, dominates.
Legend: P cores along the axis; "line" = one row (axis X) or one column (axis Y).
"""

from __future__ import annotations

import enum
import math
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis, RingKind, ring_successor
from waferllm.mesh.ktree import TreePlan, resolve_fanouts, tree_plan
from waferllm.mesh.line_charges import line_charge, root_owners
from waferllm.mesh.lines import check_data, from_line, line_index, line_roots, permutation
from waferllm.mesh.patterns import (
    Owners,
    chain_traffic,
    key,
    multicast_traffic,
    permutation_traffic,
    tree_traffic,
)
from waferllm.mesh.replicas import on_replicas
from waferllm.mesh.ring_allreduce import charge_ring_allreduce
from waferllm.mesh.routes import (
    BROADCAST_ROUTES,
    CHAIN_ROUTES,
    RING_ROUTES,
    TREE_LEVEL_ROUTES,
)
from waferllm.mesh.traffic import Traffic
from waferllm.mesh.virtual import Mesh


class ReduceAlgorithm(enum.StrEnum):
    PIPELINE = "pipeline"  # chains towards the root (Cerebras' default allreduce)
    RING = "ring"  # reduce-scatter then allgather on the interleaved ring
    KTREE = "ktree"  # WaferLLM's K-tree (SPEC.md §10.5)


class ReduceOp(enum.StrEnum):
    SUM = "sum"
    MAX = "max"


# Route sets (colour entries per core) of SPEC.md §10.7 and the code notes §1.4, §2.5.


def bytes_per_core(mesh: Mesh, data: torch.Tensor) -> int:
    """Bytes of one core's tile of `data` in the storage dtype."""
    return math.prod(data.shape[2:]) * mesh.device.storage_bytes


_E = TypeVar("_E", bound=enum.StrEnum)


def as_enum(cls: type[_E], value: object) -> _E:
    """`cls(value)` without the enum machinery when `value` already is a member."""
    return value if type(value) is cls else cls(value)  # type: ignore[return-value,arg-type]


# ---- shift -------------------------------------------------------------------------------------
def shift(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    dst: np.ndarray,
    ledger: Ledger,
    op: str,
    routes: tuple[str, int] | None = None,
    phase: int = 0,
) -> torch.Tensor:
    """Every core i of a line sends its tile to dst[i] (a permutation; (P,) or (lines, P)).

    One communication step: critical path max |dst - src| hops, no stages (routes are direct).
    """
    dst = _charge_shift(
        mesh, data, axis=axis, dst=dst, ledger=ledger, op=op, routes=routes, phase=phase
    )
    src_of = np.empty_like(dst)
    np.put_along_axis(src_of, dst, np.broadcast_to(np.arange(dst.shape[-1]), dst.shape), axis=-1)
    return line_index(mesh, axis, src_of, data)


def _charge_shift(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    dst: np.ndarray,
    ledger: Ledger,
    op: str,
    routes: tuple[str, int] | None,
    phase: int,
) -> np.ndarray:
    """Check, configure and charge `shift`; the checked destinations."""
    check_data(mesh, data)
    dst = permutation(mesh, axis, dst)
    if routes is not None:
        mesh.routes.require(*routes)
    if ledger.prices:
        traffic = permutation_traffic(
            mesh.device, mesh.shape, axis, key(dst), bytes_per_core(mesh, data)
        )
        ledger.charge(op, Charge.comm(traffic), phase=phase)
    return dst


def ring_shift(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    ledger: Ledger,
    op: str,
    kind: RingKind = RingKind.INTERLEAVED,
    steps: int = 1,
    route_name: str | None = None,
    phase: int = 0,
) -> torch.Tensor:
    """Advance every tile `steps` positions along its line's ring (one step's worth of routes)."""
    num, kind = mesh.size(axis), as_enum(RingKind, kind)
    dst = ring_successor(num, kind, steps)
    return shift(
        mesh,
        data,
        axis=axis,
        dst=dst,
        ledger=ledger,
        op=op,
        routes=_ring_routes(axis, kind, steps, route_name),
        phase=phase,
    )


def charge_ring_shift(
    mesh: Mesh, data: torch.Tensor, *, axis: Axis, ledger: Ledger, op: str, phase: int = 0
) -> None:
    """Configure and charge a one-step interleaved `ring_shift` of `data` without moving it:
    for kernels that track where the ring has taken the tiles by index."""
    dst = ring_successor(mesh.size(axis), RingKind.INTERLEAVED, 1)
    routes = _ring_routes(axis, RingKind.INTERLEAVED, 1, None)
    _charge_shift(mesh, data, axis=axis, dst=dst, ledger=ledger, op=op, routes=routes, phase=phase)


def _ring_routes(axis: Axis, kind: RingKind, steps: int, name: str | None) -> tuple[str, int]:
    name = name or f"{axis.value}_ring_{kind.value}_{'fwd' if steps > 0 else 'rev'}"
    return name, RING_ROUTES


# ---- broadcast ---------------------------------------------------------------------------------
def broadcast(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    root: int | np.ndarray,
    ledger: Ledger,
    op: str,
    phase: int = 0,
) -> torch.Tensor:
    """Multicast the root's tile to every core of its line; the root may differ per line.

    The root sends one stream to each side (one after the other through its ramp); every core
    passed takes the stream in. Cost: max(root, P-1-root) hops + tile_bytes / bandwidth, with
    twice the tile through an interior root's ramp.
    """
    check_data(mesh, data)
    roots = line_roots(mesh, axis, root)
    num = mesh.size(axis)
    if num == 1:
        return data.clone()
    _charge_broadcast(mesh, axis, roots, bytes_per_core(mesh, data), ledger, op, phase)
    if len(roots) == 1:
        return from_line(data, axis, int(roots[0]))
    return line_index(mesh, axis, Owners.of_roots(num, roots).array(), data)


def _charge_broadcast(
    mesh: Mesh,
    axis: Axis,
    root: int | np.ndarray,
    nbytes: int,
    ledger: Ledger,
    op: str,
    phase: int,
) -> None:
    """Configure the routes of a broadcast of `nbytes` tiles from a valid `root` (on an axis
    of 2+ cores) and charge its multicast."""
    mesh.routes.require(_BCAST_ROUTES[axis], BROADCAST_ROUTES)
    if ledger.prices:
        num = mesh.size(axis)
        if type(root) is int and 0 <= root < num:  # one root on every line
            if nbytes >= 1 and not ledger.in_overlap:
                lines = mesh.size(axis.other)
                charge = line_charge(mesh.device, "multicast", num, root, nbytes, lines)
                ledger.charge(op, charge, phase=phase)
                return
            owners = root_owners(num, root)
        else:
            owners = Owners.of_roots(num, line_roots(mesh, axis, root))
        traffic = multicast_traffic(mesh.device, mesh.shape, axis, owners, nbytes)
        ledger.charge(op, Charge.comm(traffic), phase=phase)


def charge_broadcast(
    mesh: Mesh, *, axis: Axis, root: int, nbytes: int, ledger: Ledger, op: str, phase: int = 0
) -> None:
    """What `broadcast` of `nbytes` tiles from `root` along `axis` configures and charges,
    without data (estimate-mode closed forms); nothing on an axis of one core."""
    if mesh.size(axis) > 1:
        _charge_broadcast(mesh, axis, root, nbytes, ledger, op, phase)


_BCAST_ROUTES = {axis: f"{axis.value}_bcast" for axis in Axis}


# ---- reduce and allreduce ---------------------------------------------------------------------
def combine_lines(data: torch.Tensor, dim: int, reduce_op: ReduceOp) -> torch.Tensor:
    """Lines combined along mesh dim `dim` (keepdim), once per held tile (`replicas`); a sum
    over the contiguous tiles (its rounding follows the tensor's shape). Meta tiles (estimate
    mode): the shape and dtype torch gives (a sum of integers or booleans in int64), no op."""
    if data.is_meta:
        shape = list(data.shape)
        shape[dim] = 1
        floating = reduce_op is ReduceOp.MAX or data.dtype.is_floating_point
        return torch.empty(shape, dtype=data.dtype if floating else torch.int64, device="meta")
    if reduce_op is ReduceOp.SUM:
        return on_replicas(lambda t: t.contiguous().sum(dim=dim, keepdim=True), data, across=dim)
    return on_replicas(lambda t: t.amax(dim=dim, keepdim=True), data, across=dim)


def _reduce_plan(
    mesh: Mesh, axis: Axis, algorithm: ReduceAlgorithm, fanouts: tuple[int, ...] | None
) -> TreePlan | None:
    """Configure the reduce's routes; returns the K-tree's plan (None for the pipeline)."""
    device = mesh.device
    plan, routes = _reduce_routes(
        axis,
        algorithm,
        mesh.size(axis),
        None if fanouts is None else tuple(fanouts),
        device.hop_latency_cycles,
        device.stage_latency_cycles,
    )
    for name, count in routes:
        mesh.routes.require(name, count)
    return plan


@lru_cache(maxsize=1024)
def _reduce_routes(
    axis: Axis,
    algorithm: ReduceAlgorithm,
    num: int,
    fanouts: tuple[int, ...] | None,
    alpha: float,
    beta: float,
) -> tuple[TreePlan | None, tuple[tuple[str, int], ...]]:
    """(the K-tree's plan or None for the pipeline, the route sets it configures)."""
    a = axis.value
    if algorithm is ReduceAlgorithm.PIPELINE:
        return None, ((f"{a}_chain", CHAIN_ROUTES),)
    plan = tree_plan(num, resolve_fanouts(num, fanouts, alpha=alpha, beta=beta), alpha, beta)
    routes = [(f"{a}_chain", CHAIN_ROUTES)] if plan.levels >= 1 else []
    routes += [(f"{a}_tree_level{level}", TREE_LEVEL_ROUTES) for level in range(2, plan.levels + 1)]
    return plan, tuple(routes)


def _reduce_charge(
    mesh: Mesh,
    axis: Axis,
    plan: TreePlan | None,
    root: int | np.ndarray,
    roots: np.ndarray,
    nbytes: int,
    ledger: Ledger,
) -> Charge:
    """An allreduce's reduce charge: outside an overlap block, of a K-tree or a chain to one
    root on every line, from the line priced once (`line_charges`, no traffic); else
    `Charge.comm` of `_reduce_traffic`."""
    if nbytes >= 1 and not ledger.in_overlap and (plan is not None or type(root) is int):
        num, lines = mesh.size(axis), mesh.size(axis.other)
        if plan is not None:
            return line_charge(mesh.device, "tree", num, plan, nbytes, lines)
        return line_charge(mesh.device, "chain", num, int(roots[0]), nbytes, lines)
    return Charge.comm(_reduce_traffic(mesh, axis, plan, roots, nbytes))


def _reduce_traffic(
    mesh: Mesh, axis: Axis, plan: TreePlan | None, roots: np.ndarray, nbytes: int
) -> Traffic:
    """The reduce's traffic: chains to `roots` (pipeline) or the K-tree `plan`."""
    if plan is None:
        owners = Owners.of_roots(mesh.size(axis), roots)
        return chain_traffic(mesh.device, mesh.shape, axis, owners, nbytes)
    return tree_traffic(mesh.device, mesh.shape, axis, plan, nbytes)


def reduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    ledger: Ledger,
    op: str,
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    root: int | np.ndarray = 0,
    fanouts: tuple[int, ...] | None = None,
    reduce_op: ReduceOp = ReduceOp.SUM,
    phase: int = 0,
    follows_stream: bool = False,
) -> tuple[torch.Tensor, int | np.ndarray]:
    """Reduce every line onto one core. Returns (the line result, keepdim over `axis`; the root).

    `follows_stream`: this reduce's stream enters the same chains right behind the previous
    one (consecutive steps of a systolic loop, e.g. dist-GEMM-T): every stage core forward-adds
    one stream after the other, so only the size term is exposed; the chain's latency
    (hops*alpha + stages*beta) is paid once, by the last reduce of the run.

    `pipeline`: chains from both ends to `root` (int or one per line); critical path: the far
    side's d hops and d-1 stages plus one size term (two tiles through an interior root's ramp).
    `ktree`: SPEC.md §10.5; `root` is ignored, the tree's root (its middle group's) is returned.
    `fanouts=None` picks the K = 2 tree of least modelled latency.
    """
    check_data(mesh, data)
    algorithm = as_enum(ReduceAlgorithm, algorithm)
    reduce_op = as_enum(ReduceOp, reduce_op)
    if algorithm is ReduceAlgorithm.RING:
        raise WaferError("the ring algorithm is an allreduce; use allreduce(...)")
    roots = line_roots(mesh, axis, root)
    result = combine_lines(data, axis.tensor_dim, reduce_op)
    if mesh.size(axis) == 1:
        return result, (0 if algorithm is ReduceAlgorithm.KTREE else root)
    plan = _reduce_plan(mesh, axis, algorithm, fanouts)
    if ledger.prices:
        traffic = _reduce_traffic(mesh, axis, plan, roots, bytes_per_core(mesh, data))
        ledger.charge(
            op, Charge.comm(traffic.streamed() if follows_stream else traffic), phase=phase
        )
    return result, (root if plan is None else plan.root)


def allreduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    ledger: Ledger,
    op: str,
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    root: int | np.ndarray | None = None,
    fanouts: tuple[int, ...] | None = None,
    reduce_op: ReduceOp = ReduceOp.SUM,
    broadcast_result: bool = True,
) -> torch.Tensor:
    """Reduce along `axis` and (by default) broadcast the result back to every core of the line.

    Pipeline: chain to `root` (default the far end, 0) then a multicast broadcast: 2(P-1) hops
    and P-2 stages with the root at an end, plus two size terms. K-tree: SPEC.md §10.5, the
    broadcast from the tree's root. Ring: `ring_allreduce.charge_ring_allreduce`. An axis of
    one core costs nothing.
    """
    algorithm = as_enum(ReduceAlgorithm, algorithm)
    reduce_op = as_enum(ReduceOp, reduce_op)
    check_data(mesh, data)
    if mesh.size(axis) == 1:
        return combine_lines(data, axis.tensor_dim, reduce_op)
    charge_allreduce(
        mesh,
        axis=axis,
        numel=math.prod(data.shape[2:]),
        ledger=ledger,
        op=op,
        algorithm=algorithm,
        root=root,
        fanouts=fanouts,
        broadcast_result=broadcast_result,
    )
    line = combine_lines(data, axis.tensor_dim, reduce_op)
    if algorithm is ReduceAlgorithm.RING or broadcast_result:
        return line.expand_as(data)
    return line


def charge_allreduce(
    mesh: Mesh,
    *,
    axis: Axis,
    numel: int,
    ledger: Ledger,
    op: str,
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
    root: int | np.ndarray | None = None,
    fanouts: tuple[int, ...] | None = None,
    broadcast_result: bool = True,
) -> None:
    """What `allreduce` of tiles of `numel` elements configures (routes) and charges, without
    data: `allreduce` charges through it, and an estimate that knows only the sizes calls it
    (`kernels.attention_cost`). An axis of one core costs nothing."""
    if mesh.size(axis) == 1:
        return
    algorithm = as_enum(ReduceAlgorithm, algorithm)
    if algorithm is ReduceAlgorithm.RING:
        charge_ring_allreduce(mesh, axis=axis, numel=numel, ledger=ledger, op=op)
        return
    root = 0 if root is None else root
    roots = line_roots(mesh, axis, root)
    plan = _reduce_plan(mesh, axis, algorithm, fanouts)
    nbytes = numel * mesh.device.storage_bytes
    if ledger.prices:
        ledger.charge(f"{op}.reduce", _reduce_charge(mesh, axis, plan, root, roots, nbytes, ledger))
    if broadcast_result:
        # the root's line result multicast to its line: every core ends with a copy of it
        top = root if plan is None else plan.root
        _charge_broadcast(mesh, axis, top, nbytes, ledger, f"{op}.bcast", 1)
