"""Closed-form traffic of the patterns an estimate prices on every new grid (one-hop chains,
multicasts to owner maps, ring steps with per-line counts) equals what the segment walk
(`line_traffic`) or the dense per-line sum computes: every field, every array, the cycles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.closed_forms import assert_same_traffic as _same_traffic

from waferllm.device import tiny
from waferllm.mesh import Axis, patterns, ring_traffic, rings
from waferllm.mesh.geometry import RingKind
from waferllm.mesh.loads import LinePlus, LineRows, OuterRamp
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic
from waferllm.mesh.traffic import Traffic, line_traffic


def _owner_map(rng: np.random.Generator, lines: int, num: int, *, far: bool) -> np.ndarray:
    """Groups of consecutive cores rooted inside, or with `far` anywhere on the line."""
    out = np.empty((lines, num), dtype=np.int64)
    for line in range(lines):
        start = 0
        while start < num:
            group = np.arange(start, min(start + int(rng.integers(1, 6)), num))
            roots = [*group, int(rng.integers(0, num))] if far else list(group)
            out[line, group] = rng.choice(roots)
            start += len(group)
    return out


def _repeated_rows(rng: np.random.Generator, lines: int, num: int, *, far: bool) -> np.ndarray:
    """An owner map whose lines repeat a few distinct rows (dist-GEMM-T's kv-group roots)."""
    base = _owner_map(rng, int(rng.integers(1, 4)), num, far=far)
    return base[rng.integers(0, len(base), lines)]


def _shape(axis: Axis, num: int, other: int) -> tuple[int, int]:
    return (other, num) if axis is Axis.X else (num, other)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_closed_form_chains_equal_the_one_hop_segment_walk(seed, axis):
    rng = np.random.default_rng(seed)
    num, other = int(rng.integers(2, 11)), int(rng.integers(1, 6))
    lines = (1, other)[seed % 2]
    owner = (_owner_map, _repeated_rows)[seed % 3 != 1](rng, lines, num, far=seed >= 8)
    nbytes = int(rng.integers(1, 5000))
    shape, dev = _shape(axis, num, other), tiny()
    got = chain_traffic.__wrapped__(dev, shape, axis, Owners.of_map(owner), nbytes)
    pos = np.broadcast_to(np.arange(num), owner.shape)
    far = int(np.abs(owner - pos).max())
    walked = line_traffic(
        dev, shape, axis, src=pos, dst=pos + np.sign(owner - pos), nbytes=nbytes,
        critical_hops=far, critical_stages=max(far - 1, 0),
    )  # fmt: skip
    _same_traffic(got, walked)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_closed_form_multicasts_equal_the_segment_walk(seed, axis, monkeypatch):
    rng = np.random.default_rng(seed)
    num, other = int(rng.integers(2, 11)), int(rng.integers(1, 6))
    lines = (1, other)[seed % 2]
    owner = (_owner_map, _repeated_rows)[seed % 3 != 1](rng, lines, num, far=seed >= 9)
    owners = Owners.of_map(owner)
    nbytes = int(rng.integers(1, 5000))
    shape, dev = _shape(axis, num, other), tiny()
    got = multicast_traffic.__wrapped__(dev, shape, axis, owners, nbytes)
    monkeypatch.setattr(patterns, "_run_loads", lambda *_: None)
    _same_traffic(got, multicast_traffic.__wrapped__(dev, shape, axis, owners, nbytes))


@pytest.mark.parametrize("seed", range(20))
def test_an_owner_map_is_kept_as_its_distinct_rows_in_order_of_appearance(seed):
    from waferllm.mesh.patterns import distinct_rows

    rng = np.random.default_rng(seed)
    lines, num = int(rng.integers(1, 30)), int(rng.integers(1, 40))
    owner = _repeated_rows(rng, lines, num, far=True)
    table, index = distinct_rows(owner)
    np.testing.assert_array_equal(table[index], owner)
    assert len({row.tobytes() for row in table}) == len(table)  # distinct
    assert list(index[np.sort(np.unique(index, return_index=True)[1])]) == list(range(len(table)))
    np.testing.assert_array_equal(Owners.of_map(owner).array(), owner)


def _dense_ring_traffic(dev, shape, axis, size, kind, counts, nbytes) -> Traffic:
    """Every line's loads summed on its own: counts[0][j] forward and counts[1][j] backward
    logical lines on physical line j."""
    lines = shape[axis.other.tensor_dim]
    uniform = bool((counts == counts[:, :1]).all())
    links: dict = {}
    ramp_in, ramp_out = np.zeros((1, 1)), np.zeros((1, 1))
    injected = byte_hops = hops = 0
    for steps, weights in ((1, counts[0]), (-1, counts[1])):
        unit = ring_traffic.walked_unit(dev, shape, axis, size, kind, steps, nbytes)
        if not weights.any() or unit.bytes_injected == 0:
            continue
        hops = max(hops, unit.critical_hops)
        w = (weights[:1] if uniform else weights).astype(np.float64)
        for key, load in unit.links.items():
            links[key] = links.get(key, 0.0) + w[:, None] * load
        w_ramp = w[:, None] if axis is Axis.X else w[None, :]
        ramp_in = ramp_in + w_ramp * unit.ramp_in
        ramp_out = ramp_out + w_ramp * unit.ramp_out
        injected += unit.bytes_injected // lines * int(weights.sum())
        byte_hops += unit.link_byte_hops // lines * int(weights.sum())
    return Traffic(
        device=dev, shape=shape, critical_hops=hops, bytes_injected=injected,
        link_byte_hops=byte_hops, links=links, ramp_in=ramp_in, ramp_out=ramp_out,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_ring_steps_priced_per_distinct_count_pair_equal_the_dense_sum(seed, axis):
    rng = np.random.default_rng(seed)
    num, lines = int(rng.integers(1, 9)), int(rng.integers(1, 7))
    per = int(rng.integers(1, 4))
    kind = (RingKind.INTERLEAVED, RingKind.PLAIN)[seed % 2]
    across = int(rng.integers(1, 4))
    fwd = rng.integers(0, across + 1, lines) if seed % 4 else np.full(lines, across)
    if seed % 3 == 0:
        fwd = np.full(lines, int(rng.integers(0, across + 1)))
    back = across - fwd if seed % 5 else rng.integers(0, across + 1, lines)  # any pairs
    counts = np.stack([fwd, back]).astype(np.int64)
    shape, dev = _shape(axis, num, lines), tiny()
    args = (dev, shape, axis, num * per, kind)
    got = rings._ring_traffic.__wrapped__(*args, counts.tobytes(), 24)
    _same_traffic(got, _dense_ring_traffic(*args, counts, 24))
    for nbytes in (24, 1, 0, int(rng.integers(2, 5000)), 2**20 + 3):  # scaled from 1 byte
        got = rings._ring_step_traffic(*args, counts.tobytes(), nbytes)
        _same_traffic(got, _dense_ring_traffic(*args, counts, nbytes))


def _dense(t: Traffic) -> Traffic:
    """`t` with its ramps as plain (rows, cols) arrays."""
    full = np.zeros(t.shape)
    return dataclasses.replace(
        t, ramp_in=full + np.asarray(t.ramp_in), ramp_out=full + np.asarray(t.ramp_out)
    )


@pytest.mark.parametrize("seed", range(10))
def test_concurrent_steps_along_both_axes_price_as_the_summed_ramps(seed):
    rng = np.random.default_rng(seed)
    rows, cols, dev = int(rng.integers(2, 9)), int(rng.integers(2, 9)), tiny()
    shape = (rows, cols)

    def step(axis: Axis, nbytes: int, full: bool) -> Traffic:
        num = shape[axis.tensor_dim]
        lines = shape[axis.other.tensor_dim] if full else 1
        owner = _owner_map(rng, lines, num, far=False)
        return chain_traffic.__wrapped__(dev, shape, axis, Owners.of_map(owner), nbytes)

    x, y = (
        step(Axis.X, int(rng.integers(1, 999)), False),
        step(Axis.Y, int(rng.integers(1, 999)), False),
    )
    merged = x.merged(y)
    assert isinstance(merged.ramp_in, OuterRamp)
    dense = dataclasses.replace(x, ramp_in=x.ramp_in + y.ramp_in, ramp_out=x.ramp_out + y.ramp_out)
    dense = dataclasses.replace(dense, links={**x.links, **y.links}, **{
        f: getattr(merged, f) for f in ("critical_hops", "critical_stages", "bytes_injected",
                                        "link_byte_hops", "mean_slack_cycles")})  # fmt: skip
    _same_traffic(_dense(merged), dense)
    assert merged.cycles == dense.cycles
    for other in (step(Axis.X, 7, False), step(Axis.Y, 5, False), step(Axis.X, 3, True), merged):
        again, plain = merged.merged(other), dense.merged(_dense(other))
        np.testing.assert_array_equal(np.zeros(shape) + np.asarray(again.ramp_in), plain.ramp_in)
        assert again.cycles == plain.cycles


def test_fractional_ramp_loads_are_summed_not_kept_apart():
    from waferllm.mesh.loads import add_loads as add_ramps

    row, col = np.array([[0.5, 1.0, 2.0]]), np.array([[1.0], [3.0]])
    assert not isinstance(add_ramps(row, col), OuterRamp)
    np.testing.assert_array_equal(add_ramps(row, col), row + col)
    whole = add_ramps(row * 2, col)
    assert isinstance(whole, OuterRamp) and whole.max() == 7.0 and whole.shape == (2, 3)
    np.testing.assert_array_equal(add_ramps(whole, row), row * 2 + col + row)


@pytest.mark.parametrize("axis", [0, 1])
def test_line_rows_behave_as_the_gathered_array(axis):
    from waferllm.mesh.loads import line_rows

    rng = np.random.default_rng(axis)
    rows = rng.integers(0, 50, (3, 6)).astype(float)
    rows = rows if axis == 0 else rows.T
    index = np.array([2, 0, 0, 1, 2, 2, 1])
    lazy, full = line_rows(rows, index, axis), np.take(rows, index, axis=axis)
    assert isinstance(lazy, LineRows) and lazy.shape == full.shape
    np.testing.assert_array_equal(np.asarray(lazy), full)
    np.testing.assert_array_equal(np.asarray(lazy.T), full.T)
    assert lazy.max(initial=0.0) == full.max() and lazy.T.max() == full.max()
    np.testing.assert_array_equal(np.asarray(lazy + lazy), full + full)
    other = rng.integers(0, 9, full.shape).astype(float)
    np.testing.assert_array_equal(lazy + other, full + other)
    np.testing.assert_array_equal(other + lazy, other + full)
    per_line = rng.integers(0, 3, len(index)).astype(float)  # a step along the other axis
    per_line = per_line[:, None] if axis == 0 else per_line[None, :]
    across = rng.integers(0, 9, (1, 6) if axis == 0 else (6, 1)).astype(float)
    for vector, kind in ((per_line, LinePlus), (across, LineRows)):
        summed = lazy + vector
        assert isinstance(summed, kind) and summed.max() == (full + vector).max()
        assert summed.shape == full.shape
        np.testing.assert_array_equal(np.asarray(summed), full + vector)
        np.testing.assert_array_equal(np.asarray(vector + lazy), vector + full)
    assert line_rows(rows, np.arange(rows.shape[axis]), axis) is rows  # every line its own
    assert LineRows(np.zeros((2, 0)), index, 0).max(initial=0.0) == 0.0


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("seed", range(4))
def test_steps_of_one_owner_map_and_per_line_values_add_factored_as_the_full_sum(axis, seed):
    # an overlap block of two steps along one axis whose lines share an owner map (equal
    # index arrays, not the same object) and two steps along the other (one value per line):
    # the sum stays factored, whatever the order, with the full sum's arrays and max
    rng = np.random.default_rng(seed)
    lines, width = 9, 7
    index = rng.integers(0, 3, lines)
    index[:3] = [0, 1, 2]  # every row is some line's
    first, second = (rng.integers(0, 50, (3, width)).astype(float) for _ in range(2))
    if axis == 1:
        first, second = first.T, second.T
    a, b = LineRows(first, index, axis), LineRows(second, index.copy(), axis)
    shape = (lines, 1) if axis == 0 else (1, lines)
    near, far = (rng.integers(0, 9, shape).astype(float) for _ in range(2))
    full = np.asarray(a)
    terms = [near, a, b, far]
    want = ((near + full) + np.asarray(b)) + far
    for order in ([0, 1, 2, 3], [1, 2, 0, 3], [0, 1, 3, 2], [3, 2, 1, 0]):
        got = terms[order[0]]
        for k in order[1:]:
            got = got + terms[k]
        assert isinstance(got, LinePlus)  # never gathered
        assert got.max() == want.max()
        np.testing.assert_array_equal(np.asarray(got), want)
    assert isinstance(a + b, LineRows)
    other_lines = LineRows(first, index[::-1].copy(), axis)  # other lines: summed in full
    np.testing.assert_array_equal(a + other_lines, full + np.asarray(other_lines))


@pytest.mark.parametrize("seed", range(10))
def test_direct_move_cuts_count_every_element_crossing_each_cut(seed):
    from waferllm.mesh.relayout_elements import _direct_cuts
    from waferllm.mesh.run_terms import run_cuts as _run_cuts
    from waferllm.mesh.runs import Runs

    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 12))
    src, dst = rng.integers(0, length, (2, int(rng.integers(0, 20))))
    want = np.zeros((2, max(length - 1, 0)))
    for s, d in zip(src, dst, strict=True):
        for cut in range(min(s, d), max(s, d)):  # cut i joins cores i and i + 1
            want[0 if d > s else 1, cut] += 1
    got = _direct_cuts(src, dst, length)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    by_runs = _run_cuts(Runs.of(src, dst), length)  # the same cuts from the move's runs
    assert by_runs.dtype == np.float64
    np.testing.assert_array_equal(by_runs, want)


