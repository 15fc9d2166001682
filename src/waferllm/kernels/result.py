"""What every kernel returns: its output and the cost it charged (STYLE.md §13, §14)."""

from __future__ import annotations

import dataclasses

from waferllm.mesh.cost import Ledger, Record, Totals
from waferllm.mesh.tensor import DistTensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelResult:
    """`out`: the result on the mesh; `records`: exactly what this call appended to the ledger."""

    out: DistTensor
    records: tuple[Record, ...]

    @property
    def cost(self) -> Totals:
        ledger = Ledger()
        ledger.records.extend(self.records)
        return ledger.totals()

    @property
    def mean_core_cycles(self) -> float:
        ledger = Ledger()
        ledger.records.extend(self.records)
        return ledger.mean_core_cycles()


class Charged:
    """Context helper: `with Charged(ledger) as charged: ...; charged.records`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.start = len(ledger.records)

    def __enter__(self) -> Charged:
        self.start = len(self.ledger.records)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(self.ledger.records[self.start :])
