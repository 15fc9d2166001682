"""The charges of collectives whose lines are all alike, from one line priced once at 1 byte.

A K-tree reduce, a chain to one root and a multicast from one root load every line of a grid
alike: `pattern_cache.per_line` prices such a pattern on one line and puts it on each grid
(`traffic.on_grid`), `per_byte` scales it to each size (`Traffic.scaled`). A sequential
charge reads only a few numbers of that traffic, and each has a closed form in the message
size and the number of lines: `LineTerms` keeps them from the line priced at 1 byte (a
K-tree's counted from its segments, `tree_terms`), and `line_charge` builds the charge of any
size on any grid from them, without a grid's traffic (the charge carries none: only an
overlap block merges traffics, and `comm` prices those as before). A decode step on a new
grid side charges a few dozen allreduces of a dozen sizes on two axes: one line pricing per
pattern and side instead of a traffic per size and axis.
Exact (tests/mesh/test_line_charges.py compares every field with the traffic's charge):
the bytes are whole, so every load, byte count and byte-hop at n bytes is n times its value
at 1 byte (`per_byte`) and each product below 2**53 is exact; the busiest load is then n
times the unit's busiest, and the cycles are the same float operations on the same floats.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from waferllm.device import Device
from waferllm.mesh.cost import Charge, ChargeKind
from waferllm.mesh.geometry import Axis
from waferllm.mesh.ktree import TreePlan
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic
from waferllm.mesh.traffic import Traffic, one_line


@dataclasses.dataclass(frozen=True)
class LineTerms:
    """What a charge reads of a pattern priced on one line at 1 byte: its critical message,
    its mean slack, the bytes it injects and their byte-hops, and its busiest link and ramp."""

    hops: int
    stages: int
    slack_cycles: float
    injected: int
    byte_hops: int
    link: float
    ramp: float

    @classmethod
    def of(cls, line: Traffic) -> LineTerms:
        """The terms of `line` (one line, 1 byte per message), read as `Traffic` reads them."""
        link = max((float(load.max(initial=0.0)) for load in line.links.values()), default=0.0)
        ramp = max(float(line.ramp_in.max(initial=0.0)), float(line.ramp_out.max(initial=0.0)))
        return cls(
            hops=line.critical_hops,
            stages=line.critical_stages,
            slack_cycles=line.mean_slack_cycles,
            injected=line.bytes_injected,
            byte_hops=line.link_byte_hops,
            link=link,
            ramp=ramp,
        )

    def charge(self, device: Device, nbytes: int, lines: int) -> Charge:
        """`Charge.comm` of the pattern at `nbytes` (>= 1) per message on `lines` lines, its
        cycles as `Traffic.cycles` computes them (latency term, then the size term of the
        busiest link and ramp: n times the unit's, exact), without the traffic."""
        d, injected = device, self.injected * nbytes * lines
        cycles = 0.0
        if injected != 0:
            latency = self.hops * d.hop_latency_cycles + self.stages * d.stage_latency_cycles
            link, ramp = self.link * nbytes, self.ramp * nbytes
            cycles = latency + max(link / d.link_bytes_per_cycle, ramp / d.ramp_bytes_per_cycle)
        return Charge(
            kind=ChargeKind.COMM,
            cycles=cycles,
            bytes_injected=injected,
            link_byte_hops=self.byte_hops * nbytes * lines,
            critical_hops=self.hops,
            critical_stages=self.stages,
            mean_slack_cycles=self.slack_cycles,
            overhead_cycles=device.op_overhead_cycles,
        )


@lru_cache(maxsize=1024)
def line_terms(device: Device, kind: str, num: int, what: TreePlan | int | Owners) -> LineTerms:
    """The terms of a K-tree reduce (`kind` "tree", `what` its plan: `tree_terms`), or of a
    chain to or a multicast from root `what` of every line, or from owners `what` alike on
    every line ("chain", "multicast": the plain pattern, no cache, priced on `one_line(num)`
    at 1 byte), on a line of `num` cores."""
    if kind == "tree":
        assert isinstance(what, TreePlan)
        return tree_terms(what, num)
    assert not isinstance(what, TreePlan)
    pattern = chain_traffic if kind == "chain" else multicast_traffic
    owners = root_owners(num, what) if isinstance(what, int) else what
    traffic = pattern.__wrapped__(device, one_line(num), Axis.X, owners, 1)  # type: ignore[attr-defined]
    return LineTerms.of(traffic)


def tree_terms(plan: TreePlan, num: int) -> LineTerms:
    """`LineTerms` of a K-tree reduce on a line of `num` cores from its segments alone: what
    `tree_traffic` at 1 byte gives (`line_traffic`'s loads are then segment counts): every
    segment injects 1 byte over |dst - src| hops, the busiest directed link is crossed by the
    most segments (a running sum of their starts and ends), the busiest ramp sends or takes
    the most, no slack. tests/mesh/test_line_charges.py compares it with the traffic."""
    src, dst = plan.src, plan.dst
    moving = src != dst
    if not moving.all():
        src, dst = src[moving], dst[moving]
    link = ramp = 0
    if len(src):
        forward, low, high = dst > src, np.minimum(src, dst), np.maximum(src, dst)
        for way in (forward, ~forward):
            if way.any():
                ends = np.bincount(low[way], minlength=num + 1)
                ends -= np.bincount(high[way], minlength=num + 1)
                link = max(link, int(np.cumsum(ends).max()))
        ramp = max(int(np.bincount(src).max()), int(np.bincount(dst).max()))
    return LineTerms(
        hops=plan.critical_hops,
        stages=plan.critical_stages,
        slack_cycles=0.0,
        injected=len(src),
        byte_hops=int(np.abs(dst - src).sum()),
        link=float(link),
        ramp=float(ramp),
    )


@lru_cache(maxsize=4096)
def line_charge(
    device: Device, kind: str, num: int, what: TreePlan | int | Owners, nbytes: int, lines: int
) -> Charge:
    """The charge of `line_terms(device, kind, num, what)` at `nbytes` (>= 1) per message on
    a grid of `lines` lines (the other axis): a square grid's X and Y collectives of one size
    are one charge."""
    return line_terms(device, kind, num, what).charge(device, nbytes, lines)


@lru_cache(maxsize=1024)
def root_owners(num: int, root: int) -> Owners:
    """`Owners.of_roots` of one root (in range) on every line of `num` cores, as
    `lines.line_roots` gives it (an int64 array of one)."""
    return Owners.of_roots(num, np.array([root], dtype=np.int64))


__all__ = ["LineTerms", "line_charge", "line_terms", "root_owners", "tree_terms"]
