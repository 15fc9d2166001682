"""Comparing an estimate-mode closed form with the tensor walk it replaces (its oracle)."""

from __future__ import annotations


def assert_same_runs(runs) -> int:  # type: ignore[no-untyped-def]
    """`runs` = ((walked ledger, mesh, output), (closed ledger, mesh, output)): the same
    records, SRAM peak and live maximum, routes, and output tensor; the number of records."""
    (walked, w_mesh, w_out), (closed, c_mesh, c_out) = runs
    assert [repr(r) for r in closed.records] == [repr(r) for r in walked.records]
    assert c_mesh.sram.peak_bytes == w_mesh.sram.peak_bytes
    assert c_mesh.sram.live_bytes_max == w_mesh.sram.live_bytes_max
    assert c_mesh.routes.routes_per_core == w_mesh.routes.routes_per_core
    assert (c_out.data.shape, c_out.data.dtype) == (w_out.data.shape, w_out.data.dtype)
    assert (c_out.layout, c_out.name, c_out.sram_key) == (w_out.layout, w_out.name, w_out.sram_key)
    return len(walked.records)
