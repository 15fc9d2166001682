"""Where tensors live (SPEC.md §10.8), regions over the wafer (§10.10), routes (§10.7) and the
costs of moving data between plans."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import tiny, wse2
from waferllm.errors import SramOverflowError, WaferError
from waferllm.kernels.heads import head_layout
from waferllm.mesh.cost import Ledger
from waferllm.mesh.relayout import Move, relayout_charge
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tiling import padded_k
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.config_sources import load_config
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    layer_bytes_per_core,
    pad_k_rows,
    place_layer,
)
from waferllm.model.regions import Footprint, plan_phase, region_origins
from waferllm.model.transformer import MeshTransformer


@settings(max_examples=40, deadline=None)
@given(
    kv_heads=st.integers(1, 6),
    n_rep=st.integers(1, 4),
    half=st.integers(1, 9),
    cols=st.integers(1, 13),
)
def test_heads_are_a_permutation_with_rope_pairs_in_one_tile(kv_heads, n_rep, half, cols):
    hd = 2 * half
    heads = head_layout(kv_heads, n_rep, hd, cols)
    kv = heads.kv_index()
    q = heads.q_index()
    # every real feature exactly once, the rest padding (a permutation, never a copy)
    assert sorted(kv[kv >= 0].tolist()) == list(range(kv_heads * hd))
    assert sorted(q[q >= 0].tolist()) == list(range(kv_heads * n_rep * hd))
    # slot e and e + H/2 of a column hold dims i and i + hd/2 of the same head
    tiles = kv.reshape(cols, heads.kv_per_tile, heads.head_slots)
    first, second = np.split(tiles, 2, axis=-1)
    real = first >= 0
    assert ((second - first)[real] == half).all() and (second[~real] < 0).all()
    # a kv head's columns are contiguous (or a column holds whole kv heads)
    owner = np.where(tiles >= 0, tiles // hd, -1).max(axis=(1, 2))
    assert (np.diff(owner[owner >= 0]) >= 0).all()
    assert sum(heads.group_sizes) == cols


@settings(max_examples=40, deadline=None)
@given(
    kv_heads=st.integers(1, 6),
    n_rep=st.integers(1, 4),
    half=st.integers(1, 9),
    cols=st.integers(1, 40),
)
def test_v_and_the_output_fill_each_columns_share_of_the_groups_cache_budget(
    kv_heads, n_rep, half, cols
):
    hd = 2 * half
    heads = head_layout(kv_heads, n_rep, hd, cols)
    v, o = heads.v_index(), heads.o_index()
    assert sorted(v[v >= 0].tolist()) == list(range(kv_heads * hd))
    assert sorted(o[o >= 0].tolist()) == list(range(kv_heads * n_rep * hd))
    # a column's v holds dims of the kv heads its k holds; its outputs the same dims of their
    # query heads
    kv_tiles = heads.kv_index().reshape(cols, heads.kv_per_tile, 1, heads.head_slots)
    v_tiles = v.reshape(cols, heads.kv_per_tile, 1, heads.value_slots)
    o_tiles = o.reshape(cols, heads.kv_per_tile, n_rep, heads.value_slots)
    k_head = np.where(kv_tiles >= 0, kv_tiles // hd, -1).max(axis=(2, 3))
    v_head = np.where(v_tiles >= 0, v_tiles // hd, -1).max(axis=(2, 3))
    assert ((v_head == k_head) | (v_head < 0) | (k_head < 0)).all()
    real = o_tiles >= 0
    assert ((o_tiles // hd) // n_rep == np.broadcast_to(v_tiles // hd, o_tiles.shape))[real].all()
    assert ((o_tiles % hd) == np.broadcast_to(v_tiles % hd, o_tiles.shape))[real].all()
    # the cache's slots per position: a group of s columns needs 2*hd slots over its columns,
    # k keeps whole RoPE pairs and v's tile is no wider than k's (H); its widest column holds
    # the fewest slots that allow this, never more than k and v each padded to H
    assert heads.value_slots <= heads.head_slots
    k_slots = 2 * heads.num_pairs
    total = k_slots + heads.num_vdims
    if cols >= kv_heads:
        start = 0
        for size in heads.group_sizes:
            k, widest = k_slots[start : start + size], int(total[start : start + size].max())
            start += size
            assert widest >= max(-(-2 * hd // size), int(k.max()))
            fewer = np.minimum(np.maximum(widest - 1 - k, 0), heads.head_slots).sum()
            assert widest == max(-(-2 * hd // size), int(k.max())) or fewer < hd
    widest = int((heads.num_kv * total).max())
    assert heads.cache_bytes(StoredDtype.FLOAT16, 2) == 2 * widest <= 2 * 2 * heads.kv_width


def test_query_heads_sit_with_their_kv_head():
    heads = head_layout(2, 3, 4, 4)  # 2 kv heads x 3 query heads, head_dim 4, 4 columns
    q = heads.q_index().reshape(4, heads.kv_per_tile, 3, heads.head_slots)
    kv = heads.kv_index().reshape(4, heads.kv_per_tile, 1, heads.head_slots)
    real = q >= 0
    assert ((q // 4) // 3 == kv // 4)[real].all()  # query head h uses kv head h // n_rep
    assert ((q % 4) == (kv % 4))[real].all()  # the same head dim in the same slot


@pytest.mark.parametrize(("rows", "cols"), [(2, 3), (4, 6), (3, 3)])
def test_padded_weight_rows_match_the_locally_padded_activation_tiles(rows, cols):
    k, n = 40, 7
    w = torch.randn(k, n)
    x = torch.randn(5, k)
    wide = padded_k(rows, cols, k) // cols
    tile = -(-k // cols)
    tiles = torch.nn.functional.pad(x, (0, tile * cols - k)).reshape(5, cols, tile)
    padded = torch.nn.functional.pad(tiles, (0, wide - tile)).reshape(5, cols * wide)
    assert torch.allclose(padded @ pad_k_rows(w, rows, cols), x @ w, atol=1e-5)


@pytest.mark.parametrize("phase", list(Phase))
def test_layer_bytes_per_core_equal_what_placing_a_layer_charges(phase):
    config = load_config("tiny")
    mesh = Mesh(tiny(), 3, 4, mode=Mode.ESTIMATE)
    place_layer(mesh, config, phase, None, name="layer0")
    assert mesh.sram.live_bytes_max == layer_bytes_per_core(config, 3, 4, phase, 2)


def test_regions_tile_the_device_so_that_neighbours_touch():
    origins = region_origins(tiny(), (20, 24))  # 3 x 2 slots of the 64 x 64 mesh
    assert len(origins) == 6
    for (y0, x0), (y1, x1) in zip(origins, origins[1:], strict=False):
        assert (y0 == y1 and abs(x1 - x0) == 24) or (x0 == x1 and y1 - y0 == 20)


def test_fit_uses_the_fewest_regions_and_says_how_many_wafers_when_it_cannot():
    fp = Footprint(layer=1000, first=500, last=500, reserve=100)
    plan = plan_phase(
        tiny(), (32, 32), 10, fp, mode=PlacementMode.FIT, capacity_bytes=4000, what="decode"
    )
    # 3 layers per region at most (3600 + extras): 10 layers need 4 regions; the first and
    # the last also hold a vocabulary table, so they take the two fewer layers
    assert [len(r.layers) for r in plan.regions] == [2, 3, 3, 2]
    with pytest.raises(WaferError, match="wafers"):
        plan_phase(
            tiny(), (32, 32), 40, fp, mode=PlacementMode.FIT, capacity_bytes=4000, what="decode"
        )
    with pytest.raises(SramOverflowError, match="one layer alone"):
        plan_phase(
            tiny(), (32, 32), 2, fp, mode=PlacementMode.FIT, capacity_bytes=1000, what="decode"
        )


def test_a_relayout_that_moves_nothing_is_free_and_a_shift_costs_its_hops_and_bytes():
    device = tiny()
    same = Move(a_src=np.arange(4), a_dst=np.arange(4), b_src=np.arange(3), b_dst=np.arange(3))
    assert relayout_charge(device, [same]).cycles == 0
    # 4 rows x 3 columns of single elements, each moved 5 columns east
    east = dataclasses.replace(same, b_dst=np.arange(3) + 5)
    charge = relayout_charge(device, [east])
    assert charge.critical_hops == 5
    assert charge.bytes_injected == 12 * device.storage_bytes
    assert charge.link_byte_hops == 12 * 5 * device.storage_bytes
    # busiest vertical cut: 3 elements per row over each of the 4 rows' links
    expected = 5 * device.hop_latency_cycles + 3 * 2 / device.link_bytes_per_cycle
    assert charge.cycles == pytest.approx(expected)


@pytest.mark.parametrize("side", [8, 11])
def test_prefill_and_decode_plans_meet_the_route_budgets_on_wse2(side):
    config = load_config("tiny")
    model = MeshTransformer(
        config, None, device=wse2(), prefill_grid=(side, side), decode_grid=(side, side)
    )
    model.prefill([1] * 64, Ledger())
    model.decode_step(1, Ledger())
    routes = model.routes_per_core()
    assert routes["prefill"] <= 18 and routes["decode"] <= 20


def test_per_layer_placement_multiplies_one_layer_and_refuses_real_weights(checkpoint_factory):
    config = dataclasses.replace(load_config("tiny"), num_hidden_layers=6)
    model = MeshTransformer(
        config,
        None,
        device=wse2(),
        prefill_grid=(8, 8),
        decode_grid=(8, 8),
        placement=PlacementMode.PER_LAYER,
    )
    ledger = Ledger()
    model.prefill([1] * 32, ledger)
    layer_records = [r for r in ledger.records if r.op.startswith("layer/")]
    assert layer_records and all(r.count % config.num_hidden_layers == 0 for r in layer_records)
    assert any(
        r.op == "layer_hop" and r.count == config.num_hidden_layers - 1 for r in ledger.records
    )
    from waferllm.model.weights import load_checkpoint

    ckpt = load_checkpoint(checkpoint_factory("llama", margin_new_tokens=16))
    with pytest.raises(WaferError, match="estimate-only"):
        MeshTransformer(
            ckpt.config,
            ckpt.weights,
            device=tiny(),
            prefill_grid=(2, 2),
            decode_grid=(2, 2),
            placement=PlacementMode.PER_LAYER,
        )


def test_both_resident_layouts_skip_the_weight_relayout_and_cost_sram():
    config = load_config("tiny")
    costs, sram = {}, {}
    for resident in ResidentLayouts:
        model = MeshTransformer(
            config,
            None,
            device=tiny(),
            prefill_grid=(4, 4),
            decode_grid=(2, 3),
            resident_layouts=resident,
        )
        model.prefill([3] * 12, Ledger())
        ledger = Ledger()
        model.transition(ledger)
        costs[resident] = {r.op for r in ledger.records}
        sram[resident] = model.decode_state.meshes[0].sram.live_bytes_max
    assert "transition/weights_to_decode" in costs[ResidentLayouts.ONE]
    assert costs[ResidentLayouts.BOTH] == {"transition/kv"}
    assert sram[ResidentLayouts.BOTH] > sram[ResidentLayouts.ONE]
