"""The cost ledger: what every primitive charges, and how steps compose (SPEC.md §10.6).

A primitive hands the ledger a `Charge` (compute cycles, or communication traffic already
priced by `traffic.comm_cycles`). Outside an `overlap()` block each charge is one sequential
record and pays its own start overhead (`Charge.overhead_cycles`: the device's
`op_overhead_cycles`, a task or collective start on the core); inside, the block's compute and
communication overlap and cost `max(compute, comm) + step_overhead`, the block's overhead
covering its charges'. `repeat(n)` marks a run of identical steps as one record with a count.
`UnpricedLedger` keeps nothing and tells primitives not to price at all (work whose cost an
identical walk already recorded); a walk charging a `budget.BudgetLedger` may give up.
Cycles only: seconds are the device's business (`Device.cycles_to_seconds`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import operator
from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np

from waferllm.mesh.phases import phase_cost
from waferllm.mesh.totals import Totals, sum_groups, sum_records, weighted
from waferllm.mesh.traffic import Traffic


class ChargeKind(enum.StrEnum):
    COMPUTE = "compute"
    COMM = "comm"
    OVERHEAD = "overhead"
    HOST_IO = "host_io"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Charge:
    """One primitive's cost before composition. `cycles` is its busy time on the critical path.

    Inside an overlap block, communication charged with the same `phase` shares the network at
    the same time (traffics are merged and priced together); later phases follow.
    `mean_slack_cycles`: how much earlier than `cycles` the average core is done (a broadcast
    reaches near cores first); used for PAPER.md §4's mean-over-cores "elapsed cycles".
    `overhead_cycles`: the fixed cost of starting the operation (the device's
    `op_overhead_cycles`, filled in by the primitive), paid only when it runs as a sequential
    record with work to do; an overlap block pays its own step overhead instead. Host I/O
    carries none.
    """

    kind: ChargeKind
    cycles: float
    flops: int = 0
    sram_bytes: int = 0  # bytes read and written in SRAM, summed over cores (energy events)
    bytes_injected: int = 0
    link_byte_hops: int = 0
    critical_hops: int = 0
    critical_stages: int = 0
    host_bytes: int = 0
    mean_slack_cycles: float = 0.0
    traffic: Traffic | None = None
    overhead_cycles: float = 0.0

    @classmethod
    def comm(cls, traffic: Traffic) -> Charge:
        """A communication step priced by the message model (it starts like any operation).
        Made without the frozen dataclass's per-field `object.__setattr__` (`__init__`
        converts nothing: the same charge), as every priced step makes one."""
        new = object.__new__(cls)
        new.__dict__.update(
            _COMM_DEFAULTS,
            cycles=traffic.cycles,
            bytes_injected=traffic.bytes_injected,
            link_byte_hops=traffic.link_byte_hops,
            critical_hops=traffic.critical_hops,
            critical_stages=traffic.critical_stages,
            mean_slack_cycles=traffic.mean_slack_cycles,
            traffic=traffic,
            overhead_cycles=traffic.device.op_overhead_cycles,
        )
        return new


_COMM_DEFAULTS = Charge(kind=ChargeKind.COMM, cycles=0.0).__dict__.copy()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """One ledger entry: a sequential primitive or one overlapped step, `count` times."""

    op: str
    count: int = 1
    tag: str = ""
    flops: int = 0
    sram_bytes: int = 0
    bytes_injected: int = 0
    link_byte_hops: int = 0
    critical_hops: int = 0
    critical_stages: int = 0
    host_bytes: int = 0
    compute_cycles: float = 0.0  # exposed
    comm_cycles: float = 0.0  # exposed
    overhead_cycles: float = 0.0  # exposed
    host_io_cycles: float = 0.0  # never on the modelled critical path of TTFT/TPOT
    comm_busy_cycles: float = 0.0  # all communication, hidden or not
    mean_slack_cycles: float = 0.0

    @property
    def latency_cycles(self) -> float:
        return self.compute_cycles + self.comm_cycles + self.overhead_cycles

    def expanded(self) -> list[Record]:
        return [dataclasses.replace(self, count=1)] * self.count

    def with_fields(self, **fields: object) -> Record:
        """This record with some fields replaced: a field-for-field copy of the frozen record
        (dataclasses.replace re-runs the field introspection per call; ledgers copy thousands)."""
        new = object.__new__(Record)
        new.__dict__.update(self.__dict__, **fields)
        return new


_RECORD_DEFAULTS = Record(op="").__dict__.copy()
_op_of = operator.attrgetter("op")


def _new_record(fields: Mapping[str, object]) -> Record:
    """`Record(**fields)` without the frozen dataclass's per-field `object.__setattr__`
    (every charge makes one): the defaults, then `fields`, set at once. `__init__` converts
    nothing, so the record is the one it would make."""
    new = object.__new__(Record)
    new.__dict__.update(_RECORD_DEFAULTS, **fields)
    return new


@dataclasses.dataclass
class _Block:
    op: str
    step_overhead_cycles: float
    charges: list[Charge] = dataclasses.field(default_factory=list)
    comm_phases: dict[int, list[Charge]] = dataclasses.field(default_factory=dict)


class Ledger:
    """Records in program order. Callers own it; kernels and primitives only append.

    `prices`: whether primitives should price their work for this ledger at all. False only
    for `UnpricedLedger`; primitives then skip the cost model (message pricing, roofline) but
    still configure their routes and charge SRAM, so the M and R checks hold either way.
    """

    prices: ClassVar[bool] = True

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._scopes: list[str] = []
        self._tags: list[str] = []
        self._repeat = 1
        self._block: _Block | None = None
        self._totals: dict[str, tuple[int, Totals]] = {}  # prefix -> (records summed, sums)
        self._weighted: tuple[int, np.ndarray | None] = (0, None)  # `_products`

    # ---- context helpers -------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the op names recorded inside with `name/`."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    @contextlib.contextmanager
    def tag(self, name: str) -> Iterator[None]:
        """Tag records (e.g. "align") so reports can single them out."""
        self._tags.append(name)
        try:
            yield
        finally:
            self._tags.pop()

    @property
    def in_overlap(self) -> bool:
        """Inside an `overlap()` block (charges join one step instead of making records)."""
        return self._block is not None

    @contextlib.contextmanager
    def repeat(self, count: int) -> Iterator[None]:
        """Records inside stand for `count` identical repetitions (not inside an overlap block:
        a repeated charge there would silently count once)."""
        assert count >= 1
        assert self._block is None, "repeat() inside an overlap block; repeat the whole block"
        saved = self._repeat
        self._repeat = saved * count
        try:
            yield
        finally:
            self._repeat = saved

    @contextlib.contextmanager
    def overlap(self, op: str, *, step_overhead_cycles: float = 0.0) -> Iterator[None]:
        """One step whose compute and communication overlap: max(compute, comm) + overhead."""
        assert self._block is None, "overlap blocks do not nest"
        self._block = _Block(self._name(op), step_overhead_cycles)
        try:
            yield
        finally:
            block, self._block = self._block, None
        self._close_block(block)

    def _name(self, op: str) -> str:
        return "/".join([*self._scopes, op])

    # ---- charging ----------------------------------------------------------------------------
    def charge(self, op: str, charge: Charge, *, phase: int = 0) -> None:
        """Add `charge`: to the open overlap block (whose step overhead covers the charge's
        start overhead), else as one sequential record that pays `charge.overhead_cycles` when
        it has work (`cycles > 0`). The one place that decides who pays the per-operation
        overhead."""
        if self._block is not None:
            self._block.charges.append(charge)
            if charge.kind is ChargeKind.COMM:
                self._block.comm_phases.setdefault(phase, []).append(charge)
            return
        kind, cycles = charge.kind, charge.cycles
        overhead = charge.overhead_cycles if cycles > 0 else 0.0
        if kind is ChargeKind.OVERHEAD:
            overhead += cycles
        comm = cycles if kind is ChargeKind.COMM else 0.0
        self.records.append(
            _new_record(
                {
                    "op": "/".join([*self._scopes, op]),
                    "count": self._repeat,
                    "tag": self._tags[-1] if self._tags else "",
                    "flops": charge.flops,
                    "sram_bytes": charge.sram_bytes,
                    "bytes_injected": charge.bytes_injected,
                    "link_byte_hops": charge.link_byte_hops,
                    "critical_hops": charge.critical_hops,
                    "critical_stages": charge.critical_stages,
                    "host_bytes": charge.host_bytes,
                    "compute_cycles": cycles if kind is ChargeKind.COMPUTE else 0.0,
                    "comm_cycles": comm,
                    "overhead_cycles": overhead,
                    "host_io_cycles": cycles if kind is ChargeKind.HOST_IO else 0.0,
                    "comm_busy_cycles": comm,
                    "mean_slack_cycles": charge.mean_slack_cycles,
                }
            )
        )

    def _close_block(self, block: _Block) -> None:
        compute = sum(c.cycles for c in block.charges if c.kind is ChargeKind.COMPUTE)
        overhead = block.step_overhead_cycles + sum(
            c.cycles for c in block.charges if c.kind is ChargeKind.OVERHEAD
        )
        # Communication charged in the same phase shares the network: merge, then price.
        phases = [phase_cost(phase) for phase in block.comm_phases.values()]
        comm = sum(p[0] for p in phases)
        fields = {
            "critical_hops": sum(p[1] for p in phases),
            "critical_stages": sum(p[2] for p in phases),
            "compute_cycles": compute,
            "comm_cycles": max(0.0, comm - compute),
            "overhead_cycles": overhead,
            "comm_busy_cycles": comm,
            "host_io_cycles": sum(c.cycles for c in block.charges if c.kind is ChargeKind.HOST_IO),
        }
        self._append(block.op, block.charges, fields)

    def _append(self, op: str, charges: list[Charge], fields: dict[str, float]) -> None:
        summed: dict[str, object] = {
            key: sum(getattr(c, key) for c in charges)
            for key in (
                "flops",
                "sram_bytes",
                "bytes_injected",
                "link_byte_hops",
                "critical_hops",
                "critical_stages",
                "host_bytes",
            )
        }
        summed["mean_slack_cycles"] = charges[-1].mean_slack_cycles if charges else 0.0
        summed.update(fields)
        summed.update(op=op, count=self._repeat, tag=self._tags[-1] if self._tags else "")
        self.records.append(_new_record(summed))

    def append_like(self, op: str, record: Record, *, times: int = 1) -> None:
        """Append `record`'s numbers as `op` here (scopes, tag, count times `times`): a step
        whose charges an identical step composed (`kernels.ring_charges`)."""
        assert self._block is None, "append_like() inside an overlap block"
        tag = self._tags[-1] if self._tags else ""
        self.records.append(
            record.with_fields(op=self._name(op), count=self._repeat * times, tag=tag)
        )

    def mark(self) -> int:
        """Where the next record goes (`replay` appends the records from a mark again)."""
        assert self._block is None, "mark() inside an overlap block"
        return len(self.records)

    def replay(self, start: int, end: int, *, times: int = 1) -> None:
        """Append records[start:end] again `times` times, in order: a walk identical to one
        already charged (estimate mode skips its tensors; the records are exactly those it
        would append)."""
        assert self._block is None, "replay() inside an overlap block"
        self.records.extend(self.records[start:end] * times)

    def extend(self, other: Ledger, *, count: int = 1, scope: str = "") -> None:
        """Append another ledger's records `count` times (reuse of identical layers/steps)."""
        prefix = f"{scope}/" if scope else ""
        times = count * self._repeat
        if not prefix and times == 1:  # the same records (frozen): no copies
            self.records.extend(other.records)
            return
        for rec in other.records:
            self.records.append(rec.with_fields(op=prefix + rec.op, count=rec.count * times))

    # ---- reading -----------------------------------------------------------------------------
    def expanded(self) -> list[Record]:
        """Every record with count 1 (the form in which two ledgers are compared)."""
        return [r for rec in self.records for r in rec.expanded()]

    def totals(self, *, prefix: str = "") -> Totals:
        """Sums over the records (with `prefix`, those whose op starts with it); remembered
        until a record is added (records are only ever appended), as a report asks each
        phase's totals several times."""
        seen = self._totals.get(prefix)
        if seen is not None and seen[0] == len(self.records):
            return seen[1]
        totals = self._summed(prefix)
        self._totals[prefix] = (len(self.records), totals)
        return totals

    def _summed(self, prefix: str) -> Totals:
        records, products = self.records, self._products()
        if prefix:
            keep = [i for i, rec in enumerate(records) if rec.op.startswith(prefix)]
            records = [records[i] for i in keep]
            # a subset of exact rows is exact: `weighted(records)` is None only if the whole is
            products = products[keep] if products is not None and keep else weighted(records)
        return sum_records(records, products)

    def _products(self) -> np.ndarray | None:
        """`weighted(self.records)`, kept and extended as records are appended: each row is
        one record's (its values times its count), so the rows of the records already
        weighted stay, and the whole is None as soon as one part is."""
        done, products = self._weighted
        records = self.records
        if done == len(records):
            return products
        if done == 0:
            products = weighted(records)
        elif products is not None:
            more = weighted(records[done:])
            products = None if more is None else np.concatenate((products, more))
        self._weighted = (len(records), products)
        return products

    def by_op(self, *, depth: int = 1) -> dict[str, Totals]:
        """Totals grouped by the first `depth` components of the op name."""
        groups: dict[str, int] = {}  # in the order of their first records
        ops = list(map(_op_of, self.records))
        names = {  # op -> its group (ops recur: layers, steps), ops in first-record order
            op: groups.setdefault("/".join(op.split("/", depth)[:depth]), len(groups))
            for op in dict.fromkeys(ops)
        }
        group = list(map(names.__getitem__, ops))
        totals = sum_groups(self.records, group, len(groups), self._products())
        return dict(zip(groups, totals, strict=True))

    def over_budget(self) -> bool:
        """Whether the walk charging this ledger may stop (`budget.BudgetLedger`): never here."""
        return False

    def per_layer(self, count: int) -> Ledger:
        """A new ledger for one layer's records, which the walk extends into this one `count`
        times (`budget.BudgetLedger`'s stops the walk early)."""
        return Ledger()

    def mean_core_cycles(self) -> float:
        """Mean over cores of each core's span: the critical path less the last step's slack."""
        latency = self.totals().latency_cycles
        return latency - (self.records[-1].mean_slack_cycles if self.records else 0.0)


