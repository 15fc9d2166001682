"""The decode KV cache's tiles: positions in order, the shift's bytes, SRAM (SPEC.md §10.9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from waferllm.device import tiny
from waferllm.kernels.heads import head_layout
from waferllm.mesh.cost import Ledger
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.kv_cache import KvPolicy, RowCounts
from waferllm.model.kv_store import KvStore


def _store(mode: Mode, rows: int = 3) -> KvStore:
    mesh = Mesh(tiny(), rows, 2, mode=mode)
    heads = head_layout(1, 1, 4, 2)  # one kv head, head_dim 4 over 2 columns
    return KvStore(mesh, heads, layers=range(1), slots=8)


@pytest.mark.parametrize("policy", list(KvPolicy))
def test_the_store_keeps_positions_in_order_along_the_rows(policy):
    store = _store(Mode.FUNCTIONAL)
    rows = store.mesh.rows
    hd = 4
    prompt = 4
    k = torch.arange(prompt, dtype=torch.float32)[:, None].expand(prompt, hd)  # k = position
    counts = RowCounts.balanced(policy, rows, 8, prompt)
    store.fill(0, k, k + 100, counts)
    for position in range(prompt, prompt + 7):
        append = counts.plan_append()
        new = torch.full((rows, 2, 1, 2), float(position))
        store.write(0, new, new + 100, append, counts, Ledger())
        counts.commit(append)
        width = int(counts.counts.max())
        k_win, v_win = store.window(0, width)
        held = counts.slot_positions(counts.counts, width)
        filled = counts.slot_mask(counts.counts, width)
        assert torch.equal(
            k_win[:, 0, 0, 0][torch.as_tensor(filled)],
            torch.as_tensor(held[filled], dtype=torch.float32),
        )
        assert torch.equal(
            v_win[:, 1, 0, :, 1][torch.as_tensor(filled)],
            torch.as_tensor(held[filled] + 100, dtype=torch.float32),
        )


def test_the_shift_costs_one_hop_north_from_each_sending_row_and_no_routes():
    store = _store(Mode.ESTIMATE, rows=4)
    counts = RowCounts(KvPolicy.SHIFT, 4, 8, np.array([2, 2, 2, 2]))
    append = counts.plan_append()
    ledger = Ledger()
    tile = torch.empty((4, 2, 1, 2), device="meta")
    store.write(0, tile, tile, append, counts, ledger)
    (record,) = ledger.records
    nbytes = 2 * 2 * tiny().storage_bytes  # k and v, 2 slots each
    assert record.critical_hops == 1 and record.critical_stages == 0
    assert record.bytes_injected == 3 * 2 * nbytes  # rows 1, 2, 3 in both columns
    assert store.mesh.routes.routes_per_core == 0


def test_the_store_charges_its_full_capacity_to_sram():
    store = _store(Mode.FUNCTIONAL)
    # K and V: 2 x (1 kv head x 2 head-dim slots) x 8 slots x 2 bytes
    assert store.mesh.sram.live_bytes_max == 2 * 2 * 8 * 2
    store.free()
    assert store.mesh.sram.live_bytes_max == 0


# ---- sliding-window eviction -----------------------------------------------------------------
@pytest.mark.parametrize(("rows", "window", "prompt"), [(3, 5, 4), (3, 5, 9), (2, 4, 4), (4, 6, 1)])
def test_a_windowed_shift_cache_keeps_the_last_window_in_order_and_evicts_the_oldest(
    rows, window, prompt
):
    store = _store(Mode.FUNCTIONAL, rows=rows)
    k = torch.arange(prompt, dtype=torch.float32)[:, None].expand(prompt, 4)  # k = position
    counts = RowCounts.balanced(KvPolicy.SHIFT, rows, 8, prompt, window)
    assert counts.total == min(prompt, window) and counts.end == prompt
    store.fill(0, k, k + 100, counts)
    for position in range(prompt, prompt + 12):
        append = counts.plan_append()
        assert append.evict == (counts.total == window)
        new = torch.full((rows, 2, 1, 2), float(position))
        store.write(0, new, new + 100, append, counts, Ledger())
        counts.commit(append)
        assert counts.end == position + 1 and counts.total == min(position + 1, window)
        assert counts.counts.max() - counts.counts.min() <= 1
        assert np.all(np.diff(counts.counts) <= 0)  # never increasing southwards
        width = int(counts.counts.max())
        k_win, v_win = store.window(0, width)
        filled = counts.slot_mask(counts.counts, width)
        held = counts.slot_positions(counts.counts, width)[filled]
        # the last min(position + 1, window) positions, oldest first along the rows
        expected = np.arange(position + 1 - counts.total, position + 1)
        assert np.array_equal(held, expected)
        assert torch.equal(
            k_win[:, 0, 0, 0][torch.as_tensor(filled)],
            torch.as_tensor(expected, dtype=torch.float32),
        )
        assert torch.equal(
            v_win[:, 1, 0, :, 1][torch.as_tensor(filled)],
            torch.as_tensor(expected + 100, dtype=torch.float32),
        )


def test_an_eviction_shifts_every_row_but_the_first_one_hop_north():
    store = _store(Mode.ESTIMATE, rows=4)
    counts = RowCounts(KvPolicy.SHIFT, 4, 8, np.array([2, 2, 1, 1]), window=6, evicted=3)
    append = counts.plan_append()
    assert append.evict and list(append.senders) == [1, 2, 3]
    ledger = Ledger()
    tile = torch.empty((4, 2, 1, 2), device="meta")
    store.write(0, tile, tile, append, counts, ledger)
    (record,) = ledger.records
    nbytes = 2 * 2 * tiny().storage_bytes  # k and v, 2 slots each
    assert record.critical_hops == 1 and record.bytes_injected == 3 * 2 * nbytes
    counts.commit(append)
    assert list(counts.counts) == [2, 2, 1, 1] and counts.evicted == 4
