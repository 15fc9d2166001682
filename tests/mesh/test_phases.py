"""An overlap block's concurrent traffics priced without building their merge
(`phases.merged_cost`): the cycles, critical hops and stages of `traffic.merge_all`, with the
size term remembered by the loads' identities."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.device import tiny
from waferllm.mesh import phases
from waferllm.mesh.geometry import Axis
from waferllm.mesh.traffic import line_traffic, merge_all


def _traffics(seed: int):
    rng = np.random.default_rng(seed)
    device, shape = tiny(), (5, 7)
    out = []
    for _ in range(int(rng.integers(2, 6))):
        axis = Axis.X if rng.integers(2) else Axis.Y
        num, lines = shape[axis.tensor_dim], shape[axis.other.tensor_dim]
        per_line = bool(rng.integers(2))
        size = (lines, num) if per_line else (num,)
        src, dst = rng.integers(0, num, size), rng.integers(0, num, size)
        nbytes = rng.integers(0, 3, size) * int(rng.integers(0, 2))  # some carry nothing
        out.append(
            line_traffic(
                device,
                shape,
                axis,
                src=src,
                dst=dst,
                nbytes=nbytes,
                # ties of the latency term: 17 hops or 2 stages (tiny: 1 and 8.5 cycles)
                critical_hops=int(rng.choice([0, 3, 17])),
                critical_stages=int(rng.choice([0, 2])) if rng.integers(2) else 0,
            )
        )
    if rng.integers(2):
        out.append(out[0].streamed())  # its loads shared
    return out


@pytest.mark.parametrize("seed", range(40))
def test_merged_cost_is_the_merged_traffics_cycles_hops_and_stages(seed):
    traffics = _traffics(seed)
    merged = merge_all(traffics)
    want = (merged.cycles, merged.critical_hops, merged.critical_stages)
    assert phases.merged_cost(traffics) == want
    assert phases.merged_cost(traffics) == want  # the remembered size term


def test_a_step_streamed_behind_another_reuses_its_size_term_and_pays_its_own_latency():
    (first, *rest) = _traffics(3)
    streamed = [first.streamed(), *rest]
    phases._size_term.cache_clear()
    phases.merged_cost([first, *rest])
    phases.merged_cost(streamed)
    assert phases._size_term.cache_info().hits == 1
    merged = merge_all(streamed)
    assert phases.merged_cost(streamed) == (
        merged.cycles,
        merged.critical_hops,
        merged.critical_stages,
    )