def test_a_read_only_owner_map_is_grouped_once_and_a_writable_one_every_time():
    from waferllm.mesh.charges import owners_of

    owner = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [1, 1, 1, 3]])
    assert owners_of(owner) == Owners.of_map(owner)
    owner[2, 3] = 1  # a writable map may change between charges
    np.testing.assert_array_equal(owners_of(owner).array(), owner)
    owner.setflags(write=False)
    first = owners_of(owner)
    assert owners_of(owner) is first
    np.testing.assert_array_equal(first.array(), owner)
    assert owners_of(owner.copy()) == first  # the same map under another array


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_patterns_priced_per_byte_and_scaled_equal_the_pattern_priced_at_each_size(seed, axis):
    """`pattern_cache.per_byte`: chains, multicasts (runs reaching their owners or cut off from
    them, one line or many) and K-tree reduces, each at several sizes after its 1-byte
    pricing is cached, against the plain pattern at that size: every field and array."""
    from waferllm.mesh.ktree import best_fanouts, tree_plan
    from waferllm.mesh.patterns import tree_traffic

    rng = np.random.default_rng(100 + seed)
    num, other = int(rng.integers(2, 11)), int(rng.integers(1, 6))
    lines = (1, other)[seed % 2]
    owner = (_owner_map, _repeated_rows)[seed % 3 != 1](rng, lines, num, far=seed >= 6)
    shape, dev = _shape(axis, num, other), tiny()
    plan = tree_plan(num, best_fanouts(num, 1.0, 30.0), 1.0, 30.0)
    cases = [
        (chain_traffic, Owners.of_map(owner)),
        (multicast_traffic, Owners.of_map(owner)),
        (multicast_traffic, Owners.of_roots(num, rng.integers(0, num, lines))),
        (tree_traffic, plan),
    ]
    sizes = [1, int(rng.integers(2, 5000)), 0, 2**20 + 3, int(rng.integers(2, 5000))]
    if seed % 2:  # another order: a size first (priced as it is), then others (scaled)
        sizes = sizes[1:] + sizes[:1]
    for pattern, what in cases:
        for nbytes in sizes:
            got = pattern(dev, shape, axis, what, nbytes)
            _same_traffic(got, pattern.__wrapped__(dev, shape, axis, what, nbytes))


