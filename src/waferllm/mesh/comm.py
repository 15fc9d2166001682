"""Communication primitives on the virtual mesh: shift, broadcast, reduce, allreduce, segments.

Each moves per-core tiles (`data`: (rows, cols, *tile)) exactly as the hardware would, as one
vectorised tensor operation over the whole mesh, configures its routes (SPEC.md §10.7) and
charges its cost to the caller's ledger (unless the ledger does not price: `Ledger.prices`).
Who sends what to whom is in `patterns` (cached on shapes), the K-tree's plan in `ktree`, the
message model in `traffic`. Index tensors and validated roots are cached: a decode step makes
hundreds of these calls on small tiles, where per-call host work, not data, dominates.
Legend: P cores along the axis; "line" = one row (axis X) or one column (axis Y).
"""

from __future__ import annotations

import dataclasses
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
from waferllm.mesh.patterns import (
    ArrayKey,
    Owners,
    chain_traffic,
    key,
    multicast_traffic,
    permutation_traffic,
    ring_step_traffic,
    tail_shift_traffic,
    tree_traffic,
    unkey,
)
from waferllm.mesh.traffic import Traffic
from waferllm.mesh.virtual import Mesh, Mode


class ReduceAlgorithm(enum.StrEnum):
    PIPELINE = "pipeline"  # chains towards the root (Cerebras' default allreduce)
    RING = "ring"  # reduce-scatter then allgather on the interleaved ring
    KTREE = "ktree"  # WaferLLM's K-tree (SPEC.md §10.5)


class ReduceOp(enum.StrEnum):
    SUM = "sum"
    MAX = "max"


# Route sets (colour entries per core) of SPEC.md §10.7 and the code notes §1.4, §2.5.
RING_ROUTES = 3  # send, receive, transit
CHAIN_ROUTES = 4  # two alternating colours per direction
BROADCAST_ROUTES = 2  # one multicast colour per direction
TREE_LEVEL_ROUTES = 4  # each level above the first


def _bytes_per_core(mesh: Mesh, data: torch.Tensor) -> int:
    """Bytes of one core's tile of `data` in the storage dtype."""
    return math.prod(data.shape[2:]) * mesh.device.storage_bytes


_E = TypeVar("_E", bound=enum.StrEnum)


def _enum(cls: type[_E], value: object) -> _E:
    """`cls(value)` without the enum machinery when `value` already is a member."""
    return value if type(value) is cls else cls(value)  # type: ignore[return-value,arg-type]


@lru_cache(maxsize=1024)
def _index_tensor(src_key: ArrayKey, transpose: bool, device: str) -> torch.Tensor:
    """The index tensor of a cached source map (callers only read it)."""
    src_of = unkey(src_key)
    return torch.tensor(src_of.T if transpose else src_of, device=device)


def _line_index(mesh: Mesh, axis: Axis, src_of: np.ndarray, data: torch.Tensor) -> torch.Tensor:
    """Gather along `axis` so that position i receives from src_of[i] (per line if 2D)."""
    dim = axis.tensor_dim
    device = data.device.type
    if src_of.ndim == 1:
        return data.index_select(dim, _index_tensor(key(src_of), False, device))
    index = _index_tensor(key(src_of), axis is not Axis.X, device)
    index = index.reshape(*index.shape, *([1] * (data.dim() - 2))).expand_as(data)
    return torch.gather(data, dim, index)


def _from_line(data: torch.Tensor, axis: Axis, source: int) -> torch.Tensor:
    """Every position of every line receives line position `source`'s tile (a new tensor)."""
    return data.narrow(axis.tensor_dim, source, 1).expand_as(data).contiguous()


def _check_data(mesh: Mesh, data: torch.Tensor) -> None:
    if tuple(data.shape[:2]) != mesh.shape:
        raise WaferError(
            f"per-core data of shape {tuple(data.shape)} does not start with the mesh's "
            f"{mesh.rows}x{mesh.cols} cores"
        )


@lru_cache(maxsize=4096)
def _single_root(root: int) -> np.ndarray:
    roots = np.array([root], dtype=np.int64)
    roots.setflags(write=False)
    return roots


