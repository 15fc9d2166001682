"""Multi-wafer `fit` costs (SPEC.md §10.10): a pipeline over linked devices costs the one-device
walk of the same regions with each device boundary's on-wafer hop replaced by exactly the
modelled link transfer and its legs to and from the I/O edge; how many devices a request needs
(on whole-device tilings too)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from waferllm.device import tiny, wse2, wse3
from waferllm.estimate.cost import CostModel, Setup
from waferllm.estimate.multi_device import (
    FALLBACK_PAIRS,
    devices_needed,
    request_fits,
    spread_by_prefill,
    tiling_pairs,
    weights_bound,
    with_tilings,
)
from waferllm.estimate.search import search_grids
from waferllm.mesh import Axis, Ledger, Mesh, Mode, broadcast
from waferllm.mesh.system_link import system_link_charge
from waferllm.model.config_sources import load_config

PROMPT, OUTPUT = 128, 4
GRID = (480, 480)  # llama3-8b: one wse2 holds two regions of 16 layers (stacked along Y)


@pytest.fixture(scope="module")
def pair():
    config, device = load_config("llama3-8b"), wse2()
    one = CostModel(Setup(config=config, device=device)).request(GRID, GRID, PROMPT, OUTPUT)
    setup = Setup(config=config, device=device, num_devices=2)
    two = CostModel(setup).request(GRID, GRID, PROMPT, OUTPUT)
    return one, two


def _entry_multicast(device, hidden: int, count: int):
    """The decode stream's multicast along X from column 0 of every row (its link entry)."""
    rows, cols = GRID
    mesh = Mesh(device, rows, cols, mode=Mode.ESTIMATE)
    tile = torch.empty((rows, cols, -(-hidden // rows)), device="meta")
    ledger = Ledger()
    broadcast(mesh, tile, axis=Axis.X, root=0, ledger=ledger, op="hop1.bcast")
    (record,) = ledger.records
    return dataclasses.replace(record, count=count)


def test_two_wafers_hold_the_one_wafer_regions_one_per_device(pair):
    one, two = pair
    for phase in ("prefill", "decode"):
        a, b = getattr(one.model.plan, phase), getattr(two.model.plan, phase)
        assert [r.layers for r in a.regions] == [r.layers for r in b.regions]
        assert [r.device for r in b.regions] == [0, 1]
        assert [r.origin for r in b.regions] == [(0, 0), (0, 0)]  # each on its own wafer
    assert two.model.plan.kv_slots == one.model.plan.kv_slots


def test_prefill_equals_one_wafer_with_the_hop_replaced_by_the_link_and_its_two_legs(pair):
    one, two = pair
    device = wse2()
    a, b = one.prefill.ledger.records, two.prefill.ledger.records
    (index,) = [i for i, r in enumerate(a) if r.op == "hop1"]
    out, link, into = b[index : index + 3]
    nbytes = PROMPT * 4096 * 2  # L x hidden x 2 B
    assert (link.op, link.count, link.bytes_injected) == ("hop1.system_link", 1, nbytes)
    assert link.comm_cycles == system_link_charge(device, nbytes=nbytes).cycles
    assert link.comm_cycles == pytest.approx((5e-6 + nbytes / 150e9) * 1.1e9)
    # the legs: each row's 479 other tiles [1, 9] gather at its edge core (column 0, where
    # both regions sit) and spread again on the next wafer
    moved = (GRID[1] - 1) * 9
    size = moved * 2 / min(device.link_bytes_per_cycle, device.ramp_bytes_per_cycle)
    leg = (GRID[1] - 1) * device.hop_latency_cycles + size + device.op_overhead_cycles
    assert (out.op, into.op) == ("hop1.io_out", "hop1.io_in")
    assert out.latency_cycles == pytest.approx(leg) and into.latency_cycles == pytest.approx(leg)
    assert b[:index] + b[index + 3 :] == a[:index] + a[index + 1 :]
    ttft = two.prefill.latency_cycles - one.prefill.latency_cycles  # summation order aside
    exact = link.latency_cycles + 2 * leg - a[index].latency_cycles
    assert ttft == pytest.approx(exact, rel=1e-9)


def test_each_decode_step_pays_one_link_transfer_of_the_hidden_vector_and_its_entry(pair):
    # no legs: the vector leaves from column 0 (the I/O edge) and enters there
    one, two = pair
    device = wse2()
    a, b = one.decode.ledger.records, two.decode.ledger.records
    (index,) = [i for i, r in enumerate(a) if r.op == "hop1"]
    steps = OUTPUT - 1
    link, entry = b[index], b[index + 1]
    nbytes = 4096 * 2  # hidden x 2 B per token
    assert (link.op, link.count, link.bytes_injected) == ("hop1.system_link", steps, nbytes)
    assert link.comm_cycles == system_link_charge(device, nbytes=nbytes).cycles
    assert entry == _entry_multicast(device, 4096, steps)
    assert b[:index] + b[index + 2 :] == a[:index] + a[index + 1 :]


def test_the_devices_re_lay_concurrently_so_the_transition_is_the_slowest_devices(pair):
    one, two = pair
    a, b = one.transition.records, two.transition.records
    assert [r.op for r in a] == [r.op for r in b]
    for x, y in zip(a, b, strict=True):
        assert y.latency_cycles <= x.latency_cycles


def test_a_slower_link_costs_exactly_its_extra_latency_per_transfer(pair):
    _, two = pair
    config = load_config("llama3-8b")
    slow = dataclasses.replace(wse2(), system_link_latency_s=5e-6 + 1e-3)
    other = CostModel(Setup(config=config, device=slow, num_devices=2))
    cost = other.request(GRID, GRID, PROMPT, OUTPUT)
    extra = 1e-3 * slow.clock_hz
    assert cost.prefill.latency_cycles - two.prefill.latency_cycles == pytest.approx(extra)
    steps = OUTPUT - 1
    assert cost.decode.latency_cycles - two.decode.latency_cycles == pytest.approx(steps * extra)


def test_llama3_70b_needs_several_wse3s_and_fits_the_count_it_is_told():
    setup = Setup(config=load_config("llama3-70b"), device=wse3())
    grids = ((514, 514), (514, 514))  # 2 x 1 regions per wafer
    needed = devices_needed(setup, prompt_len=PROMPT, output_len=OUTPUT, grids=grids)
    assert weights_bound(setup) == 4  # 141 GB of weights, 43.4 GB of SRAM per wafer
    assert needed is not None and needed > 4
    assert request_fits(setup, needed, grids, PROMPT, OUTPUT)
    assert not request_fits(setup, needed - 1, grids, PROMPT, OUTPUT)


# a 4 x 8-core device: one tiny layer overflows a 4 x 4 square, a 4 x 8 tiling holds one
WIDE = dataclasses.replace(tiny(), name="wide", mesh_rows=4, mesh_cols=8, sram_bytes_per_core=8192)


def test_whole_device_rectangular_tilings_hold_what_no_square_grid_does():
    setup = Setup(config=load_config("tiny"), device=WIDE)
    lengths = {"prompt_len": 12, "output_len": 4}
    squares = ((4, 4), (4, 4))
    assert devices_needed(setup, **lengths, grids=squares) is None
    assert devices_needed(setup, **lengths, grids=(None, None)) == 2
    assert request_fits(setup, 2, ((4, 8), (4, 8)), 12, 4)
    assert ((4, 8), (4, 8)) in tiling_pairs(setup, (None, None))


def test_over_several_devices_the_search_takes_a_whole_device_tiling_only_where_faster():
    device = dataclasses.replace(WIDE, mesh_cols=6, sram_bytes_per_core=16384)
    setup = Setup(config=load_config("tiny"), device=device, num_devices=2)
    costs = CostModel(setup)
    search = search_grids(costs, prompt_len=12, output_len=4)
    best, _ = with_tilings(costs, search, prompt_len=12, output_len=4)
    pairs = [p for p in tiling_pairs(setup, (None, None)) if request_fits(setup, 2, p, 12, 4)]
    tried = spread_by_prefill(pairs)[:FALLBACK_PAIRS]
    tilings = [costs.request(*p, 12, 4).objective_s for p in tried]
    assert pairs and best.objective_s == min(search.best.objective_s, *tilings)


def test_over_several_devices_a_phase_cached_on_one_pair_is_not_reused_for_another():
    """Both phases' layers are split over the devices together, so a prefill walk on the same
    prefill grid beside another decode grid is another split: 70B on 6 wse2s puts 4/4/4 and
    4/4/5 layers in the first prefill regions beside 750x750 and 994x750 decode grids."""
    setup = Setup(config=load_config("llama3-70b"), device=wse2(), num_devices=6)
    cached = CostModel(setup)
    cached.request((992, 248), (750, 750), PROMPT, OUTPUT)
    reused = cached.request((992, 248), (994, 750), PROMPT, OUTPUT)
    fresh = CostModel(setup).request((992, 248), (994, 750), PROMPT, OUTPUT)
    assert reused.prefill.regions == fresh.prefill.regions
    assert reused.prefill.ledger.expanded() == fresh.prefill.ledger.expanded()
