"""The ledger's kept sums equal the sums made from scratch, record for record.

`Ledger.totals`, `totals(prefix=...)` and `by_op` read products (`totals.weighted`) that the
ledger keeps and extends as records are appended; an overlap block's phases are merged once
per distinct list of traffics (`phases._merged`). Oracles: `sum_records` / `sum_groups` of
`weighted(records)` made afresh at each question, and `merge_all` of the traffics.
"""

from __future__ import annotations

import dataclasses
import math
import random

import torch

from waferllm.mesh import Axis, Charge, ChargeKind, Ledger, Mesh, ring_shift
from waferllm.mesh.phases import phase_cost
from waferllm.mesh.totals import _SUMMED, Totals, sum_groups, sum_records, weighted
from waferllm.mesh.traffic import merge_all

from .spy import device

KINDS = (ChargeKind.COMPUTE, ChargeKind.COMM, ChargeKind.OVERHEAD, ChargeKind.HOST_IO)


def _charge(rng: random.Random, *, huge: bool = False) -> Charge:
    return Charge(
        kind=rng.choice(KINDS),
        cycles=rng.uniform(0.0, 1e4) * rng.choice((1.0, 1e-7, 3.3)),
        flops=rng.randrange(0, 10**9) * (2**60 if huge else 1),
        sram_bytes=rng.randrange(0, 10**6),
        bytes_injected=rng.randrange(0, 10**5),
        link_byte_hops=rng.randrange(0, 10**7),
        critical_hops=rng.randrange(0, 900),
        critical_stages=rng.randrange(0, 30),
        host_bytes=rng.randrange(0, 10),
        overhead_cycles=rng.choice((0.0, 3.0, 0.1)),
    )


def _afresh(ledger: Ledger, prefix: str = ""):
    records = [r for r in ledger.records if r.op.startswith(prefix)]
    return sum_records(records, weighted(records))


def _groups_afresh(ledger: Ledger, depth: int):
    groups: dict[str, int] = {}
    group = [
        groups.setdefault("/".join(r.op.split("/")[:depth]), len(groups)) for r in ledger.records
    ]
    sums = sum_groups(ledger.records, group, len(groups), weighted(ledger.records))
    return dict(zip(groups, sums, strict=True))


def _looped(records) -> Totals:
    """Each field's `total += value * count` in record order from 0.0, the aligned records'
    latency apart: the definition, field by field, made by the dataclass's own __init__."""
    sums = dict.fromkeys(_SUMMED, 0.0)
    align = 0.0
    for rec in records:
        for name in _SUMMED:
            sums[name] += getattr(rec, name) * rec.count
        if rec.tag == "align":
            align += rec.latency_cycles * rec.count
    return Totals(**sums, align_cycles=align)


def _same_totals(got: Totals, want: Totals) -> None:
    assert got == want
    for field in dataclasses.fields(Totals):
        a, b = getattr(got, field.name), getattr(want, field.name)
        assert type(a) is type(b) and math.copysign(1.0, a) == math.copysign(1.0, b), field.name


def _grow(ledger: Ledger, rng: random.Random, *, huge_at: int | None) -> None:
    """Charges under nested scopes and tags, repeats, overlap blocks, extends; a question
    of every kind after each piece."""
    for step in range(60):
        scope = rng.choice(("layer", "head", "embed"))
        with ledger.scope(scope), ledger.scope(rng.choice(("attn", "mlp", "norm"))):
            if rng.random() < 0.3 and step != huge_at:
                with ledger.overlap("step", step_overhead_cycles=rng.choice((0.0, 7.5))):
                    for _ in range(rng.randrange(0, 4)):
                        ledger.charge("op", _charge(rng))
            else:
                with ledger.repeat(rng.randrange(1, 100)), ledger.tag(rng.choice(("", "align"))):
                    ledger.charge(f"op{rng.randrange(3)}", _charge(rng, huge=step == huge_at))
        if rng.random() < 0.1:
            other = Ledger()
            other.charge("x", _charge(rng))
            ledger.extend(other, count=rng.randrange(1, 5), scope=rng.choice(("", "copy")))
        assert ledger.totals() == _afresh(ledger)
        for prefix in ("layer/", "head/attn", "embed/norm/op1", "nothing"):
            assert ledger.totals(prefix=prefix) == _afresh(ledger, prefix)
        for depth in (1, 2, 3):
            groups, want = ledger.by_op(depth=depth), _groups_afresh(ledger, depth)
            assert groups == want
            assert list(groups) == list(want)  # in the order of their first records
    if huge_at is None:  # exact products: the loop's sums, from the kept totals and groups
        _same_totals(ledger.totals(), _looped(ledger.records))
        for name, totals in ledger.by_op(depth=2).items():
            members = [r for r in ledger.records if "/".join(r.op.split("/")[:2]) == name]
            _same_totals(totals, _looped(members))


def test_kept_totals_and_groups_equal_the_sums_made_afresh_after_every_append():
    for seed in range(4):
        _grow(Ledger(), random.Random(seed), huge_at=None)


def test_a_value_too_large_for_exact_products_switches_to_the_loop_from_then_on():
    """Flops past 2**53 make `weighted` None: the kept products too, before and after."""
    for seed, huge_at in ((5, 0), (6, 20), (7, 59)):
        ledger = Ledger()
        _grow(ledger, random.Random(seed), huge_at=huge_at)
        assert weighted(ledger.records) is None and ledger._products() is None


def test_a_phase_of_several_traffics_is_their_merge_however_often_it_recurs():
    """Two steps along X and Y and one along X again, in one phase: the same cycles, hops
    and stages as `merge_all` of them, on the first block and on the blocks that reuse it
    (the merge remembered); another order or other traffics are merged anew."""
    mesh = Mesh(device(), 5, 6)
    ledger = Ledger()
    data = torch.ones(5, 6, 16)
    for _ in range(3):
        for axes in ((Axis.X, Axis.Y), (Axis.Y, Axis.X), (Axis.X, Axis.Y, Axis.X)):
            with ledger.overlap("step"):
                for axis in axes:
                    ring_shift(mesh, data[..., : 8 * len(axes)], axis=axis, ledger=ledger, op="s")
            block = ledger.records[-1]
            charges = _last_charges(mesh, axes, data)
            merged = merge_all([c.traffic for c in charges])
            want = (merged.cycles, merged.critical_hops, merged.critical_stages)
            assert phase_cost(charges) == want
            assert block.comm_busy_cycles == merged.cycles
            assert block.critical_hops == merged.critical_hops


def _last_charges(mesh: Mesh, axes: tuple[Axis, ...], data: torch.Tensor) -> list[Charge]:
    """The charges of one block's steps, caught by a ledger of their own."""
    caught: list[Charge] = []

    class Catch(Ledger):
        def charge(self, op: str, charge: Charge, *, phase: int = 0) -> None:
            caught.append(charge)

    for axis in axes:
        ring_shift(mesh, data[..., : 8 * len(axes)], axis=axis, ledger=Catch(), op="s")
    return caught
