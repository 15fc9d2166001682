"""mesh/memory.py: a watched walk's own SRAM peak beside the tracker's running maximum."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.errors import SramOverflowError
from waferllm.mesh.memory import SramTracker


def _tracker() -> SramTracker:
    return SramTracker(rows=2, cols=2, capacity_bytes=1000, origin=(0, 0))


def test_a_watch_sees_its_own_walk_not_what_an_earlier_walk_left_and_this_one_frees():
    sram = _tracker()
    sram.alloc("weights", 100)
    old = sram.alloc("earlier request's scratch", 500)
    with sram.watch() as watch:
        sram.free(old)
        with sram.scope():
            sram.alloc("scores", 200)
    assert sram.peak_bytes == 600  # the running maximum remembers the earlier request
    assert watch.bytes_per_core == 300


def test_a_watch_without_allocations_is_what_stays_resident():
    sram = _tracker()
    sram.alloc("weights", 100)
    with sram.watch() as watch:
        pass
    assert watch.bytes_per_core == 100


def test_two_watches_on_one_tracker_end_in_any_order_each_with_its_own_peak():
    # a mesh listed twice (a region shared by two devices' lists) is watched twice at once;
    # equal peaks once made the inner watch remove the outer one (ValueError at the end)
    sram = _tracker()
    with sram.watch() as outer:
        with sram.watch() as inner:
            sram.alloc("a", 100)
        sram.alloc("b", 300)
    assert (inner.bytes_per_core, outer.bytes_per_core) == (100, 400)


def _state(sram: SramTracker, keys: list[str], watch) -> tuple:
    return (keys, dict(sram.live), sram._total, sram.peak_bytes, watch.bytes_per_core)


def _batch_and_one_by_one(start: list, names: list[str], sizes: list) -> tuple[tuple, tuple]:
    """The tracker after `alloc_all(names, sizes)` and after `alloc` of each in turn, from
    the same start, inside a watch and a scope (whose keys the scope frees at its end)."""
    out = []
    for batched in (True, False):
        sram = _tracker()
        for name, nbytes in start:
            sram.alloc(name, nbytes)
        with sram.watch() as watch, sram.scope():
            if batched:
                keys = sram.alloc_all(names, sizes)
            else:
                keys = [sram.alloc(n, b) for n, b in zip(names, sizes, strict=True)]
            inside = _state(sram, keys, watch)
        out.append((inside, _state(sram, keys, watch)))
    return out[0], out[1]


def test_allocating_a_layers_buffers_at_once_equals_allocating_them_in_turn():
    """Keys (repeated names made unique), live bytes, totals, peaks and watches, and what a
    scope frees: whole-number sizes (the one check), per-core arrays and numpy numbers (in
    turn, as `alloc`), a start of either kind, and nothing at all."""
    per_core = np.array([[10, 0], [5, 7]])
    for start in ([], [("w", 100)], [("w", 100), ("x", per_core)], [("w#2", 3), ("w", 1)]):
        for names, sizes in [
            (["w", "w", "b"], [200, 0, 50]),
            (["w", "w", "w"], [1, 2, 3]),
            (["a", "b"], [per_core, 40]),
            (["a", "b"], [np.int64(30), 40]),
            ([], []),
        ]:
            batched, in_turn = _batch_and_one_by_one(start, names, sizes)
            for got, want in zip(batched, in_turn, strict=True):
                assert got[0] == want[0] and got[3:] == want[3:]
                assert type(got[3]) is type(want[3])
                assert got[1].keys() == want[1].keys()
                for key in want[1]:
                    np.testing.assert_array_equal(got[1][key], want[1][key])
                np.testing.assert_array_equal(got[2], want[2])
                assert type(got[2]) is type(want[2])


def test_buffers_that_overflow_together_fail_on_the_same_buffer_as_one_by_one():
    for names, sizes in [(["a", "b", "c"], [400, 500, 200]), (["a"], [1001])]:
        errors = []
        for batched in (True, False):
            sram = _tracker()
            with pytest.raises(SramOverflowError) as caught:
                if batched:
                    sram.alloc_all(names, sizes)
                else:
                    for n, b in zip(names, sizes, strict=True):
                        sram.alloc(n, b)
            errors.append((str(caught.value), dict(sram.live), sram.peak_bytes))
        assert errors[0] == errors[1]
