"""Line multicasts from many roots under the route budget: SUMMA's and allgather-GEMM's
broadcasts (SPEC.md §3 "R", PAPER.md §3.1).

A multicast from root r needs its own colour on every core of the line (the root injects,
everyone else forwards and delivers), so serving every root directly takes P routes per core.
When the free routes cannot hold them, the line is cut into segments of s consecutive cores,
each configuring one colour per core of its segment plus one to receive from each
neighbouring segment (s + 2 routes): a stream is multicast directly inside a segment and
relayed by the first core it reaches in the next segment, which receives, processes and
re-sends it (beta per stage). s = P is the direct case; s = 1 relays at every core.
Legend: P cores along the axis; s the segment length.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch

from waferllm.device import Device
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.traffic import Traffic, line_traffic, orient
from waferllm.mesh.virtual import Mesh

NEIGHBOUR_SEGMENT_ROUTES = 2  # receive from the segment on each side


@dataclasses.dataclass(frozen=True)
class MulticastPlan:
    """How one axis's multicasts are routed: segment length and routes per core."""

    axis: Axis
    num: int
    segment: int

    @property
    def direct(self) -> bool:
        return self.segment >= self.num

    @property
    def routes_per_core(self) -> int:
        return self.num if self.direct else self.segment + NEIGHBOUR_SEGMENT_ROUTES


def plan_multicasts(mesh: Mesh, axes: tuple[Axis, ...], *, name: str) -> dict[Axis, MulticastPlan]:
    """Direct routes for every root when they fit beside the routes already configured;
    otherwise split the free routes evenly between the axes and relay between segments.
    Configures the routes (route set `{name}_{axis}`)."""
    live = [axis for axis in axes if mesh.size(axis) > 1]
    free = mesh.device.routes_per_core - mesh.routes.routes_per_core
    direct = sum(mesh.size(axis) for axis in live) <= free
    plans = {}
    for axis in axes:
        num = mesh.size(axis)
        if direct or num == 1:
            segment = num
        else:
            budget = free // len(live)
            segment = num if num <= budget else max(1, budget - NEIGHBOUR_SEGMENT_ROUTES)
        plan = MulticastPlan(axis, num, segment)
        if num > 1:
            mesh.routes.require(f"{name}_{axis.value}", plan.routes_per_core)
        plans[axis] = plan
    return plans


@lru_cache(maxsize=8192)
def relayed_multicast_traffic(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    *,
    roots: tuple[int, ...],
    segment: int,
    nbytes: int,
) -> Traffic:
    """Every root in `roots` multicasts `nbytes` to its whole line at the same time.

    Per root, one stream runs to each end of the line; the root injects its tile once (its
    router multicasts both ways) and every core a stream passes delivers it through its ramp.
    A relay (the first core of each segment the stream enters, except a line end) also sends
    it out through its ramp again. Critical path: the worst stream's hops * alpha + relays *
    beta.
    """
    num = shape[axis.tensor_dim]
    root = np.asarray(roots, dtype=np.int64)
    pos = np.arange(num)
    seg_start = pos % segment == 0
    seg_end = (pos + 1) % segment == 0
    # relays crossed eastward from r: segment starts in (r, P-1); westward: segment ends in (0, r)
    east_relays = np.concatenate([[0], np.cumsum(seg_start & (pos < num - 1))])
    west_relays = np.concatenate([[0], np.cumsum(seg_end & (pos > 0))])
    stages_east = east_relays[num] - east_relays[root + 1]
    stages_west = west_relays[root]
    d = device
    latency_east = (num - 1 - root) * d.hop_latency_cycles + stages_east * d.stage_latency_cycles
    latency_west = root * d.hop_latency_cycles + stages_west * d.stage_latency_cycles
    worst_east, worst_west = int(np.argmax(latency_east)), int(np.argmax(latency_west))
    if latency_east[worst_east] >= latency_west[worst_west]:
        hops, stages = num - 1 - int(root[worst_east]), int(stages_east[worst_east])
    else:
        hops, stages = int(root[worst_west]), int(stages_west[worst_west])
    # A root injects its tile once (its router multicasts both ways); every core a stream
    # passes delivers it; a relay also sends it out again.
    sorted_roots = np.sort(root)
    west_of = np.searchsorted(sorted_roots, pos)  # roots west of each core
    east_of = len(root) - np.searchsorted(sorted_roots, pos, side="right")
    ramp_in = (west_of + east_of) * float(nbytes)
    ramp_out = np.bincount(root, minlength=num) + (seg_start & (pos < num - 1)) * west_of
    ramp_out = (ramp_out + (seg_end & (pos > 0)) * east_of) * float(nbytes)
    src = np.concatenate([root[root > 0], root[root < num - 1]])
    dst = np.concatenate(
        [np.zeros(int((root > 0).sum()), np.int64), np.full(int((root < num - 1).sum()), num - 1)]
    )
    return line_traffic(
        device,
        shape,
        axis,
        src=src,
        dst=dst,
        nbytes=nbytes,
        critical_hops=hops,
        critical_stages=stages,
        bytes_injected=len(root) * nbytes * shape[axis.other.tensor_dim],
        loads=(_stream_links(axis, root, num, float(nbytes)), ramp_out[None, :], ramp_in[None, :]),
    )


