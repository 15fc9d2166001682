"""dist-GEMM-T's owner maps in closed form (`step_owners`, group offsets) have the maps'
distinct rows, in the same order, and the same row for every line."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.kernels.gemm_t import block_owners, owner_map, step_owners
from waferllm.mesh.patterns import Owners

GROUPS = [  # (group sizes, rows): one group, equal groups, groups of two sizes, odd shapes
    ((4,), 4),
    ((1, 1, 1, 1), 7),
    ((3, 3), 5),
    ((2, 3, 2, 3), 11),
    ((5, 4, 5, 4, 5, 4, 5, 4), 36),
    ((77,) * 4 + (76,) * 4, 612),
    ((68,) * 8, 540),
    ((90, 89) * 4, 719),
    ((1,) * 6, 2),
]


@pytest.mark.parametrize(("sizes", "rows"), GROUPS)
def test_the_closed_form_owners_equal_those_of_the_owner_map_at_every_step(sizes, rows):
    owners = block_owners(sizes, rows)
    for step in sorted({0, 1, rows // 2, rows - 1}):
        expected = Owners.of_map(owner_map(owners, rows, step))
        got = step_owners(owners, rows, step)
        assert got.group_rows() is not None  # kept as group offsets, for group_patterns
        for mine, theirs in zip(got.rows(), expected.rows(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_array_equal(got.array(), owner_map(owners, rows, step))
