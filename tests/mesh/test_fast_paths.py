"""Host-speed paths: an unpriced ledger skips the cost model but not the data, the M and R
checks; cached traffic prices and index tensors stay correct; the ledger's fast totals and
extend compute exactly what the plain per-field loops compute."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from waferllm.device import tiny, with_overrides
from waferllm.errors import RouteOverflowError
from waferllm.mesh import (
    Axis,
    Charge,
    ChargeKind,
    Ledger,
    Mesh,
    Mode,
    Totals,
    UnpricedLedger,
    allreduce,
    broadcast,
    elementwise,
    matmul,
    reduce,
    ring_shift,
    segmented_allreduce,
    shift,
)
from waferllm.mesh.loads import LineRows, OuterRamp
from waferllm.mesh.patterns import Owners, multicast_traffic, tail_shift_traffic
from waferllm.mesh.traffic import line_traffic

from .spy import device


def program(mesh: Mesh, ledger: Ledger, x: torch.Tensor) -> list[torch.Tensor]:
    """Every primitive once (two roots kinds, every reduce algorithm, an overlap block)."""
    outs = []
    with ledger.overlap("step", step_overhead_cycles=3.0):
        outs.append(matmul(mesh, a=x, b=x.transpose(-1, -2), ledger=ledger, op="mm"))
        outs.append(ring_shift(mesh, x, axis=Axis.X, ledger=ledger, op="ring"))
    perm = np.roll(np.arange(mesh.rows), 1)
    outs.append(shift(mesh, x, axis=Axis.Y, dst=perm, ledger=ledger, op="shift"))
    outs.append(broadcast(mesh, x, axis=Axis.X, root=2, ledger=ledger, op="b1"))
    roots = np.arange(mesh.rows) % mesh.cols
    outs.append(broadcast(mesh, x, axis=Axis.X, root=roots, ledger=ledger, op="bl"))
    for algorithm in ("pipeline", "ring", "ktree"):
        outs.append(
            allreduce(mesh, x, axis=Axis.X, ledger=ledger, op=algorithm, algorithm=algorithm)
        )
    outs.append(
        allreduce(mesh, x, axis=Axis.X, ledger=ledger, op="pl", algorithm="pipeline", root=roots)
    )
    outs.append(allreduce(mesh, x, axis=Axis.Y, ledger=ledger, op="nb", broadcast_result=False))
    line, root = reduce(mesh, x, axis=Axis.Y, ledger=ledger, op="r", algorithm="ktree")
    outs += [line, torch.tensor(root)]
    outs.append(
        segmented_allreduce(mesh, x, axis=Axis.X, group_sizes=(2, 3), ledger=ledger, op="seg")
    )
    outs.append(elementwise(mesh, torch.exp, x, ledger=ledger, op="exp"))
    return outs


def fresh(mode: Mode = Mode.FUNCTIONAL) -> Mesh:
    return Mesh(device(), 4, 5, mode=mode)


def data(mesh: Mesh) -> torch.Tensor:
    x = torch.randn(mesh.rows, mesh.cols, 3, 6, generator=torch.Generator().manual_seed(0))
    return x if mesh.mode is Mode.FUNCTIONAL else x.to("meta")


def test_an_unpriced_ledger_moves_the_same_data_and_records_nothing():
    priced_mesh, unpriced_mesh = fresh(), fresh()
    priced, unpriced = Ledger(), UnpricedLedger()
    expected = program(priced_mesh, priced, data(priced_mesh))
    got = program(unpriced_mesh, unpriced, data(unpriced_mesh))
    assert priced.records and not unpriced.records
    assert len(expected) == len(got)
    for want, have in zip(expected, got, strict=True):
        assert want.shape == have.shape and torch.equal(want, have)


@pytest.mark.parametrize("mode", [Mode.FUNCTIONAL, Mode.ESTIMATE])
def test_an_unpriced_ledger_configures_the_same_routes(mode):
    priced_mesh, unpriced_mesh = fresh(mode), fresh(mode)
    program(priced_mesh, Ledger(), data(priced_mesh))
    program(unpriced_mesh, UnpricedLedger(), data(unpriced_mesh))
    assert unpriced_mesh.routes.sets.keys() == priced_mesh.routes.sets.keys()
    assert unpriced_mesh.routes.routes_per_core == priced_mesh.routes.routes_per_core > 0


def test_an_unpriced_ledger_still_enforces_the_route_budget():
    mesh = Mesh(with_overrides(tiny(), {"routes_per_core": 5}), 2, 6)
    x = torch.ones(2, 6, 4)
    reduce(mesh, x, axis=Axis.X, ledger=UnpricedLedger(), op="chain", algorithm="pipeline")
    assert mesh.routes.routes_per_core == 4
    with pytest.raises(RouteOverflowError):  # chain 4 + broadcast 2 > 5
        broadcast(mesh, x, axis=Axis.Y, root=0, ledger=UnpricedLedger(), op="b")


def test_an_unpriced_ledger_ignores_direct_charges_and_overlap_blocks():
    ledger = UnpricedLedger()
    ledger.charge("io", Charge(kind=ChargeKind.HOST_IO, cycles=5.0, host_bytes=2))
    with ledger.overlap("step", step_overhead_cycles=7.0):
        ledger.charge("mm", Charge(kind=ChargeKind.COMPUTE, cycles=9.0, flops=4))
    assert ledger.records == [] and ledger.totals().latency_cycles == 0.0
    assert Ledger.prices and not ledger.prices


def test_a_priced_ledger_record_carries_every_field_of_its_charge():
    ledger = Ledger()
    with ledger.scope("outer"), ledger.tag("align"), ledger.repeat(3):
        ledger.charge(
            "c",
            Charge(
                kind=ChargeKind.COMM,
                cycles=11.5,
                flops=1,
                bytes_injected=2,
                link_byte_hops=3,
                critical_hops=4,
                critical_stages=5,
                host_bytes=6,
                mean_slack_cycles=0.25,
            ),
        )
    (record,) = ledger.records
    assert (record.op, record.count, record.tag) == ("outer/c", 3, "align")
    assert (record.flops, record.bytes_injected, record.link_byte_hops) == (1, 2, 3)
    assert (record.critical_hops, record.critical_stages, record.host_bytes) == (4, 5, 6)
    assert (record.comm_cycles, record.comm_busy_cycles, record.compute_cycles) == (11.5, 11.5, 0)
    assert (record.overhead_cycles, record.host_io_cycles, record.mean_slack_cycles) == (
        0,
        0,
        0.25,
    )


def test_a_traffic_price_is_cached_but_a_replaced_traffic_is_priced_afresh():
    dev = device()
    traffic = multicast_traffic(dev, (1, 8), Axis.X, Owners.of_roots(8, np.array([0])), 16)
    # 7 hops * alpha 3 + 16 bytes / 4 bytes per cycle
    assert traffic.cycles == 7 * 3 + 4
    assert traffic.cycles is traffic.cycles
    streamed = dataclasses.replace(traffic, critical_hops=0, critical_stages=0)
    assert streamed.cycles == 4 and traffic.cycles == 25


def test_per_line_broadcasts_are_right_in_both_modes_and_for_every_root_set():
    """Index tensors are cached per source map and torch device: alternate the modes and
    the root sets and check every result against its dense meaning."""
    for roots in ([0, 1, 2, 3], [4, 4, 0, 1], [0, 1, 2, 3]):
        for mode in (Mode.ESTIMATE, Mode.FUNCTIONAL):
            mesh = fresh(mode)
            x = data(mesh)
            out = broadcast(mesh, x, axis=Axis.X, root=np.array(roots), ledger=Ledger(), op="b")
            assert out.device == x.device and out.shape == x.shape
            if mode is Mode.FUNCTIONAL:
                want = x[np.arange(4), np.array(roots)][:, None].expand_as(x)
                assert torch.equal(out, want)
            for column in (0, 3):
                out = broadcast(mesh, x, axis=Axis.Y, root=column, ledger=Ledger(), op="b")
                if mode is Mode.FUNCTIONAL:
                    assert torch.equal(out, x[column : column + 1].expand_as(x))
                    assert out.stride(0) == 0 and out.data_ptr() != x.data_ptr()  # one fresh tile


def random_ledger(seed: int) -> Ledger:
    rng = np.random.default_rng(seed)
    ledger = Ledger()
    kinds = list(ChargeKind)
    for i in range(40):
        charge = Charge(
            kind=kinds[int(rng.integers(len(kinds)))],
            cycles=float(rng.random() * 100),
            flops=int(rng.integers(1000)),
            bytes_injected=int(rng.integers(1000)),
            link_byte_hops=int(rng.integers(1000)),
            critical_hops=int(rng.integers(10)),
            critical_stages=int(rng.integers(10)),
            host_bytes=int(rng.integers(10)),
        )
        tag = "align" if i % 3 == 0 else "other"
        with ledger.tag(tag), ledger.repeat(int(rng.integers(1, 5))):
            ledger.charge(f"g{i % 4}/op{i}", charge)
    return ledger


def test_totals_are_the_count_weighted_sums_in_record_order():
    ledger = random_ledger(0)
    for prefix in ("", "g1"):
        got = ledger.totals(prefix=prefix)
        for field in dataclasses.fields(got):
            if field.name == "align_cycles":
                continue
            want = 0.0
            for rec in ledger.records:
                if rec.op.startswith(prefix):
                    want += getattr(rec, field.name) * rec.count
            assert getattr(got, field.name) == want, field.name
        align = 0.0
        for rec in ledger.records:
            if rec.op.startswith(prefix) and rec.tag == "align":
                align += rec.latency_cycles * rec.count
        assert got.align_cycles == align > 0


def _loop_totals(records: list) -> dict[str, str]:
    """The plain per-field loop (`total += value * count` from 0.0), as reprs (-0.0 shows)."""
    out = {}
    for field in dataclasses.fields(Totals):
        total = 0.0
        for rec in records:
            if field.name == "align_cycles":
                if rec.tag == "align":
                    total += rec.latency_cycles * rec.count
            else:
                total += getattr(rec, field.name) * rec.count
        out[field.name] = repr(total)
    return out


def _reprs(totals: Totals) -> dict[str, str]:
    return {f.name: repr(getattr(totals, f.name)) for f in dataclasses.fields(totals)}


@pytest.mark.parametrize("huge", [False, True])
def test_totals_and_op_groups_of_many_records_equal_the_plain_loop_bit_for_bit(huge):
    """Hundreds of records of mixed magnitudes (where any other summation order rounds
    differently), negative zeros, and with `huge` integers beyond float precision."""
    rng = np.random.default_rng(9)
    ledger = Ledger()
    kinds = list(ChargeKind)
    for i in range(700):
        charge = Charge(
            kind=kinds[i % len(kinds)],
            cycles=-0.0 if i % 50 == 7 else float(rng.random() * 10.0 ** rng.integers(-3, 9)),
            flops=int(rng.integers(10**12)),
            link_byte_hops=int(rng.integers(10**9)),
        )
        with ledger.tag("align" if i % 4 == 0 else ""), ledger.repeat(int(rng.integers(1, 3000))):
            ledger.charge(f"g{i % 3}/s{i % 5}/op", charge)
    if huge:  # (2**53 + 1) * 3 rounds to 3 * 2**53 + 4; rounding 2**53 + 1 first gives 3 * 2**53
        with ledger.repeat(3):
            ledger.charge(
                "g0/big", Charge(kind=ChargeKind.HOST_IO, cycles=1.0, host_bytes=2**53 + 1)
            )
    zeros = Ledger()
    with zeros.repeat(3):
        zeros.charge("z", Charge(kind=ChargeKind.COMPUTE, cycles=-0.0))
    for led in (ledger, zeros):
        assert _reprs(led.totals()) == _loop_totals(led.records)
    assert _reprs(ledger.totals(prefix="g1")) == _loop_totals(
        [r for r in ledger.records if r.op.startswith("g1")]
    )
    for depth in (1, 2):
        groups = ledger.by_op(depth=depth)
        assert len(groups) == (3 if depth == 1 else 15 + huge)
        for key, totals in groups.items():
            members = [r for r in ledger.records if "/".join(r.op.split("/")[:depth]) == key]
            assert _reprs(totals) == _loop_totals(members), key


def test_extend_relabels_and_multiplies_counts_and_leaves_the_source_alone():
    source = random_ledger(1)
    before = list(source.records)
    target = Ledger()
    with target.repeat(2):
        target.extend(source, count=3, scope="layer")
    assert source.records == before
    for new, old in zip(target.records, source.records, strict=True):
        assert new == dataclasses.replace(old, op=f"layer/{old.op}", count=old.count * 6)
        assert new is not old and isinstance(new, type(old))
    assert target.totals().flops == 6 * source.totals().flops


def test_an_unpriced_ledger_nests_scopes_tags_repeats_and_overlaps_and_keeps_nothing():
    mesh = fresh()
    ledger = UnpricedLedger()
    x = data(mesh)
    with ledger.scope("layer"), ledger.tag("align"), ledger.repeat(3):
        with ledger.scope("inner"), ledger.overlap("step", step_overhead_cycles=5.0):
            out = ring_shift(mesh, x, axis=Axis.X, ledger=ledger, op="ring")
        with ledger.overlap("again"):  # a second block after the first closed
            out = ring_shift(mesh, out, axis=Axis.X, ledger=ledger, op="ring")
    assert ledger.records == [] and not ledger.in_overlap
    assert torch.equal(out, ring_shift(mesh, x, axis=Axis.X, ledger=ledger, op="r", steps=2))


def _same_traffic(a, b) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))
        elif isinstance(x, (np.ndarray, LineRows, OuterRamp)):
            np.testing.assert_array_equal(np.broadcast_to(np.asarray(x), y.shape), np.asarray(y))
            assert x.shape == y.shape
        else:
            assert x == y, field.name
    assert a.cycles == b.cycles


@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
@pytest.mark.parametrize("first", [1, 2, 5, 6])
def test_the_closed_form_tail_shift_equals_the_segment_walk(axis, first):
    dev = tiny()
    shape = (7, 5) if axis is Axis.Y else (5, 7)
    src = np.arange(first, 7)
    walked = line_traffic(
        dev, shape, axis, src=src, dst=src - 1, nbytes=96, critical_hops=1, critical_stages=0
    )
    _same_traffic(tail_shift_traffic.__wrapped__(dev, shape, axis, first, 96), walked)


@pytest.mark.parametrize("seed", range(6))
def test_one_hop_loads_equal_the_per_line_sums(seed):
    from waferllm.mesh.traffic import _one_hop_loads, _segment_loads

    rng = np.random.default_rng(seed)
    lines, num = (1, 3, 5)[seed % 3], 7
    pos = np.broadcast_to(np.arange(num), (lines, num))
    dst = np.clip(pos + rng.integers(-1, 2, size=(lines, num)), 0, num - 1)
    size = np.where(dst == pos, 0.0, rng.integers(1, 100, size=(lines, num)).astype(float))
    fast = _one_hop_loads(Axis.X, pos, dst, size)
    walked = _segment_loads(Axis.X, pos, dst, size, num)
    assert fast[0].keys() == walked[0].keys()
    for k in fast[0]:
        np.testing.assert_array_equal(fast[0][k], walked[0][k])
    np.testing.assert_array_equal(fast[1], walked[1])
    np.testing.assert_array_equal(fast[2], walked[2])


def _owner_maps(rng: np.random.Generator, lines: int, num: int, *, far: bool) -> np.ndarray:
    """Random owner maps: groups of consecutive cores rooted inside (any core of the group),
    or with `far` also anywhere on the line (runs cut off from their roots)."""
    out = np.empty((lines, num), dtype=np.int64)
    for line in range(lines):
        start = 0
        while start < num:
            group = np.arange(start, min(start + int(rng.integers(1, 5)), num))
            roots = [*group, int(rng.integers(0, num))] if far else list(group)
            out[line, group] = rng.choice(roots)
            start += len(group)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_multicast_loads_in_closed_form_equal_the_per_line_sums(seed, monkeypatch):
    from waferllm.mesh import patterns

    rng = np.random.default_rng(seed)
    owner = _owner_maps(rng, (1, 4)[seed % 2], 9, far=seed >= 6)
    owners = Owners.of_map(owner)
    dev = tiny()
    fast = multicast_traffic.__wrapped__(dev, (9, 9), Axis.X, owners, 24)
    monkeypatch.setattr(patterns, "_run_loads", lambda *_: None)
    walked = multicast_traffic.__wrapped__(dev, (9, 9), Axis.X, owners, 24)
    _same_traffic(fast, walked)


def test_relayout_busiest_core_over_distinct_values_equals_the_dense_max():
    from waferllm.mesh import relayout, relayout_elements

    rng = np.random.default_rng(3)
    for _ in range(200):
        rows, cols = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        n_a, n_b = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        # a crossed move: element (a, b) from (a_src[a], b_src[b]) to (b_dst[b], a_dst[a])
        a_src, a_dst = rng.integers(0, rows, n_a), rng.integers(0, cols, n_a)
        b_src, b_dst = rng.integers(0, cols, n_b), rng.integers(0, rows, n_b)
        if rng.random() < 0.5:  # many elements stay home
            a_dst = np.where(rng.random(n_a) < 0.8, rng.choice(b_src, n_a), a_dst)
            b_dst = np.where(rng.random(n_b) < 0.8, rng.choice(a_src, n_b), b_dst)
        stay = np.zeros((rows, cols))
        for a in range(n_a):
            for b in range(n_b):
                if a_src[a] == b_dst[b] and b_src[b] == a_dst[a]:
                    stay[a_src[a], b_src[b]] += 1
        cells = relayout_elements._stay_cells(a_src, a_dst, b_dst, b_src, cols)
        sparse = np.zeros((rows, cols))
        np.add.at(sparse, (cells.row, cells.col), cells.count)
        assert np.array_equal(sparse, stay)
        per_row, per_col = (
            relayout_elements._counts(a_src, rows),
            relayout_elements._counts(b_src, cols),
        )
        dense = np.outer(per_row, per_col) - stay
        assert relayout._busiest(per_row, per_col, cells) == dense.max(initial=0.0)
        # a direct move: what stays is an outer product of per-row and per-column counts
        home = (relayout_elements._counts(a_src[a_src == b_dst[0]], rows), per_col)
        dense = np.outer(per_row, per_col) - np.outer(*home)
        assert relayout._busiest(per_row, per_col, home) == dense.max(initial=0.0)


def test_relayed_multicast_link_loads_in_closed_form_equal_the_segment_sums():
    from waferllm.mesh import relay

    dev = tiny()
    for num, segment in ((2, 1), (3, 2), (7, 3), (12, 12), (12, 5)):
        rootsets = [(r,) for r in range(num)] + [(0, num - 1), (1, 1, num // 2)]
        for axis, shape in ((Axis.X, (4, num)), (Axis.Y, (num, 3))):
            for roots in rootsets:
                for nbytes in (0, 6):
                    root = np.asarray(roots)
                    got = relay.relayed_multicast_traffic.__wrapped__(
                        dev, shape, axis, roots=roots, segment=segment, nbytes=nbytes
                    )
                    src = np.concatenate([root[root > 0], root[root < num - 1]])
                    dst = np.concatenate(
                        [
                            np.zeros(int((root > 0).sum()), int),
                            np.full(int((root < num - 1).sum()), num - 1),
                        ]
                    )
                    want = line_traffic(
                        dev, shape, axis, src=src, dst=dst, nbytes=nbytes,
                        critical_hops=got.critical_hops, critical_stages=got.critical_stages,
                    )  # fmt: skip
                    assert got.links.keys() == want.links.keys()
                    for key, load in want.links.items():
                        assert np.array_equal(got.links[key], load)
                    assert got.link_byte_hops == want.link_byte_hops


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bool, torch.int32])
@pytest.mark.parametrize("reduce_op", ["sum", "max"])
def test_lines_combined_on_meta_tiles_have_the_shape_and_dtype_torch_gives(dtype, reduce_op):
    from waferllm.mesh.comm import ReduceOp, combine_lines

    op = ReduceOp(reduce_op)
    for shape, dim in (((3, 4, 2, 5), 0), ((3, 4, 2, 5), 1), ((1, 4, 7), 1)):
        real = torch.zeros(shape, dtype=dtype)
        if reduce_op == "max" and dtype is torch.bool:
            continue  # amax of booleans is not a reduce the kernels use
        want = combine_lines(real, dim, op)
        got = combine_lines(torch.empty(shape, dtype=dtype, device="meta"), dim, op)
        assert (got.shape, got.dtype) == (want.shape, want.dtype)


def test_extending_a_ledger_once_without_a_scope_appends_the_same_records():
    ledger, other = Ledger(), Ledger()
    other.charge("a", Charge(kind=ChargeKind.COMPUTE, cycles=3.0))
    with other.repeat(4):
        other.charge("b", Charge(kind=ChargeKind.COMPUTE, cycles=5.0))
    ledger.extend(other)
    assert ledger.records == other.records
    with ledger.repeat(2):
        ledger.extend(other)  # counted: copies with the counts scaled
    assert [r.count for r in ledger.records] == [1, 4, 2, 8]