@lru_cache(maxsize=4)  # (P, P) arrays per entry; SUMMA asks for one X and one Y at a time
def one_root_multicasts(
    device: Device, shape: tuple[int, int], axis: Axis, *, segment: int, nbytes: int
) -> tuple[Traffic, ...]:
    """`relayed_multicast_traffic` of `roots=(r,)` for every r of the line at once (SUMMA's
    steps, one root each), element r. One root: every other core takes its tile in, the root
    and the relays it crosses send one out, link i carries it east for r <= i and west for
    r > i; the critical stream is the longer one (hops * alpha + relays * beta)."""
    num, other = shape[axis.tensor_dim], shape[axis.other.tensor_dim]
    root, pos = np.arange(num), np.arange(num)
    relays_east = (pos % segment == 0) & (pos < num - 1)  # segment starts a stream enters
    relays_west = ((pos + 1) % segment == 0) & (pos > 0)
    east_relays = np.concatenate([[0], np.cumsum(relays_east)])
    west_relays = np.concatenate([[0], np.cumsum(relays_west)])
    stages_east, stages_west = east_relays[num] - east_relays[root + 1], west_relays[root]
    d = device
    latency_east = (num - 1 - root) * d.hop_latency_cycles + stages_east * d.stage_latency_cycles
    latency_west = root * d.hop_latency_cycles + stages_west * d.stage_latency_cycles
    east_wins = latency_east >= latency_west
    hops = np.where(east_wins, num - 1 - root, root)
    stages = np.where(east_wins, stages_east, stages_west)
    west_of, east_of = root[:, None] < pos, root[:, None] > pos  # [r, p]: r west of p
    size = float(nbytes)
    ramp_in = (west_of.astype(np.int64) + east_of) * size
    ramp_out = ((root[:, None] == pos) + relays_east * west_of + relays_west * east_of) * size
    link = np.arange(num - 1)
    east_links = (link >= root[:, None]) * size  # [r, i]
    west_links = (link < root[:, None]) * size
    out = []
    for r in range(num):
        links: dict[tuple[Axis, int], np.ndarray] = {}
        if r < num - 1 and size > 0:
            links[(axis, +1)] = east_links[r][None, :]
        if r > 0 and size > 0:
            links[(axis, -1)] = west_links[r][None, :]
        out.append(
            Traffic(
                device=device,
                shape=shape,
                critical_hops=int(hops[r]),
                critical_stages=int(stages[r]),
                bytes_injected=nbytes * other,
                link_byte_hops=nbytes * ((r if r > 0 else 0) + (num - 1 - r)) * other,
                links=links,
                ramp_in=orient(axis, ramp_in[r][None, :]),
                ramp_out=orient(axis, ramp_out[r][None, :]),
            )
        )
    return tuple(out)