@pytest.mark.parametrize("seed", range(20))
def test_per_line_additions_keep_the_distinct_row_value_pairs_in_numpys_order(seed):
    """`LineRows._plus_per_line` finds the distinct (row, value) pairs from a 1-D key: the
    same rows, in the same order, and the same line index as np.unique over the pairs."""
    rng = np.random.default_rng(seed)
    axis = seed % 2
    distinct = int(rng.integers(1, 5))
    rows = rng.integers(0, 50, (distinct, 7)).astype(float)
    rows = rows if axis == 0 else rows.T
    lines = int(rng.integers(1, 30))
    index = rng.integers(0, distinct, lines)
    values = rng.integers(0, 4, lines).astype(float) * 16.0
    got = LineRows(rows, index, axis)._plus_per_line(values)
    pairs = np.stack([index.astype(np.float64), values])
    want_pairs, want_index = np.unique(pairs, axis=1, return_inverse=True)
    want = np.take(rows, want_pairs[0].astype(np.int64), axis=axis)
    want = want + (want_pairs[1][:, None] if axis == 0 else want_pairs[1][None, :])
    np.testing.assert_array_equal(got.rows, want)
    np.testing.assert_array_equal(got.index, want_index.reshape(-1))
    assert got.axis == axis


@pytest.mark.parametrize("seed", range(20))
def test_a_per_line_addition_kept_apart_has_the_max_and_sums_of_the_added_rows(seed):
    """`LinePlus` (a `LineRows` plus one value per line) answers its max from the rows'
    maxima, the same float as the max of the added rows even for fractional loads, and
    anything else through those rows."""
    rng = np.random.default_rng(seed)
    axis = seed % 2
    rows = rng.random((int(rng.integers(1, 5)), 7)) * 10.0 ** int(rng.integers(0, 12))
    rows = rows if axis == 0 else rows.T
    lines = int(rng.integers(1, 30))
    index = rng.integers(0, rows.shape[axis], lines)
    values = rng.random(lines) * 10.0 ** int(rng.integers(0, 12))
    lazy = LinePlus(LineRows(rows, index, axis), values)
    eager = LineRows(rows, index, axis)._plus_per_line(values)
    full = np.take(rows, index, axis=axis) + (values[:, None] if axis == 0 else values[None, :])
    assert lazy.max() == eager.max() == full.max()
    assert lazy.max(initial=float(full.max()) + 1.0) == float(full.max()) + 1.0
    np.testing.assert_array_equal(np.asarray(lazy), full)
    np.testing.assert_array_equal(np.asarray(lazy.T), full.T)
    other = rng.random(full.shape)
    np.testing.assert_array_equal(np.asarray(lazy + other), full + other)
    np.testing.assert_array_equal(np.asarray(other + lazy), other + full)
    assert LinePlus(LineRows(np.zeros((2, 0)), index % 2, 0), values).max(initial=0.0) == 0.0


