"""Turn off the estimate layer's exact pruning of chunk sizes (`mesh.budget.BudgetLedger`), for
tests that count walks or compare a pruned search with one that walks every candidate."""

from __future__ import annotations

import pytest

from waferllm.mesh.budget import BudgetLedger
from waferllm.mesh.cost import Ledger


def unpruned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every walk priced in full: a `BudgetLedger` never stops one."""
    monkeypatch.setattr(BudgetLedger, "hopeless", lambda self: False)
    monkeypatch.setattr(BudgetLedger, "over_budget", lambda self: False)
    monkeypatch.setattr(BudgetLedger, "per_layer", lambda self, count: Ledger())
