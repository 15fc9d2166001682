"""Route (colour) accounting per core (the R of PLMR, SPEC.md §10.7).

A phase's program configures named route sets; the same name configured twice counts once (the
union over one program). Counts per core are an int or a (rows, cols) array. Going over the
device's `routes_per_core` raises `RouteOverflowError`, unless the caller asks first with
`fits()` and charges relaying instead (SUMMA's and allgather's broadcasts). `kept_apart()` lets
a walk configure routes without leaving them to the next walk (estimates price many walks on one
cached model; each must see the routes a fresh model has, whatever was walked before).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from waferllm.errors import RouteOverflowError

# Routes (colours) a core configures per communication pattern (SPEC.md §10.7)
RING_ROUTES = 3  # send, receive, transit
CHAIN_ROUTES = 4  # two alternating colours per direction
BROADCAST_ROUTES = 2  # one multicast colour per direction
TREE_LEVEL_ROUTES = 4  # each level above the first


class RouteBudget:
    def __init__(self, *, rows: int, cols: int, limit: int, origin: tuple[int, int]):
        self.rows, self.cols = rows, cols
        self.limit = limit
        self.origin = origin
        self.sets: dict[str, int | np.ndarray] = {}

    def _total(self, extra: int | np.ndarray = 0) -> int | np.ndarray:
        total: int | np.ndarray = extra
        for count in self.sets.values():
            total = total + count
        return total

    @property
    def routes_per_core(self) -> int:
        """The maximum over cores of configured routes."""
        return int(np.max(self._total()))

    @contextlib.contextmanager
    def kept_apart(self) -> Iterator[None]:
        """The route sets configured inside the block are forgotten when it ends."""
        saved = dict(self.sets)
        try:
            yield
        finally:
            self.sets = saved

    def fits(self, name: str, per_core: int | np.ndarray) -> bool:
        if name in self.sets:
            return True
        return int(np.max(self._total(per_core))) <= self.limit

    def require(self, name: str, per_core: int | np.ndarray) -> None:
        """Configure route set `name` on every core (idempotent per name)."""
        if name in self.sets:
            return
        total = self._total(per_core)
        worst = int(np.max(total))
        if worst > self.limit:
            flat = int(np.argmax(np.broadcast_to(total, (self.rows, self.cols))))
            y, x = divmod(flat, self.cols)
            raise RouteOverflowError(
                routes=name,
                core=(y + self.origin[0], x + self.origin[1]),
                needed=worst,
                limit=self.limit,
            )
        self.sets[name] = per_core
