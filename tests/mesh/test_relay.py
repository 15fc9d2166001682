"""SUMMA's one-root multicasts priced for every root at once (`relay.one_root_multicasts`)
equal `relayed_multicast_traffic` of that root alone: every field, every load array, the
cycles; and what `cross_multicast` charges is unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferllm.device import tiny, wse2
from waferllm.mesh import Axis
from waferllm.mesh.relay import one_root_multicasts, relayed_multicast_traffic
from waferllm.mesh.traffic import Traffic


def _same_traffic(got: Traffic, want: Traffic) -> None:
    for field in dataclasses.fields(want):
        x, y = getattr(got, field.name), getattr(want, field.name)
        if field.name == "links":
            assert x.keys() == y.keys()
            for k in y:
                assert x[k].shape == y[k].shape and x[k].dtype == y[k].dtype
                np.testing.assert_array_equal(x[k], y[k])
        elif isinstance(y, np.ndarray):
            assert x.shape == y.shape and x.dtype == y.dtype, field.name
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y and type(x) is type(y), field.name
    assert got.cycles == want.cycles


@pytest.mark.parametrize("axis", [Axis.X, Axis.Y])
@pytest.mark.parametrize(
    ("num", "segment", "nbytes"),
    [(2, 1, 6), (3, 2, 6), (7, 3, 6), (7, 5, 6), (9, 6, 2), (12, 12, 6), (12, 5, 0), (40, 7, 3)],
)
def test_every_single_root_prices_as_its_own_relayed_multicast(axis, num, segment, nbytes):
    shape = (3, num) if axis is Axis.X else (num, 4)
    # beta = 2 alpha: roots whose two streams tie with different hops and relays (7/5, 9/6)
    tie = dataclasses.replace(tiny(), stage_latency_cycles=2 * tiny().hop_latency_cycles)
    for dev in (tiny(), wse2(), tie):
        every = one_root_multicasts.__wrapped__(dev, shape, axis, segment=segment, nbytes=nbytes)
        assert len(every) == num
        for r in range(num):
            want = relayed_multicast_traffic.__wrapped__(
                dev, shape, axis, roots=(r,), segment=segment, nbytes=nbytes
            )
            _same_traffic(every[r], want)
