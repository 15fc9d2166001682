"""T10's layer plans (estimate/systems/t10.py) in closed form on one layer of the tiny model
(pinned device, tests/helpers/baselines.py), its pace, and the route budget at full scale."""

from __future__ import annotations

import math

from helpers.baselines import ALPHA, BETA, LINK, pinned_device, tiny_shapes

from waferllm.device import wse2
from waferllm.estimate.systems import t10_constants
from waferllm.estimate.systems.common import LayerShapes
from waferllm.estimate.systems.t10 import T10Constants, t10_decode, t10_pace, t10_prefill
from waferllm.model.config_sources import load_config

SHAPES = tiny_shapes()


def device():
    return pinned_device()


def test_t10_decode_layer_has_ten_fan_ins_each_in_closed_form():
    """4x4 grid, c_p = 100 cycles (above every partial's n*s/W): each fan-in costs
    3*alpha + 3*100 on its 4-core line, and there are 10 of them (WaferLLM's 10 allreduces)."""
    plan = t10_decode(
        device(), (4, 4), SHAPES, 16, T10Constants(busy_cores=4, per_partial_cycles=100)
    )
    fan_ins = [r for r in plan.ledger.expanded() if r.op.endswith(".fan_in")]
    assert len(fan_ins) == 10
    assert {r.comm_cycles for r in fan_ins} == {3 * ALPHA + 3 * 100}


def test_t10_prefill_syncs_the_whole_region_after_every_superstep():
    """Busy sub-grid 2x2 of a 4x4 region: 9 GEMMs (7 projections, scores, P@V) x 2 supersteps
    (one pass each), each ending with a barrier over the 16 cores: per axis of 4 cores a
    chained reduce to core 0 (3*alpha + 2*beta + 4/W) and a multicast back (3*alpha + 4/W)."""
    plan = t10_prefill(
        device(), (4, 4), SHAPES, 8, T10Constants(busy_cores=4, per_partial_cycles=1)
    )
    barriers = [r for r in plan.ledger.expanded() if "/barrier." in r.op]
    assert len(barriers) == 9 * 2 * 4
    per_axis = (3 * ALPHA + 2 * BETA + 4 / LINK) + (3 * ALPHA + 4 / LINK)
    assert sum(r.comm_cycles for r in barriers) == 9 * 2 * 2 * per_axis


def test_t10_pace_cuts_until_the_tiles_fit():
    pace = t10_pace(m=100, k=100, n=600, batch=1, storage_bytes=2, free_bytes=48 * 1024)
    n_r, k_r = math.ceil(600 / pace.r_n), math.ceil(100 / pace.r_k)
    assert (100 * n_r + 2 * (100 * k_r + k_r * n_r)) * 2 <= 48 * 1024
    assert pace.passes > 1


def test_full_scale_t10_relays_its_rings_within_21_routes_and_pays_for_it():
    plan = t10_prefill(
        wse2(), (480, 480), LayerShapes.of(load_config("llama3-8b")), 4096, t10_constants()
    )
    assert plan.routes_per_core <= 21
    shifts = [r for r in plan.ledger.records if r.op.endswith("/shift")]
    assert shifts and all(r.critical_stages >= 1 for r in shifts)