def _line_roots(mesh: Mesh, axis: Axis, root: int | np.ndarray) -> np.ndarray:
    """`root` as an (1,) array (every line alike) or (L,) (one root per line), checked."""
    num = mesh.size(axis)
    if type(root) is int and 0 <= root < num:  # the common case, cached
        return _single_root(root)
    roots = np.asarray(root)
    lines = mesh.size(axis.other)
    if roots.dtype.kind not in "iu" or roots.ndim > 1:
        raise WaferError(f"a root is an int or one int per line, got {root!r}")
    if roots.ndim == 1 and roots.shape[0] not in (1, lines):
        raise WaferError(
            f"per-line roots along axis {axis.value} need one root for each of the {lines} "
            f"lines, got {roots.shape[0]}"
        )
    roots = np.atleast_1d(roots).astype(np.int64)
    if roots.min() < 0 or roots.max() >= num:
        raise WaferError(f"root out of range 0..{num - 1} along axis {axis.value}: {root!r}")
    return roots


def _permutation(mesh: Mesh, axis: Axis, dst: np.ndarray) -> np.ndarray:
    """`dst` checked to be a permutation of the line's cores, (P,) or (lines, P)."""
    dst = np.asarray(dst)
    lines, num = mesh.size(axis.other), mesh.size(axis)
    if dst.dtype.kind not in "iu" or dst.shape not in ((num,), (lines, num)):
        raise WaferError(
            f"a shift along axis {axis.value} needs integer destinations shaped ({num},) or "
            f"({lines}, {num}), got {dst.dtype} {dst.shape}"
        )
    dst = dst.astype(np.int64)
    if not (np.sort(dst, axis=-1) == np.arange(num)).all():
        raise WaferError(f"shift destinations must be a permutation of 0..{num - 1}: {dst}")
    return dst


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
    _check_data(mesh, data)
    dst = _permutation(mesh, axis, dst)
    src_of = np.empty_like(dst)
    np.put_along_axis(src_of, dst, np.broadcast_to(np.arange(dst.shape[-1]), dst.shape), axis=-1)
    if routes is not None:
        mesh.routes.require(*routes)
    if ledger.prices:
        traffic = permutation_traffic(
            mesh.device, mesh.shape, axis, key(dst), _bytes_per_core(mesh, data)
        )
        ledger.charge(op, Charge.comm(traffic), phase=phase)
    return _line_index(mesh, axis, src_of, data)


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
    num, kind = mesh.size(axis), _enum(RingKind, kind)
    dst = ring_successor(num, kind, steps)
    name = route_name or f"{axis.value}_ring_{kind.value}_{'fwd' if steps > 0 else 'rev'}"
    return shift(
        mesh,
        data,
        axis=axis,
        dst=dst,
        ledger=ledger,
        op=op,
        routes=(name, RING_ROUTES),
        phase=phase,
    )


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
    _check_data(mesh, data)
    roots = _line_roots(mesh, axis, root)
    num = mesh.size(axis)
    if num == 1:
        return data.clone()
    _charge_broadcast(mesh, axis, roots, data, ledger, op, phase)
    if len(roots) == 1:
        return _from_line(data, axis, int(roots[0]))
    return _line_index(mesh, axis, Owners.of_roots(num, roots).array(), data)


def _charge_broadcast(
    mesh: Mesh,
    axis: Axis,
    root: int | np.ndarray,
    data: torch.Tensor,
    ledger: Ledger,
    op: str,
    phase: int,
) -> None:
    """Configure the routes of a broadcast of `data`'s tiles from a valid `root` (on an axis
    of 2+ cores) and charge its multicast."""
    mesh.routes.require(_BCAST_ROUTES[axis], BROADCAST_ROUTES)
    if ledger.prices:
        owners = Owners.of_roots(mesh.size(axis), _line_roots(mesh, axis, root))
        traffic = multicast_traffic(
            mesh.device, mesh.shape, axis, owners, _bytes_per_core(mesh, data)
        )
        ledger.charge(op, Charge.comm(traffic), phase=phase)


_BCAST_ROUTES = {axis: f"{axis.value}_bcast" for axis in Axis}


# ---- reduce and allreduce ---------------------------------------------------------------------
def _combine(data: torch.Tensor, dim: int, reduce_op: ReduceOp) -> torch.Tensor:
    if reduce_op is ReduceOp.SUM:
        return data.sum(dim=dim, keepdim=True)
    return data.amax(dim=dim, keepdim=True)


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
    _check_data(mesh, data)
    algorithm = _enum(ReduceAlgorithm, algorithm)
    reduce_op = _enum(ReduceOp, reduce_op)
    if algorithm is ReduceAlgorithm.RING:
        raise WaferError("the ring algorithm is an allreduce; use allreduce(...)")
    roots = _line_roots(mesh, axis, root)
    result = _combine(data, axis.tensor_dim, reduce_op)
    if mesh.size(axis) == 1:
        return result, (0 if algorithm is ReduceAlgorithm.KTREE else root)
    plan = _reduce_plan(mesh, axis, algorithm, fanouts)
    if ledger.prices:
        traffic = _reduce_traffic(mesh, axis, plan, roots, _bytes_per_core(mesh, data))
        ledger.charge(
            op, Charge.comm(_streamed(traffic) if follows_stream else traffic), phase=phase
        )
    return result, (root if plan is None else plan.root)


