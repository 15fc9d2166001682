"""Communication primitives on the virtual mesh: shift, broadcast, reduce, allreduce, segments.

Each moves per-core tiles (`data`: (rows, cols, *tile)) exactly as the hardware would, as one
vectorised tensor operation over the whole mesh, configures its routes (SPEC.md §10.7) and
charges its cost to the caller's ledger through the message model (`traffic.py`). Plans (who
sends to whom, critical paths) depend only on shapes and are cached.
Legend: P cores along the axis; "line" = one row (axis X) or one column (axis Y).
"""

from __future__ import annotations

import enum
from functools import lru_cache

import numpy as np
import torch

from waferllm.device import Device
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis, RingKind, group_bounds, ring_successor
from waferllm.mesh.traffic import Traffic, line_traffic
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


def tile_bytes(mesh: Mesh, data: torch.Tensor) -> int:
    return int(np.prod(data.shape[2:], dtype=np.int64)) * mesh.device.storage_bytes


def _line_index(mesh: Mesh, axis: Axis, src_of: np.ndarray, data: torch.Tensor) -> torch.Tensor:
    """Gather along `axis` so that position i receives from src_of[i] (per line if 2D)."""
    dim = axis.tensor_dim
    if src_of.ndim == 1:
        return data.index_select(dim, torch.as_tensor(src_of, device=data.device))
    index = torch.as_tensor(src_of if axis is Axis.X else src_of.T, device=data.device)
    index = index.reshape(*index.shape, *([1] * (data.dim() - 2))).expand_as(data)
    return torch.gather(data, dim, index)


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
    dst = np.asarray(dst, dtype=np.int64)
    num = mesh.size(axis)
    src_of = np.empty_like(dst)
    if dst.ndim == 1:
        src_of[dst] = np.arange(num)
    else:
        np.put_along_axis(src_of, dst, np.broadcast_to(np.arange(num), dst.shape), axis=1)
    if routes is not None:
        mesh.routes.require(*routes)
    traffic = _shift_traffic(mesh.device, mesh.shape, axis, _key(dst), tile_bytes(mesh, data))
    ledger.charge(op, Charge.comm(traffic), phase=phase)
    return _line_index(mesh, axis, src_of, data)


def _key(array: np.ndarray) -> tuple:
    return (array.shape, array.tobytes())


def _unkey(key: tuple) -> np.ndarray:
    shape, raw = key
    return np.frombuffer(raw, dtype=np.int64).reshape(shape)


@lru_cache(maxsize=8192)
def _shift_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, dst_key: tuple, nbytes: int
) -> Traffic:
    dst = _unkey(dst_key)
    src = np.broadcast_to(np.arange(dst.shape[-1]), dst.shape)
    return line_traffic(
        device,
        shape,
        axis,
        src=src,
        dst=dst,
        nbytes=nbytes,
        critical_hops=int(np.abs(dst - src).max(initial=0)),
        critical_stages=0,
    )


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
    num = mesh.size(axis)
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
    """Multicast the root's tile to every core of its line; the root may differ per line."""
    num = mesh.size(axis)
    roots = np.broadcast_to(
        np.asarray(root, dtype=np.int64), (1,) if np.ndim(root) == 0 else np.shape(root)
    )
    mesh.routes.require(f"{axis.value}_bcast", BROADCAST_ROUTES)
    traffic = _broadcast_traffic(
        mesh.device, mesh.shape, axis, _key(roots.copy()), tile_bytes(mesh, data)
    )
    ledger.charge(op, Charge.comm(traffic), phase=phase)
    src_of = np.broadcast_to(roots[:, None], (roots.shape[0], num))
    if roots.shape[0] == 1:
        src_of = src_of[0]
    return _line_index(mesh, axis, np.ascontiguousarray(src_of), data)


