"""Head layouts: the cached value-dim split of a kv-group equals its plain computation."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.kernels.heads import _value_dims, head_layout
from waferllm.mesh.geometry import split_sizes


@pytest.mark.parametrize("head_dim", [64, 128, 80])
def test_value_dims_cached_per_split_equal_the_plain_split_and_are_read_only(head_dim):
    pairs = head_dim // 2
    for cols in range(1, 40):
        splits = [tuple(int(x) for x in split_sizes(pairs, s)) for s in (cols, cols + 1)]
        k_slots = 2 * max(max(s) for s in splits)
        for split in splits:
            got = _value_dims(split, head_dim, k_slots)
            np.testing.assert_array_equal(got, _value_dims.__wrapped__(split, head_dim, k_slots))
            assert not got.flags.writeable and int(got.sum()) == head_dim


def test_a_layout_of_groups_of_two_sizes_holds_every_value_dim_once_per_group():
    heads = head_layout(8, 4, 128, 612)  # groups of 77 and 76 columns
    starts = np.cumsum(heads.group_sizes) - heads.group_sizes
    for start, size in zip(starts, heads.group_sizes, strict=True):
        dims = heads.num_vdims[start : start + size]
        assert int(dims.sum()) == 128
        np.testing.assert_array_equal(
            heads.first_vdim[start : start + size], np.cumsum(dims) - dims
        )


@pytest.mark.parametrize("seed", range(30))
def test_the_surplus_taken_at_once_equals_taking_it_one_dim_at_a_time(seed):
    """`_surplus_taken` (a merge of every column's decreasing fullness) against the walk that
    gives one dim at a time from the fullest column, on random groups and on the layouts'
    own splits (ties included: equal columns)."""
    from waferllm.kernels.heads import _surplus_taken, _surplus_taken_walk

    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 90))
    k_slots = int(rng.integers(1, 20))
    k = rng.integers(0, k_slots + 1, size) if seed % 3 else np.full(size, k_slots)
    v = rng.integers(0, k_slots + 1, size)
    surplus = int(rng.integers(0, int(v.sum()) + 1))
    want = _surplus_taken_walk(k, v, k_slots, surplus)
    np.testing.assert_array_equal(_surplus_taken(k, v, k_slots, surplus), want)
    assert int(want.sum()) == surplus
    for cols in (size, size + 1):
        head_dim = 2 * int(rng.integers(8, 80))
        split = tuple(int(x) for x in split_sizes(head_dim // 2, cols))
        k2 = 2 * np.asarray(split)
        budget = max(-(-2 * head_dim // cols), int(k2.max()))
        slots = int(k2.max())
        while np.minimum(budget - k2, slots).sum() < head_dim:
            budget += 1
        v2 = np.minimum(budget - k2, slots)
        extra = int(v2.sum()) - head_dim
        np.testing.assert_array_equal(
            _surplus_taken(k2, v2, slots, extra), _surplus_taken_walk(k2, v2, slots, extra)
        )