def _streamed(traffic: Traffic) -> Traffic:
    """A stream that enters its chains right behind the previous one: the chains' latency is
    already being paid by the stream ahead (see `reduce`'s `follows_stream`)."""
    return dataclasses.replace(traffic, critical_hops=0, critical_stages=0)


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
    broadcast from the tree's root. Ring: `_ring_allreduce`. An axis of one core costs nothing.
    """
    num = mesh.size(axis)
    algorithm = _enum(ReduceAlgorithm, algorithm)
    reduce_op = _enum(ReduceOp, reduce_op)
    if num == 1:
        _check_data(mesh, data)
        return _combine(data, axis.tensor_dim, reduce_op)
    if algorithm is ReduceAlgorithm.RING:
        return _ring_allreduce(mesh, data, axis=axis, ledger=ledger, op=op, reduce_op=reduce_op)
    if not ledger.prices:  # the same checks, routes and data as below, nothing to price
        _check_data(mesh, data)
        _line_roots(mesh, axis, 0 if root is None else root)
        _reduce_plan(mesh, axis, algorithm, fanouts)
        line = _combine(data, axis.tensor_dim, reduce_op)
        if not broadcast_result:
            return line
        mesh.routes.require(_BCAST_ROUTES[axis], BROADCAST_ROUTES)
        return line.expand_as(data).contiguous()
    line, top = reduce(
        mesh,
        data,
        axis=axis,
        ledger=ledger,
        op=f"{op}.reduce",
        algorithm=algorithm,
        root=0 if root is None else root,
        fanouts=fanouts,
        reduce_op=reduce_op,
    )
    if not broadcast_result:
        return line
    # the root's line result multicast to its line: every core ends with a copy of `line`
    _charge_broadcast(mesh, axis, top, data, ledger, f"{op}.bcast", 1)
    return line.expand_as(data).contiguous()


def _ring_allreduce(
    mesh: Mesh, data: torch.Tensor, *, axis: Axis, ledger: Ledger, op: str, reduce_op: ReduceOp
) -> torch.Tensor:
    """Reduce-scatter then allgather on the interleaved ring, in chunks of ceil(n/P) elements.

    2(P-1) steps of at most 2 hops and one chunk each. Every step's receiver processes (adds or
    stores) and re-sends in the next step, except after the last: 2P-3 stages in all.
    """
    _check_data(mesh, data)
    num = mesh.size(axis)
    mesh.routes.require(f"{axis.value}_ring_interleaved_fwd", RING_ROUTES)
    numel = math.prod(data.shape[2:])
    chunk = -(-numel // num) * mesh.device.storage_bytes
    steps = [
        ("reduce_scatter", num - 1, 1),
        ("allgather", num - 2, 1),
        ("allgather.last", 1, 0),
    ]
    phase = 0
    for name, count, stages in steps if ledger.prices else ():
        traffic = ring_step_traffic(mesh.device, mesh.shape, axis, chunk, stages)
        phase = _charge_steps(ledger, f"{op}.{name}", Charge.comm(traffic), count, phase)
    out = _combine(data, axis.tensor_dim, reduce_op).expand_as(data)
    return out.contiguous() if mesh.mode is Mode.FUNCTIONAL else out


def _charge_steps(ledger: Ledger, op: str, charge: Charge, count: int, phase: int) -> int:
    """`count` identical sequential steps: one record with a count, or inside an overlap
    block one network phase each. Returns the next free phase."""
    if count <= 0:
        return phase
    if ledger.in_overlap:
        for i in range(count):
            ledger.charge(op, charge, phase=phase + i)
    else:
        with ledger.repeat(count):
            ledger.charge(op, charge)
    return phase + count


# ---- segmented reduce --------------------------------------------------------------------------
def segmented_allreduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    group_sizes: tuple[int, ...],
    ledger: Ledger,
    op: str,
    reduce_op: ReduceOp = ReduceOp.SUM,
    broadcast_result: bool = True,
) -> torch.Tensor:
    """Reduce over consecutive groups of cores of every line (sizes `group_sizes`, summing to
    P), each onto its group root at offset g // 2, then multicast back within the group.

    Uses the axis's chain colours (static routes serve any root). Critical path: the longest
    group side d: d hops and d-1 stages, plus the broadcast's d hops. With
    `broadcast_result=False` the result is meaningful at the group roots only.
    """
    _check_data(mesh, data)
    num, reduce_op = mesh.size(axis), _enum(ReduceOp, reduce_op)
    sizes = tuple(int(g) for g in group_sizes)
    if any(g < 1 for g in sizes) or sum(sizes) != num:
        raise WaferError(
            f"group sizes {group_sizes} must be positive and cover the {num} cores of axis "
            f"{axis.value}"
        )
    dim = axis.tensor_dim
    parts = torch.split(data, list(sizes), dim=dim)
    result = torch.cat([_combine(p, dim, reduce_op).expand_as(p) for p in parts], dim=dim)
    if max(sizes) == 1:
        return result
    mesh.routes.require(f"{axis.value}_chain", CHAIN_ROUTES)
    if broadcast_result:
        mesh.routes.require(f"{axis.value}_bcast", BROADCAST_ROUTES)
    if not ledger.prices:
        return result
    owners, nbytes = Owners.of_groups(sizes), _bytes_per_core(mesh, data)
    ledger.charge(
        f"{op}.reduce", Charge.comm(chain_traffic(mesh.device, mesh.shape, axis, owners, nbytes))
    )
    if broadcast_result:
        bcast = multicast_traffic(mesh.device, mesh.shape, axis, owners, nbytes)
        ledger.charge(f"{op}.bcast", Charge.comm(bcast), phase=1)
    return result


# ---- charges of data the caller moves by index ------------------------------------------------
# Kernels that keep a large buffer in place and move its blocks by indexing (prefill attention's
# owned score blocks, the KV cache's slots) still pay for the hardware's messages: these
# primitives configure the routes and charge the traffic; the caller moves the data.
def charge_reduce_to_owners(
    mesh: Mesh,
    *,
    axis: Axis,
    owner: np.ndarray,
    nbytes: int,
    ledger: Ledger,
    op: str,
    follows_stream: bool = False,
) -> None:
    """Forward-while-adding chains along `axis`: every core's `nbytes` partial goes to
    owner[line, i] (an (L, P) or (P,) map; consecutive cores with one owner form a group, the
    owner may differ per line), as `reduce(algorithm=PIPELINE)` with a root per group.
    Critical path: the farthest core's d hops and d-1 stages plus one size term; with
    `follows_stream` (the stream right behind the previous one, see `reduce`) only the size
    term. Routes: the axis's chain colours (static routes serve any root)."""
    mesh.routes.require(f"{axis.value}_chain", CHAIN_ROUTES)
    if not ledger.prices:
        return
    traffic = chain_traffic(mesh.device, mesh.shape, axis, Owners.of_map(owner), nbytes)
    if follows_stream:
        traffic = _streamed(traffic)
    ledger.charge(op, Charge.comm(traffic))