@lru_cache(maxsize=8192)
def _broadcast_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, roots_key: tuple, nbytes: int
) -> Traffic:
    roots = _unkey(roots_key)
    num = shape[axis.tensor_dim]
    lines = roots.shape[0]
    # one multicast stream per side: root -> 0 and root -> P-1
    src = np.stack([roots, roots], axis=1)
    dst = np.stack([np.zeros_like(roots), np.full_like(roots, num - 1)], axis=1)
    sent = (dst != src).sum()
    pos = np.arange(num)[None, :]
    dist = np.abs(pos - roots[:, None])
    # every core passed by a stream also takes it in through its ramp (tx = {RAMP, next})
    ramp_in = np.where((dist > 0) & (pos > 0) & (pos < num - 1), float(nbytes), 0.0)
    hops = int(dist.max(initial=0))
    slack = device.hop_latency_cycles * float((dist.max(axis=1, keepdims=True) - dist).mean())
    return line_traffic(
        device,
        shape,
        axis,
        src=src,
        dst=dst,
        nbytes=nbytes,
        critical_hops=hops,
        critical_stages=0,
        ramp_in_extra=ramp_in if lines > 1 else ramp_in[:1],
        bytes_injected=int(sent * nbytes * (shape[axis.other.tensor_dim] if lines == 1 else 1)),
        mean_slack_cycles=slack,
    )


# ---- reduce and allreduce ---------------------------------------------------------------------
def _combine(data: torch.Tensor, dim: int, reduce_op: ReduceOp) -> torch.Tensor:
    if reduce_op is ReduceOp.SUM:
        return data.sum(dim=dim, keepdim=True)
    return data.amax(dim=dim, keepdim=True)


