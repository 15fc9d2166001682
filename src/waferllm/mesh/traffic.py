"""The message model of SPEC.md §10.6: price one communication step.

A step's time is `max over messages (hops*alpha + stages*beta)` plus `max over directed links
and core ramps (bytes crossing it / bandwidth)`; pipelined messages pay the size term once.
`Traffic` holds a step's critical message and its per-link and per-ramp byte loads as numpy
arrays broadcastable over the mesh, so concurrent steps merge by adding loads.
Legend: L lines (the other axis, or 1 when every line is alike), P cores along the axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

from waferllm.device import Device
from waferllm.mesh.geometry import Axis
from waferllm.mesh.loads import LineRows, Load, add_loads, scale_load


@dataclasses.dataclass(frozen=True)
class Traffic:
    """One communication step on a (rows x cols) mesh.

    `links` maps (axis, +1 | -1) to loads of shape (L, P-1): link i joins cores i and i+1 of a
    line, +1 is the direction of growing index. Ramp loads are (rows, cols)-broadcastable.
    Loads are numpy arrays or the factored forms of `loads` (the same max, sums and arrays).
    """

    device: Device
    shape: tuple[int, int]
    critical_hops: int = 0
    critical_stages: int = 0
    bytes_injected: int = 0
    link_byte_hops: int = 0
    links: Mapping[tuple[Axis, int], Load] = dataclasses.field(default_factory=dict)
    ramp_in: Load = dataclasses.field(default_factory=lambda: np.zeros((1, 1)))
    ramp_out: Load = dataclasses.field(default_factory=lambda: np.zeros((1, 1)))
    mean_slack_cycles: float = 0.0

    @property
    def latency_term_cycles(self) -> float:
        d = self.device
        return (
            self.critical_hops * d.hop_latency_cycles
            + self.critical_stages * d.stage_latency_cycles
        )

    @property
    def size_term_cycles(self) -> float:
        link, ramp_in, ramp_out = self.peaks
        return size_term(self.device, link, max(0.0, ramp_in), max(0.0, ramp_out))

    @functools.cached_property
    def peaks(self) -> tuple[float, float, float]:
        """(the largest link load, at least 0; the largest ramp-in and ramp-out loads, -inf
        when there is no ramp): what the size term reads of the loads, found once (a cached
        step is charged many times, and `phases.merged_cost` adds two steps' ramp peaks)."""
        link = max((float(load.max(initial=0.0)) for load in self.links.values()), default=0.0)
        top = -np.inf
        return link, float(self.ramp_in.max(initial=top)), float(self.ramp_out.max(initial=top))

    @functools.cached_property
    def cycles(self) -> float:
        """The step's time, computed once: patterns are cached, so one Traffic is charged many
        times (its arrays are never written after construction)."""
        if self.bytes_injected == 0:
            return 0.0
        return self.latency_term_cycles + self.size_term_cycles

    def streamed(self) -> Traffic:
        """This step entering its chains right behind another stream of the same kind: the
        chains' latency is being paid by the stream ahead, only the size term is exposed
        (consecutive reduces of a systolic loop, `comm.reduce(follows_stream=True)`)."""
        return dataclasses.replace(self, critical_hops=0, critical_stages=0)

    def scaled(self, factor: int) -> Traffic:
        """This step with every message `factor` times as large: loads, bytes injected and
        byte-hops times `factor` (whole bytes: exact), the critical message and the slack as
        they are (a pattern's hops do not depend on its sizes)."""
        scaled = Traffic(
            device=self.device,
            shape=self.shape,
            critical_hops=self.critical_hops,
            critical_stages=self.critical_stages,
            bytes_injected=self.bytes_injected * factor,
            link_byte_hops=self.link_byte_hops * factor,
            links={key: scale_load(load, factor) for key, load in self.links.items()},
            ramp_in=scale_load(self.ramp_in, factor),
            ramp_out=scale_load(self.ramp_out, factor),
            mean_slack_cycles=self.mean_slack_cycles,
        )
        if factor > 0 and _scales_elementwise(self):
            # each load times `factor` (> 0): x -> x * factor rounds monotonically, so the
            # largest scaled load is the largest load scaled (the same float, no array pass)
            f = float(factor)
            link, ramp_in, ramp_out = self.peaks
            scaled.__dict__["peaks"] = (link * f, ramp_in * f, ramp_out * f)
        return scaled

    def merged(self, other: Traffic) -> Traffic:
        """Two steps at the same time: the slower critical message, loads added."""
        assert self.shape == other.shape and self.device == other.device
        mine = self.latency_term_cycles >= other.latency_term_cycles
        slow = self if mine else other
        links = dict(self.links)
        for key, load in other.links.items():
            links[key] = add_loads(links[key], load) if key in links else load
        return Traffic(
            device=self.device,
            shape=self.shape,
            critical_hops=slow.critical_hops,
            critical_stages=slow.critical_stages,
            bytes_injected=self.bytes_injected + other.bytes_injected,
            link_byte_hops=self.link_byte_hops + other.link_byte_hops,
            links=links,
            ramp_in=add_loads(self.ramp_in, other.ramp_in),
            ramp_out=add_loads(self.ramp_out, other.ramp_out),
            mean_slack_cycles=min(self.mean_slack_cycles, other.mean_slack_cycles),
        )


def size_term(device: Device, link: float, ramp_in: float, ramp_out: float) -> float:
    """The size term of a step whose largest link, ramp-in and ramp-out loads (each at least
    0) are given: the busiest link or ramp's bytes over its bandwidth."""
    ramp = max(ramp_in, ramp_out)
    return max(link / device.link_bytes_per_cycle, ramp / device.ramp_bytes_per_cycle)


def _scales_elementwise(traffic: Traffic) -> bool:
    """Whether `scale_load` multiplies each of the traffic's loads element by element (arrays
    and `LineRows`; an `OuterRamp`'s max is a sum of two scaled maxima, rounded otherwise)."""
    loads = [*traffic.links.values(), traffic.ramp_in, traffic.ramp_out]
    return all(isinstance(load, (np.ndarray, LineRows)) for load in loads)


# (links, ramp out, ramp in) of a set of segments, per line: what `line_traffic` prices
Loads = tuple[dict[tuple[Axis, int], np.ndarray], np.ndarray, np.ndarray]


def orient(axis: Axis, line_major: np.ndarray | LineRows) -> np.ndarray | LineRows:
    """(L, P) per-line array -> (rows, cols)-broadcastable array."""
    return line_major if axis is Axis.X else line_major.T


def one_line(num: int) -> tuple[int, int]:
    """The grid of a single line of `num` cores along X: where a pattern whose lines are all
    alike is priced once for every grid with a side of `num`, along either axis (`on_grid`)."""
    return (1, num)


def on_grid(line: Traffic, shape: tuple[int, int], axis: Axis) -> Traffic:
    """`line`, a step priced on `one_line(P)` along X with every line alike ((1, P) loads), as
    the same step on every line of a `shape` grid along `axis` (P = shape[axis]): the same
    arrays (transposed along Y, as `orient` does), each line's bytes and byte-hops times the
    lines, the same critical message and slack. Exact: a pattern whose lines are alike takes
    its arrays from the line alone and multiplies its sums (whole bytes below 2**53) by the
    other side, as `line_traffic` and the closed forms do (tests/mesh/test_line_parts.py
    compares every pattern so built with the pattern priced on the grid). The step's cycles
    are the line's: the same loads, hops and stages (no byte, no time: lines >= 1)."""
    lines = shape[axis.other.tensor_dim]
    ramp_in, ramp_out = line.ramp_in, line.ramp_out
    assert isinstance(ramp_in, np.ndarray) and isinstance(ramp_out, np.ndarray)  # one line
    grid = Traffic(
        device=line.device,
        shape=shape,
        critical_hops=line.critical_hops,
        critical_stages=line.critical_stages,
        bytes_injected=line.bytes_injected * lines,
        link_byte_hops=line.link_byte_hops * lines,
        links={(axis, direction): load for (_, direction), load in line.links.items()},
        ramp_in=orient(axis, ramp_in),
        ramp_out=orient(axis, ramp_out),
        mean_slack_cycles=line.mean_slack_cycles,
    )
    grid.__dict__["cycles"] = line.cycles  # the cached properties, already known
    grid.__dict__["peaks"] = line.peaks
    return grid


def line_traffic(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    *,
    src: np.ndarray,
    dst: np.ndarray,
    nbytes: np.ndarray | int,
    critical_hops: int,
    critical_stages: int,
    mean_slack_cycles: float = 0.0,
    ramp_in_extra: np.ndarray | None = None,
    ramp_out_extra: np.ndarray | None = None,
    bytes_injected: int | None = None,
    loads: Loads | None = None,
) -> Traffic:
    """Traffic of point-to-point segments along `axis`, the same in every line or per line.

    `src`, `dst`: (F,) or (L, F) core indices along the axis, one entry per segment (a segment
    enters the fabric at src's ramp, crosses every link between, leaves at dst's ramp).
    `nbytes`: bytes of each segment, scalar or broadcastable to src. Segments with src == dst
    or zero bytes carry nothing. The critical message is given by the caller, who knows which
    segments form a pipelined chain. `ramp_*_extra` ((L, P) arrays) add ramp loads that are
    not segment ends (a multicast delivers to every core it passes). `loads`: (links, ramp
    out, ramp in) of these segments when the caller knows them in closed form (a pattern
    whose structure makes the per-line sums unnecessary); computed here otherwise.
    """
    num = shape[axis.tensor_dim]
    src2 = np.atleast_2d(np.asarray(src, dtype=np.int64))
    dst2 = np.atleast_2d(np.asarray(dst, dtype=np.int64))
    src2, dst2 = np.broadcast_arrays(src2, dst2)
    size = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), src2.shape)
    size = np.where(src2 == dst2, 0.0, size)
    hops = np.abs(dst2 - src2)
    if loads is None:
        if _every_core_one_hop(src2, dst2, hops, num):
            loads = _one_hop_loads(axis, src2, dst2, size)
        else:
            loads = _segment_loads(axis, src2, dst2, size, num)
    links, ramp_out, ramp_in = loads
    lines = src2.shape[0]
    if ramp_in_extra is not None:
        ramp_in = ramp_in + ramp_in_extra
    if ramp_out_extra is not None:
        ramp_out = ramp_out + ramp_out_extra
    other = shape[axis.other.tensor_dim]
    scale = other if lines == 1 else 1
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=int(critical_hops),
        critical_stages=int(critical_stages),
        bytes_injected=int(size.sum() * scale) if bytes_injected is None else bytes_injected,
        link_byte_hops=int((size * hops).sum() * scale),
        links=links,
        ramp_in=orient(axis, ramp_in),
        ramp_out=orient(axis, ramp_out),
        mean_slack_cycles=mean_slack_cycles,
    )


