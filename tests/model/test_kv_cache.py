"""The shift-based KV cache and the concatenation baseline (SPEC.md §10.9, §10.4 capacity)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.model.kv_cache import (
    KvCacheFullError,
    KvPolicy,
    RowCounts,
    kv_capacity_tokens,
    max_new_tokens,
)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    prompt=st.integers(1, 40),
    steps=st.integers(0, 40),
)
def test_shift_keeps_row_counts_non_increasing_southwards_and_within_one(rows, prompt, steps):
    counts = RowCounts.balanced(KvPolicy.SHIFT, rows, 100, prompt)
    for _ in range(steps + 1):
        n = counts.counts
        assert (np.diff(n) <= 0).all() and n[0] - n[-1] <= 1
        append = counts.plan_append()
        counts.commit(append)
    assert counts.total == prompt + steps + 1


def test_shift_passes_the_oldest_entry_north_from_the_rows_south_of_r0():
    counts = RowCounts(KvPolicy.SHIFT, 4, 10, np.array([3, 3, 2, 2]))
    append = counts.plan_append()
    # r0 = 2: rows 3 sends north, row 2 keeps what it receives
    assert append.target == 2 and list(append.senders) == [3]
    assert append.counts_after.tolist() == [3, 3, 3, 2]
    full = RowCounts(KvPolicy.SHIFT, 3, 10, np.array([2, 2, 2]))
    assert list(full.plan_append().senders) == [1, 2]  # every row as full: r0 = 0


def test_concat_piles_every_new_token_on_the_last_row():
    counts = RowCounts.balanced(KvPolicy.CONCAT, 4, 50, 10)
    for _ in range(20):
        append = counts.plan_append()
        assert append.target == 3 and not append.senders
        counts.commit(append)
    assert counts.counts.tolist() == [3, 3, 2, 22]


def test_capacity_and_new_tokens_of_both_policies():
    # 4 rows of 10 slots: shift fills every slot; concat after a balanced 13-token prompt has
    # 10 - 3 = 7 free slots on its last row, and the first generated token needs no slot
    assert kv_capacity_tokens(KvPolicy.SHIFT, 4, 10, 13) == 40
    assert max_new_tokens(KvPolicy.SHIFT, 4, 10, 13) == 28
    assert kv_capacity_tokens(KvPolicy.CONCAT, 4, 10, 13) == 20
    assert max_new_tokens(KvPolicy.CONCAT, 4, 10, 13) == 8
    assert max_new_tokens(KvPolicy.SHIFT, 4, 10, 41) == 0


@pytest.mark.parametrize("policy", list(KvPolicy))
def test_a_full_cache_refuses_the_next_token_clearly(policy):
    counts = RowCounts.balanced(policy, 2, 3, 5)
    counts.commit(counts.plan_append())
    with pytest.raises(KvCacheFullError, match="KV cache is full"):
        counts.plan_append()
    with pytest.raises(KvCacheFullError, match="do not fit"):
        RowCounts.balanced(policy, 2, 3, 7)


def test_a_window_bounds_the_shift_cache_by_the_trained_context_not_by_sram():
    limits = {"window": 6, "max_positions": 100}
    assert kv_capacity_tokens(KvPolicy.SHIFT, 2, 3, 40, **limits) == 100
    assert max_new_tokens(KvPolicy.SHIFT, 2, 3, 40, **limits) == 61
    # a window wider than the cache cannot evict before it is full; concat never evicts
    assert kv_capacity_tokens(KvPolicy.SHIFT, 2, 2, 4, **limits) == 4
    assert kv_capacity_tokens(KvPolicy.CONCAT, 2, 3, 4, **limits) == 5