def _segment_chains(members: np.ndarray, root_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Segments of chains running from both ends of `members` into members[root_index]."""
    idx = np.arange(len(members))
    senders = idx[idx != root_index]
    receivers = np.where(senders < root_index, senders + 1, senders - 1)
    return members[senders], members[receivers]


@lru_cache(maxsize=4096)
def ktree_plan(
    num: int, fanouts: tuple[int, ...], alpha: float, beta: float
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """The K-tree's segments and critical path: (src, dst, root, hops, stages).

    Level 1 cuts the axis into ceil(P/b1) groups of consecutive cores (sizes within one); each
    group's root sits at offset g // 2; level k+1 groups the level-k roots the same way and
    connects them by pass-through routes. Pipelined forward-while-adding chains run towards each
    root from both sides. The critical message is found by a dynamic programme over members:
    a member departs at max(its own ready time, the upstream arrival) + beta if it received.
    """
    members = np.arange(num)
    ready = np.zeros(num)  # time a member's partial is complete at it
    received = np.zeros(num, dtype=bool)
    path_hops = np.zeros(num, dtype=np.int64)
    path_stages = np.zeros(num, dtype=np.int64)
    srcs: list[np.ndarray] = []
    dsts: list[np.ndarray] = []
    for fanout in fanouts:
        if len(members) == 1:
            break
        num_groups = -(-len(members) // fanout)
        starts, sizes = group_bounds(len(members), num_groups)
        roots = []
        for start, size in zip(starts.tolist(), sizes.tolist(), strict=True):
            group = members[start : start + size]
            r = size // 2
            s, d = _segment_chains(group, r)
            srcs.append(s)
            dsts.append(d)
            _chain_times(group, r, ready, received, path_hops, path_stages, alpha, beta)
            roots.append(group[r])
        members = np.array(roots)
    if len(members) != 1:
        raise ValueError(
            f"fan-outs {','.join(map(str, fanouts))} leave {len(members)} roots on an axis of "
            f"{num} cores: their product must be at least {num}"
        )
    root = int(members[0])
    src = np.concatenate(srcs) if srcs else np.zeros(0, dtype=np.int64)
    dst = np.concatenate(dsts) if dsts else np.zeros(0, dtype=np.int64)
    return src, dst, root, int(path_hops[root]), int(path_stages[root])


def _chain_times(
    group: np.ndarray,
    r: int,
    ready: np.ndarray,
    received: np.ndarray,
    path_hops: np.ndarray,
    path_stages: np.ndarray,
    alpha: float,
    beta: float,
) -> None:
    """Update the root's ready time, hops and stages from the two chains of one group."""
    root = group[r]
    best = (ready[root], path_hops[root], path_stages[root])
    for side in (group[:r], group[r + 1 :][::-1]):
        t, h, s = -1.0, 0, 0
        prev = None
        for m in side:
            if prev is None:  # chain end: departs once its own partial is ready
                t, h, s = ready[m], path_hops[m], path_stages[m]
                if received[m]:
                    t, s = t + beta, s + 1
            else:
                hop = abs(int(m) - int(prev))
                arrive = t + hop * alpha
                if ready[m] > arrive:
                    t, h, s = ready[m], path_hops[m], path_stages[m]
                else:
                    t, h = arrive, h + hop
                t, s = t + beta, s + 1
            prev = m
        if prev is not None:
            hop = abs(int(root) - int(prev))
            arrive = t + hop * alpha
            if arrive > best[0]:
                best = (arrive, h + hop, s)
            received[root] = True
    ready[root], path_hops[root], path_stages[root] = best


def _chain_plan(num: int, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pipeline chains: every non-root core sends one hop towards its line's root."""
    pos = np.broadcast_to(np.arange(num), (roots.shape[0], num))
    src = pos
    dst = np.where(pos < roots[:, None], pos + 1, np.where(pos > roots[:, None], pos - 1, pos))
    far = np.maximum(roots, num - 1 - roots)
    hops = int(far.max(initial=0))
    return src, dst, hops, max(hops - 1, 0)


@lru_cache(maxsize=8192)
def _reduce_traffic(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    algorithm: ReduceAlgorithm,
    fanouts: tuple[int, ...],
    roots_key: tuple,
    nbytes: int,
) -> tuple[Traffic, int]:
    """(traffic of the reduce, root) for the chain and tree algorithms."""
    num = shape[axis.tensor_dim]
    if algorithm is ReduceAlgorithm.KTREE:
        src, dst, root, hops, stages = ktree_plan(
            num, fanouts, device.hop_latency_cycles, device.stage_latency_cycles
        )
        src, dst = src[None, :], dst[None, :]
    else:
        roots = _unkey(roots_key)
        src, dst, hops, stages = _chain_plan(num, roots)
        root = int(roots[0])
    traffic = line_traffic(
        device,
        shape,
        axis,
        src=src,
        dst=dst,
        nbytes=nbytes,
        critical_hops=hops,
        critical_stages=stages,
    )
    return traffic, root


def resolve_fanouts(num: int, fanouts: tuple[int, ...] | None) -> tuple[int, ...]:
    from waferllm.mesh.geometry import default_fanouts

    if fanouts is None:
        return default_fanouts(num)
    if any(b < 1 for b in fanouts):
        raise ValueError(f"fan-outs must be positive, got {','.join(map(str, fanouts))}")
    return tuple(fanouts)


def _routes_for(mesh: Mesh, axis: Axis, algorithm: ReduceAlgorithm, levels: int) -> None:
    a = axis.value
    if algorithm is ReduceAlgorithm.RING:
        mesh.routes.require(f"{a}_ring_interleaved_fwd", RING_ROUTES)
        return
    mesh.routes.require(f"{a}_chain", CHAIN_ROUTES)
    for level in range(2, levels + 1):
        mesh.routes.require(f"{a}_tree_level{level}", TREE_LEVEL_ROUTES)


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
) -> tuple[torch.Tensor, int | np.ndarray]:
    """Reduce every line onto one core. Returns (the line result, keepdim over `axis`; the root).

    `pipeline`: chains from both ends to `root` (int or one per line); critical path: the far
    side's d hops and d-1 stages. `ktree`: the root is the tree's (middle group's root).
    """
    num = mesh.size(axis)
    nbytes = tile_bytes(mesh, data)
    result = _combine(data, axis.tensor_dim, reduce_op)
    if num == 1:
        return result, 0
    if algorithm is ReduceAlgorithm.RING:
        raise ValueError("the ring algorithm is an allreduce; use allreduce(...)")
    tree = resolve_fanouts(num, fanouts) if algorithm is ReduceAlgorithm.KTREE else ()
    roots = np.atleast_1d(np.asarray(root, dtype=np.int64))
    _routes_for(mesh, axis, algorithm, len(tree))
    traffic, tree_root = _reduce_traffic(
        mesh.device, mesh.shape, axis, algorithm, tree, _key(roots), nbytes
    )
    ledger.charge(op, Charge.comm(traffic), phase=phase)
    return result, (tree_root if algorithm is ReduceAlgorithm.KTREE else root)


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
    and P-2 stages with the root at an end, plus two size terms. K-tree: SPEC.md §10.5.
    Ring: P-1 reduce-scatter steps (2 hops, 1 stage, n/P bytes) then P-1 allgather steps.
    """
    num = mesh.size(axis)
    if num == 1:
        return _combine(data, axis.tensor_dim, reduce_op)
    if algorithm is ReduceAlgorithm.RING:
        return _ring_allreduce(mesh, data, axis=axis, ledger=ledger, op=op, reduce_op=reduce_op)
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
    expanded = line.expand_as(data)
    if mesh.mode is Mode.FUNCTIONAL:
        expanded = expanded.contiguous()
    return broadcast(mesh, expanded, axis=axis, root=top, ledger=ledger, op=f"{op}.bcast", phase=1)


def _ring_allreduce(
    mesh: Mesh, data: torch.Tensor, *, axis: Axis, ledger: Ledger, op: str, reduce_op: ReduceOp
) -> torch.Tensor:
    num = mesh.size(axis)
    _routes_for(mesh, axis, ReduceAlgorithm.RING, 1)
    chunk = -(-tile_bytes(mesh, data) // num)
    steps = num - 1
    for name, stages in (("reduce_scatter", 1), ("allgather", 0)):
        traffic = _ring_step_traffic(mesh.device, mesh.shape, axis, chunk, stages)
        with ledger.repeat(steps):
            ledger.charge(f"{op}.{name}", Charge.comm(traffic))
    return _combine(data, axis.tensor_dim, reduce_op).expand_as(data)


@lru_cache(maxsize=4096)
def _ring_step_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, nbytes: int, stages: int
) -> Traffic:
    num = shape[axis.tensor_dim]
    dst = ring_successor(num)
    src = np.arange(num)
    return line_traffic(
        device,
        shape,
        axis,
        src=src,
        dst=dst,
        nbytes=nbytes,
        critical_hops=int(np.abs(dst - src).max()),
        critical_stages=stages,
    )


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
    group side d: d hops and d-1 stages, plus the broadcast's d' hops.
    """
    num = mesh.size(axis)
    if sum(group_sizes) != num:
        raise ValueError(f"group sizes {group_sizes} do not cover the {num} cores of the axis")
    dim = axis.tensor_dim
    sizes = list(group_sizes)
    parts = torch.split(data, sizes, dim=dim)
    combined = [_combine(p, dim, reduce_op).expand_as(p) for p in parts]
    result = torch.cat(combined, dim=dim)
    if max(sizes) == 1:
        return result
    mesh.routes.require(f"{axis.value}_chain", CHAIN_ROUTES)
    reduce_t, bcast_t = _segmented_traffic(
        mesh.device, mesh.shape, axis, tuple(sizes), tile_bytes(mesh, data)
    )
    ledger.charge(f"{op}.reduce", Charge.comm(reduce_t))
    if broadcast_result:
        mesh.routes.require(f"{axis.value}_bcast", BROADCAST_ROUTES)
        ledger.charge(f"{op}.bcast", Charge.comm(bcast_t), phase=1)
    return result


@lru_cache(maxsize=4096)
def _segmented_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, sizes: tuple[int, ...], nbytes: int
) -> tuple[Traffic, Traffic]:
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    srcs, dsts = [], []
    far_reduce = far_bcast = 0
    b_src, b_dst = [], []
    for start, size in zip(starts.tolist(), sizes, strict=True):
        group = np.arange(start, start + size)
        r = size // 2
        s, d = _segment_chains(group, r)
        srcs.append(s)
        dsts.append(d)
        far_reduce = max(far_reduce, r, size - 1 - r)
        for end in (group[0], group[-1]):
            if end != group[r]:
                b_src.append(group[r])
                b_dst.append(end)
    reduce_t = line_traffic(
        device,
        shape,
        axis,
        src=np.concatenate(srcs),
        dst=np.concatenate(dsts),
        nbytes=nbytes,
        critical_hops=far_reduce,
        critical_stages=max(far_reduce - 1, 0),
    )
    far_bcast = far_reduce
    bcast_t = line_traffic(
        device,
        shape,
        axis,
        src=np.array(b_src),
        dst=np.array(b_dst),
        nbytes=nbytes,
        critical_hops=far_bcast,
        critical_stages=0,
    )
    return reduce_t, bcast_t
