"""What an overlap block's concurrent communication costs (`cost.Ledger.overlap`): the
traffics charged in one phase share the network, merged and priced together; the size term of
loads merged lately is remembered. Composition into records is `cost.py`'s.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from waferllm.mesh.traffic import Traffic, merge_all

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
    size = _size_term(tuple(map(_SameLoads, traffics)))
    return slow.latency_term_cycles + size, slow.critical_hops, slow.critical_stages


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
