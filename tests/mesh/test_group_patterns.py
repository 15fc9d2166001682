"""Chains and multicasts to owners given as group offsets (`group_patterns`) equal the
patterns' generic pricing of the same owner map (its distinct rows and each line's row):
every field, every array, the cycles, for dist-GEMM-T's owners on square and rectangular
grids, along either axis, at several sizes, and for random offsets."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from helpers.closed_forms import assert_same_traffic

from waferllm.device import tiny, wse2
from waferllm.kernels.gemm_t import block_owners, step_owners
from waferllm.mesh import Axis
from waferllm.mesh.group_patterns import UNIT, TableRows
from waferllm.mesh.loads import LineRows
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic

GRIDS = [  # (rows, group sizes along the columns)
    (4, (4,)),
    (7, (1, 1, 1, 1)),
    (5, (3, 3)),
    (11, (2, 3, 2, 3)),
    (36, (5, 4, 5, 4, 5, 4, 5, 4)),
    (60, (8,) * 8),
    (72, (9, 8) * 4),
    (97, (13, 12, 12, 13)),
    (2, (1,) * 6),
]


def _same_as_generic(owners: Owners, shape, axis, nbytes, dev) -> None:  # type: ignore[no-untyped-def]
    generic = Owners.of_rows(*owners.rows())
    for pattern in (chain_traffic, multicast_traffic):
        got = pattern.__wrapped__(dev, shape, axis, owners, nbytes)
        want = pattern.__wrapped__(dev, shape, axis, generic, nbytes)
        assert_same_traffic(got, want)
        assert list(got.links) == list(want.links)
        for name in ("ramp_in", "ramp_out"):
            mine, theirs = getattr(got, name), getattr(want, name)
            assert isinstance(mine, LineRows) == isinstance(theirs, LineRows)
            # beside a step along the other axis (one value per line), scaled, transposed
            per_line = np.arange(mine.shape[1 - axis.tensor_dim], dtype=float) * 7.0
            per_line = per_line[:, None] if axis is Axis.X else per_line[None, :]
            assert (mine + per_line).max(initial=0.0) == (theirs + per_line).max(initial=0.0)
            np.testing.assert_array_equal(np.asarray(mine + per_line), theirs + per_line)
            np.testing.assert_array_equal(np.asarray(mine.T), np.asarray(theirs).T)
        assert_same_traffic(got.scaled(3), want.scaled(3))


@pytest.mark.parametrize(("rows", "sizes"), GRIDS)
@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_dist_gemm_t_owners_price_as_their_owner_map(rows, sizes, storage):
    dev = dataclasses.replace(wse2(), storage_dtype=storage)
    owners = block_owners(sizes, rows)
    cols = sum(sizes)
    for step in sorted({0, 1, rows // 2}):
        group = step_owners(owners, rows, step)
        for nbytes in (1, 96 * dev.storage_bytes, 4099):
            _same_as_generic(group, (rows, cols), Axis.X, nbytes, dev)


@pytest.mark.parametrize("seed", range(12))
def test_random_group_offsets_price_as_their_owner_map(seed):
    rng = np.random.default_rng(seed)
    sizes = tuple(int(s) for s in rng.integers(1, 7, int(rng.integers(1, 6))))
    distinct = int(rng.integers(1, 5))
    offsets = np.stack([rng.integers(0, sizes) for _ in range(distinct)])
    other = int(rng.integers(1, 9))
    lines = (1, other)[seed % 2]
    index = np.concatenate([np.arange(distinct), rng.integers(0, distinct, 40)])[:lines]
    if lines < distinct:  # every distinct row is some line's
        offsets, index = offsets[:lines], np.arange(lines)
    owners = Owners.of_group_rows(sizes, offsets, index)
    for axis in (Axis.X, Axis.Y):
        num = sum(sizes)
        shape = (other, num) if axis is Axis.X else (num, other)
        for nbytes in (1, int(rng.integers(2, 5000))):
            _same_as_generic(owners, shape, axis, nbytes, tiny())


@pytest.mark.parametrize("seed", range(12))
def test_a_multicast_from_one_root_on_every_line_prices_as_its_owner_map(seed):
    rng = np.random.default_rng(200 + seed)
    num, other = int(rng.integers(1, 30)), int(rng.integers(1, 7))
    roots = sorted({0, num - 1, num // 2, int(rng.integers(0, num))})
    for root in roots:
        owners = Owners.of_roots(num, np.array([root]))
        for axis in (Axis.X, Axis.Y):
            shape = (other, num) if axis is Axis.X else (num, other)
            for nbytes in (1, int(rng.integers(2, 5000))):
                dev = (tiny(), wse2())[seed % 2]
                got = multicast_traffic.__wrapped__(dev, shape, axis, owners, nbytes)
                generic = Owners.of_rows(*owners.rows())
                want = multicast_traffic.__wrapped__(dev, shape, axis, generic, nbytes)
                assert_same_traffic(got, want)
                assert list(got.links) == list(want.links)
                for name in ("ramp_in", "ramp_out"):
                    assert type(getattr(got, name)) is type(getattr(want, name))


@pytest.mark.parametrize(("rows", "sizes"), GRIDS)
def test_table_rows_peaks_at_every_size_and_orientation_are_their_rows_maxima(rows, sizes):
    """`TableRows.row_peaks` (the groups' count peaks, found once per tables, times the
    bytes) against each distinct row's largest load, scaled and transposed."""
    groups = step_owners(block_owners(sizes, rows), rows, 1).group_rows()
    assert groups is not None
    for kind in UNIT:
        loads = TableRows(groups, groups.tables(kind), slice(None), 0, 6.0)
        for factor, transposed in itertools.product((1, 3, 4099, 2**30 + 1), (False, True)):
            got = loads.scaled(factor)
            got = got.T if transposed else got
            dense = np.asarray(got.rows)
            np.testing.assert_array_equal(
                got.row_peaks(), dense.max(axis=1 if not transposed else 0)
            )
            assert got.max(initial=0.0) == float(np.asarray(got).max(initial=0.0))
    assert len(groups._count_peaks) == len(UNIT)  # each kind's peaks found once
