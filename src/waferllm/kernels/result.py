"""What every kernel returns: its output and the cost it charged (STYLE.md §13, §14)."""

from __future__ import annotations

import dataclasses

from waferllm.mesh.cost import Ledger, Record, Totals
from waferllm.mesh.tensor import DistTensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelResult:
    """`out`: the result on the mesh; `records`: exactly what this call appended to the ledger.

    `outs`: every output of a fused call, in argument order (`out` is `outs[0]`); filled with
    `(out,)` when not given. `root`: for a reduce without its final broadcast, the index along
    the reduced axis of the line that alone holds the result (None when every core has it).
    """

    out: DistTensor
    records: tuple[Record, ...]
    outs: tuple[DistTensor, ...] = ()
    root: int | None = None

    def __post_init__(self) -> None:
        if not self.outs:
            object.__setattr__(self, "outs", (self.out,))
        assert self.outs[0] is self.out, "out must be the first of outs"

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
