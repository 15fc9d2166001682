"""Totals of ledger records: each summed field times its record's count, added in record
order (`cost.Ledger.totals`, `by_op`). No composition of charges here (`cost`)."""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from waferllm.mesh.cost import Record

_SUMMED = (
    "flops",
    "sram_bytes",
    "bytes_injected",
    "link_byte_hops",
    "critical_hops",
    "critical_stages",
    "host_bytes",
    "compute_cycles",
    "comm_cycles",
    "overhead_cycles",
    "host_io_cycles",
    "comm_busy_cycles",
)

summed_of = operator.attrgetter(*_SUMMED)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Totals:
    """Sums over records with their counts; `latency_cycles` is the critical path."""

    flops: float = 0
    sram_bytes: float = 0
    bytes_injected: float = 0
    link_byte_hops: float = 0
    critical_hops: float = 0
    critical_stages: float = 0
    host_bytes: float = 0
    compute_cycles: float = 0.0
    comm_cycles: float = 0.0
    overhead_cycles: float = 0.0
    host_io_cycles: float = 0.0
    comm_busy_cycles: float = 0.0
    align_cycles: float = 0.0

    @property
    def latency_cycles(self) -> float:
        return self.compute_cycles + self.comm_cycles + self.overhead_cycles

    @property
    def compute_fraction(self) -> float:
        latency = self.latency_cycles
        return self.compute_cycles / latency if latency > 0 else 0.0


_EXACT_FLOAT_INT = 2.0**53  # every integer below it is a float64, exactly


def weighted(records: Sequence[Record]) -> np.ndarray | None:
    """(records, summed fields): each value times its record's count, each product rounded
    once from exact operands as `value * count` is; None when a value or count is too large
    to be an exact float."""
    if not records:
        return None
    flat = itertools.chain.from_iterable(map(summed_of, records))
    values = np.fromiter(flat, dtype=np.float64, count=len(records) * len(_SUMMED))
    counts = np.fromiter((rec.count for rec in records), dtype=np.float64, count=len(records))
    if np.abs(values).max() >= _EXACT_FLOAT_INT or counts.max() >= _EXACT_FLOAT_INT:
        return None
    return values.reshape(len(records), len(_SUMMED)) * counts[:, None]


def sum_records(records: Sequence[Record], products: np.ndarray | None) -> Totals:
    """Sums over `records` with their counts: each field's `total += value * count` in record
    order from 0.0. `products` (`weighted(records)`) are summed by one sequential numpy
    accumulate (the same roundings: accumulate adds in order, never pairwise; adding 0.0 at
    the end turns a -0.0 into the loop's 0.0); without it, the loop itself."""
    if products is not None:
        sums = (np.add.accumulate(products, axis=0)[-1] + 0.0).tolist()
    else:
        sums = [0.0] * len(_SUMMED)
        for rec in records:
            count = rec.count
            sums = [t + v * count for t, v in zip(sums, summed_of(rec), strict=True)]
    align = 0.0
    for i in _aligned(records):
        rec = records[i]
        align += rec.latency_cycles * rec.count
    return _new_totals(sums, align)


def sum_groups(
    records: Sequence[Record], group: Sequence[int], count: int, products: np.ndarray | None
) -> list[Totals]:
    """`sum_records` of each of `count` groups of `records` (`group[i]`: record i's), at once:
    `np.add.at` adds each product row to its group's sums in record order from 0.0 (the
    sequential roundings of the per-group accumulate: 0.0 + p is p, and the final + 0.0
    turns a -0.0 into 0.0 in both); without products, group by group."""
    if products is None:
        members: list[list[Record]] = [[] for _ in range(count)]
        for rec, g in zip(records, group, strict=True):
            members[g].append(rec)
        return [sum_records(m, None) for m in members]
    sums = np.zeros((count, len(_SUMMED)))
    np.add.at(sums, np.asarray(group, dtype=np.intp), products)
    align = [0.0] * count
    for i in _aligned(records):
        rec = records[i]
        align[group[i]] += rec.latency_cycles * rec.count
    return list(map(_new_totals, (sums + 0.0).tolist(), align))


_tag_of = operator.attrgetter("tag")


def _aligned(records: Sequence[Record]) -> list[int]:
    """The indices of the records tagged "align", in order (their latency is summed apart)."""
    return [i for i, tag in enumerate(map(_tag_of, records)) if tag == "align"]


_TOTALS_DEFAULTS = Totals().__dict__.copy()


def _new_totals(sums: Sequence[float], align: float) -> Totals:
    """`Totals(**dict(zip(_SUMMED, sums)), align_cycles=align)` without the frozen dataclass's
    per-field `object.__setattr__` (a report makes one per op): `__init__` converts nothing,
    so the totals are the ones it would make."""
    new = object.__new__(Totals)
    new.__dict__.update(_TOTALS_DEFAULTS)
    new.__dict__.update(zip(_SUMMED, sums, strict=True), align_cycles=align)
    return new


__all__ = ["Totals", "sum_groups", "sum_records", "summed_of", "weighted"]