def _stream_links(
    axis: Axis, root: np.ndarray, num: int, nbytes: float
) -> dict[tuple[Axis, int], np.ndarray]:
    """Link loads of the streams from every root to both line ends (what `line_traffic`
    sums segment by segment): link i carries one stream east per root <= i and one west per
    root > i, each `nbytes`."""
    link = np.arange(num - 1)
    east = np.searchsorted(np.sort(root[root < num - 1]), link, side="right")
    west = len(root[root > 0]) - np.searchsorted(np.sort(root[root > 0]), link, side="right")
    links: dict[tuple[Axis, int], np.ndarray] = {}
    if east.any() and nbytes > 0:
        links[(axis, +1)] = (east * nbytes)[None, :]
    if west.any() and nbytes > 0:
        links[(axis, -1)] = (west * nbytes)[None, :]
    return links


def _both_axes(x: Traffic, y: Traffic) -> Traffic:
    """An X and a Y multicast at the same time, each alike in every line. They use different
    links, and the busiest ramp carries the sum of both busiest ramps (one's loads vary only
    along X, the other's only along Y), which is all the message model reads of the ramps:
    kept as (1, 1) arrays instead of (rows, cols) ones, so SUMMA's P steps stay cheap."""
    slow = x if x.latency_term_cycles >= y.latency_term_cycles else y
    return Traffic(
        device=x.device,
        shape=x.shape,
        critical_hops=slow.critical_hops,
        critical_stages=slow.critical_stages,
        bytes_injected=x.bytes_injected + y.bytes_injected,
        link_byte_hops=x.link_byte_hops + y.link_byte_hops,
        links={**x.links, **y.links},
        ramp_in=np.array([[x.ramp_in.max() + y.ramp_in.max()]]),
        ramp_out=np.array([[x.ramp_out.max() + y.ramp_out.max()]]),
    )


def cross_multicast(
    mesh: Mesh,
    a_data: torch.Tensor,
    b_data: torch.Tensor,
    *,
    plans: dict[Axis, MulticastPlan],
    roots: tuple[int, int],
    ledger: Ledger,
    op: str,
    phase: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SUMMA's step: column roots[0] multicasts a_data along X while row roots[1] multicasts
    b_data along Y; one communication charge. Returns the tiles every core receives."""
    empty = Traffic(device=mesh.device, shape=mesh.shape)
    parts = []
    for axis, data, root in ((Axis.X, a_data, roots[0]), (Axis.Y, b_data, roots[1])):
        plan = plans[axis]
        nbytes = int(np.prod(data.shape[2:], dtype=np.int64)) * mesh.device.storage_bytes
        if plan.num == 1:
            parts.append(empty)
            continue
        steps = one_root_multicasts(
            mesh.device, mesh.shape, axis, segment=plan.segment, nbytes=nbytes
        )
        parts.append(steps[root])
    ledger.charge(op, Charge.comm(_both_axes(*parts)), phase=phase)
    a_out = a_data.narrow(Axis.X.tensor_dim, roots[0], 1).expand_as(a_data)
    b_out = b_data.narrow(Axis.Y.tensor_dim, roots[1], 1).expand_as(b_data)
    return a_out, b_out


def allgather(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    plan: MulticastPlan,
    ledger: Ledger,
    op: str,
    phase: int = 0,
) -> torch.Tensor:
    """Every core multicasts its tile (rows, cols, *t, p, q) to its line at once.

    Returns (rows, cols, *t, p, P*q) for axis X (tiles joined along the last dim, in core
    order) or (rows, cols, *t, P*p, q) for axis Y, the same on every core of a line.
    """
    axis = plan.axis
    num = plan.num
    nbytes = int(np.prod(data.shape[2:], dtype=np.int64)) * mesh.device.storage_bytes
    if num > 1:
        roots = tuple(range(num))
        traffic = relayed_multicast_traffic(
            mesh.device, mesh.shape, axis, roots=roots, segment=plan.segment, nbytes=nbytes
        )
        ledger.charge(op, Charge.comm(traffic), phase=phase)
    if axis is Axis.X:  # (R, *t, p, C, q) -> (R, *t, p, C*q)
        merged = data.movedim(1, -2).flatten(-2)
    else:  # (C, *t, R, p, q) -> (C, *t, R*p, q)
        merged = data.movedim(0, -3).flatten(-3, -2)
    return merged.unsqueeze(axis.tensor_dim).expand(*data.shape[:2], *merged.shape[1:])
