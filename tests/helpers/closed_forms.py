"""Comparing an estimate-mode closed form with the tensor walk it replaces (its oracle)."""

from __future__ import annotations

import dataclasses

import numpy as np

from waferllm.mesh.loads import LineRows, OuterRamp


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


def assert_same_traffic(a, b) -> None:  # type: ignore[no-untyped-def]
    """Every field equal; loads compared as the full arrays they stand for."""
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                assert x[k].shape == y[k].shape
                np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))
                assert x[k].max(initial=0.0) == y[k].max(initial=0.0)
        elif isinstance(x, (np.ndarray, LineRows, OuterRamp)):
            assert x.shape == y.shape, field.name
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            assert x.max(initial=0.0) == y.max(initial=0.0)
        else:
            assert x == y, field.name
    assert a.cycles == b.cycles
