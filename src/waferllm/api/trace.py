"""The modelled timeline of a request as Chrome/Perfetto trace-event JSON (`--trace FILE`).

One process per phase (prefill, transition, decode) laid end to end as TTFT, transition and
decode time add up (SPEC.md §10.4); inside, one track per level: decode steps, repeated blocks
(the layers), ops, and the op's compute, exposed communication and overhead as three tracks.
Built from the ledgers: a run of records sharing a count c > 1 and a name prefix is a block
repeated c times, laid out as consecutive iterations; the first `max_repeats` iterations are
events of their own, the rest one aggregated event with `args.count`, so a 4096-token request
stays small. Times (`ts`, `dur`) are microseconds of MODELLED time, never host time; the order
inside a phase is the ledger's (durations are exact, the interleaving is schematic).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from waferllm.api.estimate import Estimate
from waferllm.api.estimate_systems import BaselineEstimate
from waferllm.api.llm import LLM, RequestOutput
from waferllm.device import Device
from waferllm.mesh.cost import Ledger, Record
from waferllm.model.report import RequestReport

__all__ = ["MAX_REPEATS", "PhaseLedgers", "chrome_trace", "estimate_trace", "generation_trace"]

MAX_REPEATS = 8  # iterations of a repeated block shown one by one before one aggregate
# Past this many events in a phase, the rest of the phase is one aggregate event (a long
# decode's ledger holds one block per cache width: thousands of records).
PHASE_EVENT_BUDGET = 3000

# Track ids (tid) inside each phase's process, in display order.
STEPS, BLOCKS, OPS, COMPUTE, COMM, OVERHEAD = 1, 2, 3, 4, 5, 6
TRACK_NAMES = {
    STEPS: "decode steps",
    BLOCKS: "repeated blocks (layers)",
    OPS: "ops",
    COMPUTE: "compute",
    COMM: "communication (exposed)",
    OVERHEAD: "overhead",
}
_SPLIT: tuple[tuple[int, str, str], ...] = (
    (COMPUTE, "compute_cycles", "compute"),
    (COMM, "comm_cycles", "comm"),
    (OVERHEAD, "overhead_cycles", "overhead"),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseLedgers:
    """One phase's ledgers: one per step (generate's decode) or one for the whole phase.
    `repeats`: identical steps one ledger stands for, when every count divides by it.
    `block_regions`: which region runs iteration i of a repeated layer block, where known."""

    name: str
    ledgers: tuple[Ledger, ...]
    repeats: int = 1
    block_regions: Mapping[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    record: Record


@dataclasses.dataclass(frozen=True)
class _Block:
    name: str
    count: int
    children: tuple[_Leaf | _Block, ...]


_Node = _Leaf | _Block


def _split_cycles(nodes: Sequence[_Node]) -> dict[str, float]:
    """Exposed compute, communication and overhead cycles of one pass over `nodes`."""
    out = {"compute_cycles": 0.0, "comm_cycles": 0.0, "overhead_cycles": 0.0}
    for node in nodes:
        if isinstance(node, _Leaf):
            for key in out:
                out[key] += getattr(node.record, key)
        else:
            for key, value in _split_cycles(node.children).items():
                out[key] += value * node.count
    return out


def _num_records(nodes: Sequence[_Node]) -> int:
    return sum(1 if isinstance(n, _Leaf) else n.count * _num_records(n.children) for n in nodes)


def _tree(records: Sequence[Record], divide: int) -> list[_Node]:
    """Records (counts divided by `divide`) as leaves and repeated blocks: a maximal run of
    consecutive records with the same count c > 1 and first name component is one block."""
    nodes: list[_Node] = []
    i = 0
    while i < len(records):
        count, prefix = records[i].count // divide, records[i].op.split("/")[0]
        j = i + 1
        while (
            count > 1
            and j < len(records)
            and records[j].count // divide == count
            and records[j].op.split("/")[0] == prefix
        ):
            j += 1
        if count > 1:
            one = [dataclasses.replace(r, count=1) for r in records[i:j]]
            nodes.append(_Block(prefix, count, tuple(_Leaf(r) for r in one)))
        else:
            nodes.append(_Leaf(dataclasses.replace(records[i], count=1)))
        i = j
    return nodes


class _Writer:
    """Appends events for one phase (process `pid`), keeping the modelled clock in us."""

    def __init__(self, *, pid: int, start_us: float, device: Device, max_repeats: int) -> None:
        self.pid, self.now_us, self.device = pid, start_us, device
        self.max_repeats = max_repeats
        self.events: list[dict[str, Any]] = []
        self.used: set[int] = set()

    def us(self, cycles: float) -> float:
        return self.device.cycles_to_seconds(cycles) * 1e6

    def event(self, tid: int, name: str, start_us: float, dur_us: float, **args: Any) -> None:
        if dur_us <= 0:
            return
        self.used.add(tid)
        cat = args.pop("cat", TRACK_NAMES[tid])
        self.events.append(
            {"name": name, "cat": cat, "ph": "X", "pid": self.pid, "tid": tid}
            | {"ts": start_us, "dur": dur_us, "args": args}
        )

    def nodes(self, nodes: Sequence[_Node], regions: Mapping[int, int]) -> None:
        for index, node in enumerate(nodes):
            if len(self.events) >= PHASE_EVENT_BUDGET:
                rest = nodes[index:]
                count = _num_records(rest)
                self.aggregate(f"{count} more records", _split_cycles(rest), count, ())
                return
            if isinstance(node, _Leaf):
                self.leaf(node.record)
            else:
                self.block(node, regions)

    def leaf(self, rec: Record) -> None:
        start = self.now_us
        dominant = max(_SPLIT, key=lambda split: getattr(rec, split[1]))[2]
        self.event(
            OPS,
            rec.op,
            start,
            self.us(rec.latency_cycles),
            cat=dominant,
            tag=rec.tag,
            flops=rec.flops,
            bytes_injected=rec.bytes_injected,
            comm_busy_us=self.us(rec.comm_busy_cycles),
        )
        self.split({key: getattr(rec, key) for _, key, _ in _SPLIT}, rec.op, count=1)
        self.now_us = start + self.us(rec.latency_cycles)

    def split(self, cycles: Mapping[str, float], name: str, *, count: int) -> None:
        """Lay compute, exposed communication and overhead one after the other from now."""
        at = self.now_us
        for tid, key, _ in _SPLIT:
            dur = self.us(cycles[key])
            self.event(tid, name, at, dur, count=count)
            at += dur

    def block(self, block: _Block, regions: Mapping[int, int]) -> None:
        shown = min(block.count, self.max_repeats)
        # iteration i runs on region regions[i] when the block is the model's layers
        layers = regions if block.count == len(regions) else {}
        for i in range(shown):
            start = self.now_us
            self.nodes(block.children, {})
            extra = {"region": layers[i]} if i in layers else {}
            name = f"{block.name} [{i}/{block.count}]"
            self.event(BLOCKS, name, start, self.now_us - start, index=i, **extra)
        rest = block.count - shown
        if rest:
            cycles = {k: v * rest for k, v in _split_cycles(block.children).items()}
            name = f"{block.name} [{shown}..{block.count - 1}/{block.count}]"
            self.aggregate(name, cycles, rest, (BLOCKS,))

    def aggregate(
        self, name: str, cycles: Mapping[str, float], count: int, tracks: tuple[int, ...]
    ) -> None:
        """`count` further iterations as one event on `tracks`, on ops and on the split."""
        start, dur = self.now_us, self.us(sum(cycles.values()))
        for tid in (*tracks, OPS):
            self.event(tid, f"{name} (x{count})", start, dur, count=count, cat="aggregate")
        self.split(cycles, f"{name} (x{count})", count=count)
        self.now_us = start + dur


def _phase_events(writer: _Writer, phase: PhaseLedgers) -> None:
    many = len(phase.ledgers) > 1 or phase.repeats > 1
    steps = [(ledger, phase.repeats) for ledger in phase.ledgers]
    shown = 0
    for index, (ledger, repeats) in enumerate(steps):
        tree = _tree(ledger.records, repeats)
        for repeat in range(repeats):
            if shown == writer.max_repeats and many:
                _rest(writer, steps[index:], first=shown, already=repeat)
                return
            start = writer.now_us
            writer.nodes(tree, phase.block_regions)
            if many:
                writer.event(STEPS, f"step {shown}", start, writer.now_us - start, index=shown)
            shown += 1


def _rest(writer: _Writer, steps: list[tuple[Ledger, int]], *, first: int, already: int) -> None:
    """The remaining steps as one aggregate (the first ledger has `already` repeats shown)."""
    cycles = {"compute_cycles": 0.0, "comm_cycles": 0.0, "overhead_cycles": 0.0}
    count = 0
    for k, (ledger, repeats) in enumerate(steps):
        times = repeats - (already if k == 0 else 0)
        totals = ledger.totals()
        for key in cycles:
            cycles[key] += getattr(totals, key) * times / repeats
        count += times
    writer.aggregate(f"step {first}-{first + count - 1}", cycles, count, (STEPS, BLOCKS))


def _metadata(pid: int, name: str, tracks: set[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}},
        {
            "name": "process_sort_index",
            "ph": "M",
            "pid": pid,
            "tid": 0,
            "args": {"sort_index": pid},
        },
    ]
    for tid in sorted(tracks):
        out.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid}
            | {"args": {"name": TRACK_NAMES[tid]}}
        )
        out.append(
            {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid}
            | {"args": {"sort_index": tid}}
        )
    return out


def chrome_trace(
    phases: Sequence[PhaseLedgers],
    *,
    device: Device,
    metadata: Mapping[str, Any] | None = None,
    max_repeats: int = MAX_REPEATS,
) -> dict[str, Any]:
    """The trace-event JSON object (`{"traceEvents": [...], ...}`) of `phases` in order;
    `metadata` (the report's provenance, say) goes to `otherData`."""
    events: list[dict[str, Any]] = []
    now_us = 0.0
    for pid, phase in enumerate(phases, start=1):
        writer = _Writer(pid=pid, start_us=now_us, device=device, max_repeats=max_repeats)
        _phase_events(writer, phase)
        events += _metadata(pid, phase.name, writer.used) + writer.events
        now_us = writer.now_us
    other = {"modelled": True, "time": "modelled microseconds", **(metadata or {})}
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": other}


# ---- the two producers -----------------------------------------------------------------------
def _regions(layers: Sequence[range]) -> dict[int, int]:
    return {layer: index for index, held in enumerate(layers) for layer in held}


def _repeats(ledger: Ledger, steps: int) -> int:
    """`steps` when every record's count divides by it (the ledger is one step, repeated)."""
    whole = steps > 1 and all(rec.count % steps == 0 for rec in ledger.records)
    return steps if whole else 1


def estimate_trace(
    result: Estimate | BaselineEstimate, *, device: Device, max_repeats: int = MAX_REPEATS
) -> dict[str, Any]:
    """The modelled timeline of an `estimate` result (WaferLLM's or a baseline's, `system`)
    on `device` (the one it ran on)."""
    cost, steps = result.ledgers, max(result.report.output_len - 1, 1)
    phases = (
        PhaseLedgers(
            name="prefill",
            ledgers=(cost.prefill.ledger,),
            block_regions=_regions(result.prefill.layers),
        ),
        PhaseLedgers(name="transition", ledgers=(cost.transition,)),
        PhaseLedgers(
            name="decode",
            ledgers=(cost.decode.ledger,),
            repeats=_repeats(cost.decode.ledger, steps),
            block_regions=_regions(result.decode.layers),
        ),
    )
    metadata = _metadata_of(result.report)
    return chrome_trace(phases, device=device, metadata=metadata, max_repeats=max_repeats)


def generation_trace(
    output: RequestOutput, *, llm: LLM, max_repeats: int = MAX_REPEATS
) -> dict[str, Any]:
    """The modelled timeline of a request `llm` finished (its per-step ledgers)."""
    trace, plan = output.trace, llm.model.plan
    phases = (
        PhaseLedgers(
            name="prefill",
            ledgers=(trace.prefill,),
            block_regions=_regions([r.layers for r in plan.prefill.regions]),
        ),
        PhaseLedgers(name="transition", ledgers=(trace.transition,)),
        PhaseLedgers(
            name="decode",
            ledgers=tuple(trace.decode),
            block_regions=_regions([r.layers for r in plan.decode.regions]),
        ),
    )
    metadata = _metadata_of(output.report)
    return chrome_trace(phases, device=llm.device, metadata=metadata, max_repeats=max_repeats)


def _metadata_of(report: RequestReport) -> dict[str, Any]:
    keys = ("kind", "model", "device", "prompt_len", "output_len", "prefill_grid", "decode_grid")
    out = report.to_dict()
    return {key: out[key] for key in (*keys, "provenance")}
