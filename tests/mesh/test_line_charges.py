"""A collective's charge from its line priced once at 1 byte (`line_charges`) equals the
charge of its traffic priced on the grid (`Charge.comm`, the path `comm` took before and still
takes inside overlap blocks): every field, on both axes, at any size, lines and side, on
every device; and `comm.charge_allreduce` / `broadcast` record what that path records."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import Device, tiny, wse2, wse3
from waferllm.mesh import Axis, Ledger, Mesh, Mode
from waferllm.mesh.comm import (
    ReduceAlgorithm,
    broadcast,
    charge_allreduce,
    charge_broadcast,
)
from waferllm.mesh.cost import Charge
from waferllm.mesh.ktree import best_fanouts, default_fanouts, tree_plan
from waferllm.mesh.line_charges import LineTerms, line_charge, root_owners, tree_terms
from waferllm.mesh.patterns import chain_traffic, multicast_traffic, tree_traffic

DEVICES = {"wse2": wse2(), "wse3": wse3(), "tiny": tiny()}


def _fields(charge: Charge) -> dict[str, object]:
    out = dict(charge.__dict__)
    out.pop("traffic")
    return out


def _grid(axis: Axis, num: int, lines: int) -> tuple[int, int]:
    return (lines, num) if axis is Axis.X else (num, lines)


def _oracle(device: Device, kind: str, axis: Axis, num: int, what, nbytes: int, lines: int):
    """`Charge.comm` of the plain pattern priced on the whole grid (no cache, no scaling)."""
    shape = _grid(axis, num, lines)
    if kind == "tree":
        traffic = tree_traffic.__wrapped__(device, shape, axis, what, nbytes)
    else:
        pattern = chain_traffic if kind == "chain" else multicast_traffic
        traffic = pattern.__wrapped__(device, shape, axis, root_owners(num, what), nbytes)
    return Charge.comm(traffic)


def _plans(device: Device, num: int) -> list:
    alpha, beta = device.hop_latency_cycles, device.stage_latency_cycles
    fanouts = {best_fanouts(num, alpha, beta), default_fanouts(num), (num,)}
    if num > 3:
        fanouts.add((2,) * num.bit_length())
    return [tree_plan(num, f, alpha, beta) for f in sorted(fanouts)]


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(DEVICES)),
    num=st.one_of(st.integers(2, 40), st.sampled_from([95, 226, 357, 401, 660, 750])),
    lines=st.sampled_from([1, 2, 5, 357]),
    nbytes=st.sampled_from([1, 2, 3, 64, 1000, 4096 * 3 + 2]),
    axis=st.sampled_from([Axis.X, Axis.Y]),
    data=st.data(),
)
def test_a_line_charge_equals_the_charge_of_the_grid_traffic(name, num, lines, nbytes, axis, data):
    device = DEVICES[name]
    kind = data.draw(st.sampled_from(["tree", "chain", "multicast"]))
    if kind == "tree":
        what = data.draw(st.sampled_from(_plans(device, num)))
    else:
        what = data.draw(st.sampled_from(sorted({0, num // 2, num - 1, num // 3})))
    fast = line_charge(device, kind, num, what, nbytes, lines)
    assert fast.traffic is None
    assert _fields(fast) == _fields(_oracle(device, kind, axis, num, what, nbytes, lines))


def _mesh(device: Device, rows: int, cols: int) -> Mesh:
    return Mesh(device, rows, cols, mode=Mode.ESTIMATE)


def _records(ledger: Ledger) -> list[dict[str, object]]:
    return [dataclasses.asdict(r) for r in ledger.records]


@pytest.mark.parametrize("name", sorted(DEVICES))
@pytest.mark.parametrize("shape", [(7, 7), (5, 9), (33, 2), (64, 61)])
@pytest.mark.parametrize("algorithm", [ReduceAlgorithm.KTREE, ReduceAlgorithm.PIPELINE])
def test_charge_allreduce_records_what_the_grid_traffic_charges(name, shape, algorithm):
    """Every size and axis, the default root and an interior one, with and without the
    broadcast: the records equal those of `Charge.comm` of the traffic on the grid, and a
    second call (cached) records the same again."""
    device = DEVICES[name]
    mesh = _mesh(device, *shape)
    for axis in (Axis.X, Axis.Y):
        num, lines = mesh.size(axis), mesh.size(axis.other)
        roots = [None] if algorithm is ReduceAlgorithm.KTREE else [None, num // 2]
        for root, numel, bcast in (
            (r, n, b) for r in roots for n in (1, 3, 640, 4099) for b in (True, False)
        ):
            nbytes = numel * device.storage_bytes
            ledger, expected = Ledger(), Ledger()
            for _ in range(2):
                charge_allreduce(
                    mesh,
                    axis=axis,
                    numel=numel,
                    ledger=ledger,
                    op="ar",
                    algorithm=algorithm,
                    root=root,
                    broadcast_result=bcast,
                )
                alpha, beta = device.hop_latency_cycles, device.stage_latency_cycles
                if algorithm is ReduceAlgorithm.KTREE:
                    plan = tree_plan(num, best_fanouts(num, alpha, beta), alpha, beta)
                    what, top, kind = plan, plan.root, "tree"
                else:
                    what = top = 0 if root is None else root
                    kind = "chain"
                expected.charge("ar.reduce", _oracle(device, kind, axis, num, what, nbytes, lines))
                if bcast:
                    charge = _oracle(device, "multicast", axis, num, top, nbytes, lines)
                    expected.charge("ar.bcast", charge)
            assert _records(ledger) == _records(expected), (axis, root, numel, bcast)


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_broadcasts_from_one_root_record_what_the_grid_traffic_charges(name):
    device = DEVICES[name]
    mesh = _mesh(device, 6, 11)
    for axis in (Axis.X, Axis.Y):
        num, lines = mesh.size(axis), mesh.size(axis.other)
        for root in sorted({0, 1, num // 2, num - 1}):
            data = torch.empty((6, 11, 3, 5), device="meta")
            ledger, expected = Ledger(), Ledger()
            broadcast(mesh, data, axis=axis, root=root, ledger=ledger, op="b")
            charge_broadcast(mesh, axis=axis, root=root, nbytes=7, ledger=ledger, op="c")
            nbytes = 15 * device.storage_bytes
            expected.charge("b", _oracle(device, "multicast", axis, num, root, nbytes, lines))
            expected.charge("c", _oracle(device, "multicast", axis, num, root, 7, lines))
            assert _records(ledger) == _records(expected)


def test_inside_an_overlap_block_the_traffic_is_kept_and_merged():
    """Overlap blocks merge the traffics of a phase: there two allreduces still charge their
    grid traffics, whose loads add up (the block's record equals that of the oracle's)."""
    device = DEVICES["wse2"]
    mesh = _mesh(device, 9, 9)
    ledger, expected = Ledger(), Ledger()
    with ledger.overlap("step"):
        for _ in range(2):
            charge_allreduce(mesh, axis=Axis.Y, numel=4096, ledger=ledger, op="ar")
    alpha, beta = device.hop_latency_cycles, device.stage_latency_cycles
    plan = tree_plan(9, best_fanouts(9, alpha, beta), alpha, beta)
    nbytes = 4096 * device.storage_bytes
    with expected.overlap("step"):
        for _ in range(2):
            expected.charge("ar.reduce", _oracle(device, "tree", Axis.Y, 9, plan, nbytes, 9))
            bcast = _oracle(device, "multicast", Axis.Y, 9, plan.root, nbytes, 9)
            expected.charge("ar.bcast", bcast, phase=1)
    assert _records(ledger) == _records(expected)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(DEVICES)),
    num=st.one_of(st.integers(1, 60), st.integers(61, 900)),
    data=st.data(),
)
def test_a_trees_terms_counted_from_its_segments_are_its_traffics(name, num, data):
    """`tree_terms` (segment counts) equals `LineTerms.of` the plain `tree_traffic` on one
    line at 1 byte, for the default trees and others (one chain, binary trees, three levels)."""
    device = DEVICES[name]
    alpha, beta = device.hop_latency_cycles, device.stage_latency_cycles
    fanouts = data.draw(
        st.sampled_from(
            [best_fanouts(num, alpha, beta), default_fanouts(num), (max(num, 1),)]
            + [(2,) * max(num.bit_length(), 1), (3, 3, max(-(-num // 9), 1))]
        )
    )
    plan = tree_plan(num, fanouts, alpha, beta)
    line = tree_traffic.__wrapped__(device, (1, num), Axis.X, plan, 1)
    assert tree_terms(plan, num) == LineTerms.of(line)
