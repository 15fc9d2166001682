"""Ledgers that let a walk give up once it cannot beat one already priced (exact pruning).

`BudgetLedger` stops a walk (`OverBudget`) as soon as its records' latency, or during a layer's
walk its records plus the layer count times the layer's records, pass a budget: every record's
latency is >= 0, so no later record brings it back under. The ledger itself is in `cost.py`.
"""

from __future__ import annotations

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
    sums of the same non-negative terms in another grouping differ by far less)."""

    SLACK: ClassVar[float] = 1e-9

    def __init__(self, *, budget_cycles: float) -> None:
        super().__init__()
        self.budget_cycles = budget_cycles

    def over_budget(self) -> bool:
        return self.totals().latency_cycles > self.budget_cycles

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
        bound = parent.totals().latency_cycles + self._count * self._latency
        if bound > parent.budget_cycles * (1.0 + BudgetLedger.SLACK):
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