class UnpricedLedger(Ledger):
    """A ledger that keeps nothing and asks primitives not to price: for work whose cost is
    already known (functional runs compute every identical layer but price the first). Routes
    and SRAM are still checked; `charge` and overlap blocks record nothing."""

    prices: ClassVar[bool] = False

    def charge(self, op: str, charge: Charge, *, phase: int = 0) -> None:
        return None

    def _close_block(self, block: _Block) -> None:
        return None

    # Names, tags, counts and overlap blocks only shape records: with none kept, a shared
    # do-nothing context is enough (thousands of them per prefill).
    def scope(self, name: str) -> contextlib.nullcontext[None]:  # type: ignore[override]
        return _NOTHING

    def tag(self, name: str) -> contextlib.nullcontext[None]:  # type: ignore[override]
        return _NOTHING

    def repeat(self, count: int) -> contextlib.nullcontext[None]:  # type: ignore[override]
        return _NOTHING

    def overlap(  # type: ignore[override]
        self, op: str, *, step_overhead_cycles: float = 0.0
    ) -> contextlib.nullcontext[None]:
        return _NOTHING


_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegionPeak:
    """One region's SRAM peak in one phase's walk: its busiest core's bytes, and its cores."""

    bytes_per_core: int
    cores: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseLedger:
    """One phase's ledger and the peaks its walk reached (SRAM per region, routes per core):
    what the estimate layer and the baselines' plans return per phase."""

    ledger: Ledger
    regions: tuple[RegionPeak, ...]
    routes_per_core: int

    @property
    def peak_sram_bytes_per_core(self) -> int:
        return max(r.bytes_per_core for r in self.regions)

    @property
    def sram_used_bytes(self) -> int:
        """Every region at its peak core's bytes times its cores."""
        return sum(r.bytes_per_core * r.cores for r in self.regions)

    @property
    def latency_cycles(self) -> float:
        return self.ledger.totals().latency_cycles