def _segment_loads(
    axis: Axis, src: np.ndarray, dst: np.ndarray, size: np.ndarray, num: int
) -> Loads:
    """(links, ramp_out, ramp_in) of any segments (L, F): per-line sums and running sums."""
    lines = src.shape[0]
    links: dict[tuple[Axis, int], np.ndarray] = {}
    for direction in (+1, -1):
        moving = np.where((dst - src) * direction > 0, size, 0.0)
        if not moving.any():
            continue
        lo, hi = (src, dst) if direction > 0 else (dst, src)
        # a segment loads links lo .. hi-1: +size at lo, -size at hi, then a running sum
        diff = _per_line_sum(lo, moving, lines, num + 1) - _per_line_sum(hi, moving, lines, num + 1)
        links[(axis, direction)] = np.cumsum(diff, axis=1)[:, : num - 1]
    return links, _per_line_sum(src, size, lines, num), _per_line_sum(dst, size, lines, num)


def _every_core_one_hop(src: np.ndarray, dst: np.ndarray, hops: np.ndarray, num: int) -> bool:
    """Whether segment i of every line leaves core i for a neighbour or itself (chains of
    forward-while-adding reduces): their loads need no per-line sums."""
    if src.shape[1] != num or num < 2 or hops.max(initial=0) > 1:
        return False
    if not np.array_equal(src, np.broadcast_to(np.arange(num), src.shape)):
        return False
    return bool(dst[:, 0].min() >= 0 and dst[:, -1].max() < num)