@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
def test_a_chain_to_one_root_in_closed_form_is_its_one_hop_segment_walk(axis):
    """`chain_traffic` to one root on every line (`group_patterns.root_chain`) against the
    segments walked (`line_traffic`) and the owner rows' closed form, every root of lines of
    2..12 cores, on one line and on a grid; a root off the line is priced as before."""
    dev, compared = tiny(), 0
    for num, other, nbytes in [(n, o, b) for n in range(2, 13) for o in (1, 3) for b in (1, 77)]:
        shape = _shape(axis, num, other)
        for root in range(-1, num + 1):
            owners = Owners.of_roots(num, np.array([root]))
            got = chain_traffic.__wrapped__(dev, shape, axis, owners, nbytes)
            table, index = owners.rows()
            far = int(np.abs(table - np.arange(num)).max())
            _same_traffic(
                got, patterns._chain_closed_form(dev, shape, axis, table, index, far, nbytes)
            )
            if not 0 <= root < num:
                continue
            pos = np.arange(num)
            walked = line_traffic(
                dev, shape, axis, src=pos, dst=pos + np.sign(root - pos), nbytes=nbytes,
                critical_hops=far, critical_stages=max(far - 1, 0),
            )  # fmt: skip
            _same_traffic(got, walked)
            compared += 1
    assert compared == 2 * sum(range(2, 13)) * 2
