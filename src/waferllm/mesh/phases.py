"""What an overlap block's concurrent communication costs (`cost.Ledger.overlap`): the
traffics charged in one phase share the network, merged and priced together; a merge seen
lately is remembered. Composition into records is `cost.py`'s.
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
        best = _merged(tuple(map(_Same, traffics)))
    elif traffics:  # merge_all of one traffic is itself
        best = (traffics[0].cycles, traffics[0].critical_hops, traffics[0].critical_stages)
    else:
        best = (0.0, 0, 0)
    for c in charges:
        if c.traffic is None and c.cycles > best[0]:
            best = (c.cycles, c.critical_hops, c.critical_stages)
    return best


class _Same:
    """A traffic as a cache key: equal only to itself (`Traffic` hashes its fields, loads
    included, which arrays cannot). The key holds the traffic, so no other object can take
    its id while the key is cached."""

    __slots__ = ("traffic",)

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic

    def __hash__(self) -> int:
        return id(self.traffic)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.traffic is self.traffic


# A walk repeats a phase soon after (a chunked prefill's steps: a grid search hits 115 of 249
# with 16 as with 256 kept); a few kept, as each holds its traffics' whole-mesh loads alive
# (256 made a new request's walk slower than none).
@functools.lru_cache(maxsize=16)
def _merged(traffics: tuple[_Same, ...]) -> tuple[float, int, int]:
    """(cycles, critical hops, critical stages) of the traffics merged in this order: a
    function of these objects only (a Traffic is never changed after construction, its
    `cycles` a cached property), so the key, their identities in order, is complete."""
    merged = merge_all([t.traffic for t in traffics])
    return merged.cycles, merged.critical_hops, merged.critical_stages


__all__ = ["phase_cost"]