def _one_hop_loads(axis: Axis, src: np.ndarray, dst: np.ndarray, size: np.ndarray) -> Loads:
    """`_segment_loads` when core i sends to i-1, i or i+1: link i carries what core i sends
    forward and what core i+1 sends back; a ramp sends its core's segment and takes in its
    neighbours' (the same sums, exact in float64 for byte counts below 2**53)."""
    step = dst - src
    forward = np.where(step > 0, size, 0.0)
    back = np.where(step < 0, size, 0.0)
    links: dict[tuple[Axis, int], np.ndarray] = {}
    if forward.any():
        links[(axis, +1)] = forward[:, :-1]
    if back.any():
        links[(axis, -1)] = back[:, 1:]
    ramp_in = np.zeros(size.shape)
    ramp_in[:, 1:] += forward[:, :-1]
    ramp_in[:, :-1] += back[:, 1:]
    return links, np.array(size, dtype=np.float64), ramp_in


def _per_line_sum(index: np.ndarray, weights: np.ndarray, lines: int, width: int) -> np.ndarray:
    """(lines, width) sums of `weights` at `index` along each line (a fast np.add.at)."""
    flat = index + np.arange(lines)[:, None] * width
    return np.bincount(flat.ravel(), weights.ravel(), minlength=lines * width).reshape(lines, width)


def merge_all(traffics: list[Traffic]) -> Traffic:
    assert traffics
    out = traffics[0]
    for t in traffics[1:]:
        out = out.merged(t)
    return out