def charge_multicast(
    mesh: Mesh, *, axis: Axis, owner: np.ndarray, nbytes: int, ledger: Ledger, op: str
) -> None:
    """Every owner multicasts `nbytes` to the consecutive cores that name it in `owner`
    ((L, P) or (P,)), as `broadcast` with a root per group: the farthest core's hops, no
    stages, one size term (two through an interior owner's ramp). Routes: the axis's
    broadcast colours."""
    mesh.routes.require(_BCAST_ROUTES[axis], BROADCAST_ROUTES)
    if ledger.prices:
        traffic = multicast_traffic(mesh.device, mesh.shape, axis, Owners.of_map(owner), nbytes)
        ledger.charge(op, Charge.comm(traffic))


def charge_tail_shift(
    mesh: Mesh, *, axis: Axis, first: int, nbytes: int, ledger: Ledger, op: str
) -> None:
    """Cores first..P-1 of every line each pass `nbytes` one hop towards index 0 at the same
    time (the shift-based KV cache's append, SPEC.md §10.9): alpha + nbytes/W. Routes: none
    new (along Y, the K-tree's first-level upward chain colours, SPEC.md §10.7)."""
    if ledger.prices:
        traffic = tail_shift_traffic(mesh.device, mesh.shape, axis, first, nbytes)
        ledger.charge(op, Charge.comm(traffic))
