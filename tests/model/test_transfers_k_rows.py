"""A matmul's prefill K rows (`transfers._plain_k_rows`, from the rows' edges) equal the steps
of every index's row (`transfers._padded_rows`, the oracle), for K padded as `pad_k_rows`
pads it (and wider), across grid sides: LLaMA3-8B's hidden and FFN sizes on wafer-scale
grids, and small sizes where a column tile holds a row or less.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.mesh.runs import steps_of
from waferllm.mesh.tiling import padded_k
from waferllm.model import transfers


def assert_same_steps(k: int, rows: int, cols: int, padded: int) -> None:
    got = transfers._plain_k_rows.__wrapped__(k, rows, cols, padded)
    want = steps_of(transfers._padded_rows(k, rows, cols, padded))
    assert got.size == want.size == k
    for a, b in ((got.starts, want.starts), (got.values, want.values)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 20000),
    rows=st.integers(1, 760),
    cols=st.integers(1, 760),
    extra=st.integers(0, 2),
)
def test_plain_k_rows_are_the_steps_of_every_index_row(k, rows, cols, extra):
    size = np.lcm(rows, cols)
    assert_same_steps(k, rows, cols, padded_k(rows, cols, k) + extra * int(size))


def test_plain_k_rows_on_llama3_8b_sizes_and_small_grids():
    for k in (4096, 14336, 1, 7, 64):
        for rows, cols in [(720, 660), (611, 613), (1, 1), (3, 5), (64, 1), (1, 64), (700, 700)]:
            assert_same_steps(k, rows, cols, padded_k(rows, cols, k))
