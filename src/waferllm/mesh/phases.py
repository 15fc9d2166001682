"""What an overlap block's concurrent communication costs (`cost.Ledger.overlap`): the
traffics charged in one phase share the network, merged and priced together; the size term of
loads merged lately is remembered. Composition into records is `cost.py`'s.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from waferllm.mesh.loads import Load
from waferllm.mesh.traffic import Traffic, merge_all, size_term

if TYPE_CHECKING:
    from waferllm.mesh.cost import Charge


def phase_cost(charges: list[Charge]) -> tuple[float, int, int]:
    """(cycles, critical hops, critical stages) of concurrent communication."""
    traffics = [c.traffic for c in charges if c.traffic is not None]
    if len(traffics) > 1:
        best = merged_cost(traffics)
    elif traffics:  # merge_all of one traffic is itself
        best = (traffics[0].cycles, traffics[0].critical_hops, traffics[0].critical_stages)
    else:
        best = (0.0, 0, 0)
    for c in charges:
        if c.traffic is None and c.cycles > best[0]:
            best = (c.cycles, c.critical_hops, c.critical_stages)
    return best


def merged_cost(traffics: list[Traffic]) -> tuple[float, int, int]:
    """(cycles, critical hops, critical stages) of `merge_all(traffics)`, the same floats:
    its critical message is the first of the slowest (`Traffic.merged` keeps its own on a
    tie), its latency term that message's, its size term that of the added loads (remembered
    by the loads' identities: a step streamed behind another, `Traffic.streamed`, shares its
    loads), no time without bytes."""
    slow = traffics[0]
    for t in traffics[1:]:
        if t.latency_term_cycles > slow.latency_term_cycles:
            slow = t
    if sum(t.bytes_injected for t in traffics) == 0:
        return 0.0, slow.critical_hops, slow.critical_stages
    size = _crossing_size_term(traffics)
    if size is None:
        size = _size_term(tuple(map(_SameLoads, traffics)))
    return slow.latency_term_cycles + size, slow.critical_hops, slow.critical_stages


def _crossing_size_term(traffics: list[Traffic]) -> float | None:
    """The size term of two steps along different axes, every line of each alike (a MeshGEMM
    step's shifts of A along X and B along Y), from their peaks without merging them; None
    for any other set. Their links are apart, so the busiest link is the busier step's; one
    step's ramps are a row (1, C), the other's a column (R, 1), so every merged ramp load is
    a row's plus a column's and the largest is the two largest added (x + y rounds
    monotonically in each), which `merge_all`'s `OuterRamp` or dense sum gives as well."""
    if len(traffics) != 2:
        return None
    a, b = traffics
    if a.shape != b.shape or a.device != b.device or not a.links.keys().isdisjoint(b.links):
        return None
    if not (_crossing(a.ramp_in, b.ramp_in) and _crossing(a.ramp_out, b.ramp_out)):
        return None
    (link_a, in_a, out_a), (link_b, in_b, out_b) = a.peaks, b.peaks
    ramp_in, ramp_out = max(0.0, in_a + in_b), max(0.0, out_a + out_b)
    return size_term(a.device, max(link_a, link_b), ramp_in, ramp_out)


def _crossing(x: Load, y: Load) -> bool:
    """Whether x + y is an outer sum: two arrays, one a row and the other a column."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        return False
    if x.ndim != 2 or y.ndim != 2:
        return False
    return (x.shape[0] == 1 and y.shape[1] == 1) or (x.shape[1] == 1 and y.shape[0] == 1)


class _SameLoads:
    """A traffic's loads as a cache key: equal only to a traffic holding the very same link
    mapping and ramp arrays on the same device and grid (arrays cannot hash their values).
    The key holds the traffic, so no other object can take those ids while it is cached."""

    __slots__ = ("traffic",)

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic

    def _ids(self) -> tuple[int, int, int]:
        t = self.traffic
        return id(t.links), id(t.ramp_in), id(t.ramp_out)

    def __hash__(self) -> int:
        return hash(self._ids())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _SameLoads):
            return False
        mine, theirs = self.traffic, other.traffic
        same_place = mine.device == theirs.device and mine.shape == theirs.shape
        return same_place and self._ids() == other._ids()


# A walk repeats a phase soon after (a chunked prefill's steps; the streamed attention's last
# step, its reduce no longer streamed, has the earlier steps' loads); a few kept, as each holds
# its traffics' whole-mesh loads alive (256 made a new request's walk slower than none).
@functools.lru_cache(maxsize=16)
def _size_term(traffics: tuple[_SameLoads, ...]) -> float:
    """The size term of these traffics' loads added in this order: a function of the loads
    (never changed after construction), the device and the grid only, all in the key."""
    return merge_all([t.traffic for t in traffics]).size_term_cycles


__all__ = ["merged_cost", "phase_cost"]
