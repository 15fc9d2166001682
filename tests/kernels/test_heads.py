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
