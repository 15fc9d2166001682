"""mesh/memory.py: a watched walk's own SRAM peak beside the tracker's running maximum."""

from __future__ import annotations

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
