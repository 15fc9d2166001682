"""Ledgers that let a walk give up once it cannot beat one already priced (exact pruning).

`BudgetLedger` stops a walk (`OverBudget`) as soon as its records' latency, or during a layer's
walk its records plus the layer count times the layer's records, pass a budget: every record's
latency is >= 0, so no later record brings it back under; a chunked walk's bound also counts
each later chunk as long as the first at no less than the first chunk's cycles, and every chunk
at no less than its ring GEMMs' floor. The ledger itself is in `cost.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from waferllm.mesh.cost import Charge, Ledger


class OverBudget(Exception):
    """Raised by a walk that gave up because its `BudgetLedger` ran past the budget (it cannot
    beat a walk already priced): control flow of the estimate layer's exact pruning, never a
    user error."""


class BudgetLedger(Ledger):
    """A ledger whose walk may stop once the latency of its records exceeds `budget_cycles`:
    every record's latency is >= 0 and `totals` adds in record order, so no later record can
    bring it back under (the walk's full latency is at least any prefix's). A layer ledger
    made by `per_layer` (its records later extended `count` times) stops the walk as soon as
    this ledger plus `count` times its records pass the budget by more than `SLACK` (float
    sums of the same non-negative terms in another grouping differ by far less).

    A chunked prefill (`chunk_lengths`: its chunks' lengths, the first the longest) asks
    `over_budget` after every chunk but the last: the first such call closes the first chunk
    (the ledger starts empty). Every later chunk as long as the first walks the same layers on
    the same shapes and attends to the same causal block of its own plus earlier chunks' keys:
    its records include the first chunk's, so it costs at least the first chunk's cycles (a
    shorter one, the last, is counted at `floor_cycles`). The bound adds that floor for the
    chunks still to come; while the first chunk is walked, its own bound so far stands for it
    (tests/estimate/test_chunk_floor.py checks the floor chunk by chunk, and that the search
    is unchanged). `floor_cycles` is a lower bound of every chunk's latency whatever its
    length (`model.chunked.chunk_floor_cycles`: its layers' ring GEMM steps): each chunk, the
    one being walked included, counts at no less, so a walk whose chunks' floors alone pass
    the budget gives up before its first record (`hopeless`)."""

    SLACK: ClassVar[float] = 1e-9

    def __init__(
        self,
        *,
        budget_cycles: float,
        chunk_lengths: Sequence[int] = (),
        floor_cycles: float = 0.0,
    ) -> None:
        super().__init__()
        self.budget_cycles = budget_cycles
        self._lengths = tuple(chunk_lengths)
        self._floor = floor_cycles if self._lengths else 0.0
        self._closed = 0  # chunks walked to their end (over_budget calls)
        self._closed_cycles = 0.0  # the latency when the last of them ended
        self._first_cycles = 0.0  # the first chunk's latency, once closed

    def _alike_after(self, chunk: int) -> int:
        """The chunks after the `chunk`-th (1-based) as long as the first."""
        return sum(1 for n in self._lengths[chunk:] if n == self._lengths[0])

    def _after(self, chunk: int, alike_cycles: float) -> float:
        """The floor of the chunks after the `chunk`-th: `alike_cycles` (at least) for those
        as long as the first, `floor_cycles` for the others."""
        alike = self._alike_after(chunk)
        rest = len(self._lengths[chunk:]) - alike
        return alike * max(alike_cycles, self._floor) + rest * self._floor

    def _past(self, bound_cycles: float) -> bool:
        return bound_cycles > self.budget_cycles * (1.0 + self.SLACK)

    def hopeless(self) -> bool:
        """Whether the chunks' floors alone pass the budget (the walk need not start)."""
        return self._past(len(self._lengths) * self._floor)

    def over_budget(self) -> bool:
        latency = self.totals().latency_cycles
        self._closed += 1
        if self._closed == 1:
            self._first_cycles = latency
        self._closed_cycles = latency
        floor = self._after(self._closed, self._first_cycles)
        return latency > self.budget_cycles or self._past(latency + floor)

    def bound(self, walked_cycles: float) -> float:
        """A lower bound of the whole walk's latency, `walked_cycles` a lower bound of the
        chunk being walked's records so far (with the ledger's own)."""
        chunk = self._closed + 1
        if chunk == 1:  # the chunk walked so far stands for the first chunk's cycles
            now = max(walked_cycles, self._floor)
            return now + self._after(1, now)
        now = walked_cycles  # this chunk's own records count at no less than the floor
        if walked_cycles - self._closed_cycles < self._floor:
            now = self._closed_cycles + self._floor
        return now + self._after(chunk, self._first_cycles)

    def per_layer(self, count: int) -> Ledger:
        return _LayerBudget(self, count)


class _LayerBudget(Ledger):
    """`BudgetLedger.per_layer`: raises `OverBudget` from the record that passes the budget."""

    def __init__(self, parent: BudgetLedger, count: int) -> None:
        super().__init__()
        self._parent, self._count = parent, count
        self._added, self._latency = 0, 0.0  # records added up so far, their latency

    def _check(self) -> None:
        for rec in self.records[self._added :]:
            self._latency += rec.latency_cycles * rec.count
        self._added = len(self.records)
        parent = self._parent
        bound = parent.bound(parent.totals().latency_cycles + self._count * self._latency)
        if parent._past(bound):
            raise OverBudget(f"a layer's walk passed the budget at {len(self.records)} records")

    def charge(self, op: str, charge: Charge, *, phase: int = 0) -> None:
        super().charge(op, charge, phase=phase)
        if self._block is None:
            self._check()

    def _append(self, op: str, charges: list[Charge], fields: dict[str, float]) -> None:
        super()._append(op, charges, fields)
        self._check()

    def replay(self, start: int, end: int, *, times: int = 1) -> None:
        super().replay(start, end, times=times)
        self._check()

    def extend(self, other: Ledger, *, count: int = 1, scope: str = "") -> None:
        super().extend(other, count=count, scope=scope)
        self._check()


__all__ = ["BudgetLedger", "OverBudget"]
