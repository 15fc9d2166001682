"""The hand-off priced from run-length coded axes equals the element-by-element pricing.

`relayout.relayout_charge` reads each axis's runs (`mesh/runs.py`); its oracle,
`relayout_elements.relayout_charge_elements`, every element's lines. Charge for charge (every
field of the charge and of its traffic, arrays included): the weights' and the KV cache's
moves of LLaMA3-8B per-layer plans (square, rectangular, coprime and equal grids) and of
`tiny` fit plans over several regions (float16 and int8), one move at a time and all at
once; a region-to-region hop; the steps' expansions against their definitions.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from waferllm.device import get_device, tiny
from waferllm.kernels.heads import head_layout
from waferllm.mesh import Layout, Mesh, relayout, run_terms
from waferllm.mesh.cost import Charge
from waferllm.mesh.relayout import Move, relayout_charge
from waferllm.mesh.relayout_elements import relayout_charge_elements
from waferllm.mesh.runs import Runs, block_steps, steps_of
from waferllm.mesh.virtual import Mode
from waferllm.model import transfers
from waferllm.model.config_sources import load_config
from waferllm.model.family import Dim
from waferllm.model.placement import PlacementMode
from waferllm.model.quant import Storage
from waferllm.model.transfers import kv_moves, weight_moves
from waferllm.model.transformer import MeshTransformer


def assert_same_charge(got: Charge, want: Charge) -> None:
    for field in dataclasses.fields(want):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if field.name != "traffic":
            assert a == b and type(a) is type(b), (field.name, a, b)
            continue
        for part in dataclasses.fields(b):
            x, y = getattr(a, part.name), getattr(b, part.name)
            if isinstance(y, dict):
                assert x.keys() == y.keys(), part.name
                for key in y:
                    np.testing.assert_array_equal(x[key], y[key])
                    assert x[key].dtype == y[key].dtype
            elif isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y)
                assert x.dtype == y.dtype, part.name
            else:
                assert x == y and type(x) is type(y), (part.name, x, y)


def assert_same_pricing(device, runs: list, elements: list, nbytes: float | None = None) -> None:
    for r, e in zip(runs, elements, strict=True):
        assert_same_charge(
            relayout_charge(device, [r], bytes_per_element=nbytes),
            relayout_charge_elements(device, [e], bytes_per_element=nbytes),
        )
    assert_same_charge(
        relayout_charge(device, runs, bytes_per_element=nbytes),
        relayout_charge_elements(device, elements, bytes_per_element=nbytes),
    )


LLAMA_GRIDS = [
    ((600, 600), (480, 480)),  # square
    ((480, 600), (420, 540)),  # rectangular
    ((528, 396), (463, 389)),  # a coprime decode grid
    ((432, 432), (432, 432)),  # equal grids: much stays home
]


@pytest.mark.parametrize(("prefill", "decode"), LLAMA_GRIDS)
def test_llama3_8b_per_layer_hand_off_priced_by_runs_equals_the_element_pricing(prefill, decode):
    config, device = load_config("llama3-8b"), get_device("wse2")
    model = MeshTransformer(
        config,
        None,
        device=device,
        prefill_grid=prefill,
        decode_grid=decode,
        placement=PlacementMode.PER_LAYER,
    )
    plan = model.plan
    assert_same_pricing(device, weight_moves(plan), weight_moves(plan, elements=True))
    for prompt_len, chunk in ((1, None), (777, None), (4096, None), (5000, 1024)):
        counts = model.handoff_counts(prompt_len)
        runs = kv_moves(plan, counts, chunk_tokens=chunk)
        elements = kv_moves(plan, counts, chunk_tokens=chunk, elements=True)
        assert_same_pricing(device, runs, elements)


@pytest.mark.parametrize(
    ("prefill", "decode", "dtype", "sram_bytes"),
    [
        ((4, 4), (4, 4), "float16", 16000),
        ((3, 4), (4, 6), "float16", 16000),
        ((4, 6), (5, 2), "float16", 16000),
        ((3, 4), (4, 6), "int8", 12000),
        ((4, 6), (5, 2), "int8", 12000),
    ],
)
def test_tiny_fit_hand_off_over_several_regions_priced_by_runs_equals_the_element_pricing(
    prefill, decode, dtype, sram_bytes
):
    device = dataclasses.replace(tiny(), sram_bytes_per_core=sram_bytes)
    model = MeshTransformer(
        load_config("tiny"),
        None,
        device=device,
        prefill_grid=prefill,
        decode_grid=decode,
        storage=Storage.of(dtype, dtype),
    )
    plan = model.plan
    assert len(plan.prefill.regions) > 1 or len(plan.decode.regions) > 1
    nbytes = 1.0625 if dtype == "int8" else None
    assert_same_pricing(device, weight_moves(plan), weight_moves(plan, elements=True), nbytes)
    most = plan.kv_slots * plan.decode.grid[0]  # positions the cache holds
    for prompt_len, chunk in ((1, None), (min(9, most), None), (min(23, most), 5)):
        counts = model.handoff_counts(prompt_len)
        runs = kv_moves(plan, counts, chunk_tokens=chunk)
        elements = kv_moves(plan, counts, chunk_tokens=chunk, elements=True)
        assert_same_pricing(device, runs, elements, nbytes)


def test_a_hop_priced_by_runs_equals_the_element_pricing():
    device = dataclasses.replace(get_device("wse2"), mesh_cols=1400)
    for (y0, x0), (y1, x1), (rows, cols) in [
        ((0, 0), (0, 600), (600, 600)),
        ((3, 10), (40, 10), (20, 7)),
        ((5, 9), (5, 2), (1, 1)),
    ]:
        runs = relayout.RunMove(
            a=relayout._shift(rows, y0, y1), b=relayout._shift(cols, x0, x1), count=4096
        )
        line_r, line_c = np.arange(rows), np.arange(cols)
        elements = Move(
            a_src=y0 + line_r, a_dst=y1 + line_r, b_src=x0 + line_c, b_dst=x1 + line_c, count=4096
        )
        assert_same_pricing(device, [runs], [elements])


def test_steps_expand_to_their_definitions_and_runs_cover_every_element():
    for size, parts in [(128256, 600), (4096, 7), (10, 3), (5, 9), (1, 1)]:
        tile = math.ceil(size / parts)
        np.testing.assert_array_equal(block_steps(size, parts).expand(), np.arange(size) // tile)
        np.testing.assert_array_equal(
            block_steps(size, parts).expand(3), 3 + np.arange(size) // tile
        )
    rng = np.random.default_rng(9)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        src, dst = rng.integers(0, 4, n), np.sort(rng.integers(0, 5, n))
        np.testing.assert_array_equal(steps_of(src).expand(), src)
        runs = Runs.of(src, dst)
        np.testing.assert_array_equal(np.repeat(runs.src, runs.length), src)
        np.testing.assert_array_equal(np.repeat(runs.dst, runs.length), dst)
        assert runs.total == n


def test_a_tensors_hop_is_the_move_of_its_region_priced_afresh_and_remembered():
    """`hop_charge` (remembered per region, destination, edge and tile size) against the
    region's move built and priced afresh, every column or, replicated along X and hopping
    along X, one copy per row from the edge column; again from the cache; a wider tile
    (another key) is priced anew."""
    device = dataclasses.replace(get_device("wse2"), mesh_cols=1400)
    for origin, dst, shape, x_dim in [
        ((0, 0), (0, 600), (600, 600), 1),
        ((0, 0), (0, 600), (600, 600), None),  # replicated along X: the edge column sends
        ((0, 700), (0, 100), (300, 500), None),  # westwards: the west edge
        ((3, 10), (40, 10), (20, 7), None),  # along Y: every column
        ((5, 9), (5, 2), (1, 1), 1),
    ]:
        mesh = Mesh(device, *shape, origin=origin, mode=Mode.ESTIMATE)
        for tile in (64, 4096):
            width = tile * shape[1] if x_dim else tile
            layout = Layout((2 * shape[0], width), y_dim=0, x_dim=x_dim)
            data = torch.empty((*shape, *layout.tile_shape(*shape)), device="meta")
            x = mesh.register(data, layout, "x")
            (y0, x0), (y1, x1) = origin, dst
            b = relayout._shift(shape[1], x0, x1)
            if x_dim is None and y0 == y1 and shape[1] > 1:
                src, entry = (shape[1] - 1, 0) if x1 > x0 else (0, shape[1] - 1)
                b = Runs(np.array([x0 + src]), np.array([x1 + entry]), np.ones(1, dtype=np.int64))
            move = relayout.RunMove(
                a=relayout._shift(shape[0], y0, y1), b=b, count=math.prod(x.tile_shape)
            )
            want = relayout_charge(device, [move])
            first = relayout.hop_charge(device, x, dst)
            assert_same_charge(first, want)
            assert relayout.hop_charge(device, x, dst) is first  # remembered
            x.free()


def _cold(device, moves: list) -> Charge:
    """`relayout_charge` with every remembered axis and pair forgotten first."""
    for cached in (relayout._pair_terms, run_terms.axis_terms, run_terms.run_ends):
        cached.cache_clear()
    return relayout_charge(device, moves, bytes_per_element=1.0625)


def test_moves_priced_again_on_another_mesh_or_with_another_count_equal_cold_pricing():
    """The axes and pairs the pricing remembers (`run_terms`, `relayout._pair_terms`) are
    keyed by the runs and the mesh's sides: the hand-off's moves priced on wse2, on a larger
    mesh, on wse2 again, with other counts and all at once, each equal to pricing them from
    cold caches."""
    config, device = load_config("llama3-8b"), get_device("wse2")
    larger = dataclasses.replace(device, mesh_rows=device.mesh_rows + 37, mesh_cols=1400)
    model = MeshTransformer(
        config,
        None,
        device=device,
        prefill_grid=(480, 600),
        decode_grid=(420, 540),
        placement=PlacementMode.PER_LAYER,
    )
    moves = weight_moves(model.plan) + kv_moves(model.plan, model.handoff_counts(3000))
    recounted = [dataclasses.replace(m, count=m.count * 3 + 1) for m in moves]
    for dev in (device, larger, device):
        for group in [[m] for m in moves] + [[m] for m in recounted] + [moves, recounted]:
            warm = relayout_charge(dev, group, bytes_per_element=1.0625)
            assert_same_charge(warm, _cold(dev, group))


def _unit_of_features(heads, dim, kv_heads: int) -> np.ndarray:
    """The unit (`transfers._unit_columns`) of every feature of `dim` in checkpoint order."""
    hd, pairs = heads.head_dim, heads.head_dim // 2
    n = heads.n_rep if dim in (Dim.Q, Dim.O) else 1
    feature = np.arange(kv_heads * n * hd)
    kv_head, dim_of = feature // (n * hd), feature % hd
    if dim in (Dim.Q, Dim.KV):
        return kv_head * pairs + dim_of % pairs
    return kv_head * hd + dim_of


@pytest.mark.parametrize(
    ("kv_heads", "n_rep", "head_dim"), [(8, 4, 128), (2, 2, 16), (8, 8, 128), (4, 1, 64)]
)
def test_head_units_carry_the_columns_of_their_features_on_every_grid(kv_heads, n_rep, head_dim):
    """A unit's column, at each of its features (q, k, v, attention output), is the feature's
    column of the heads layout, and a feature's slot computed from its unit is the one the
    layout's slot index gives: more columns than kv heads (pairs split), fewer (whole kv
    heads per column) and as many."""
    for cols in sorted({1, 3, max(kv_heads - 1, 1), kv_heads, kv_heads + 1, 75, 611}):
        heads = head_layout(kv_heads, n_rep, head_dim, cols)
        for dim in (Dim.Q, Dim.KV, Dim.V, Dim.O):
            units = transfers._unit_columns(heads, dim)
            features = transfers._columns_of(heads, dim).expand()
            unit = _unit_of_features(heads, dim, kv_heads)
            np.testing.assert_array_equal(units.expand()[unit], features)
            per_unit = transfers._features_per_unit(heads, dim)
            assert units.size * per_unit == features.size
            # each feature's slot computed from its unit, against the inverted slot index
            slots, width = transfers._slots(heads, dim)
            column, slot = transfers._feature_slots(heads, dim)
            np.testing.assert_array_equal(column * width + slot, slots)
            assert ((slot >= 0) & (slot < width)).all()


@pytest.mark.parametrize(("kv_heads", "n_rep", "head_dim"), [(8, 4, 128), (2, 2, 16), (4, 1, 64)])
def test_q_and_k_share_their_unit_columns_and_v_and_the_output_theirs(kv_heads, n_rep, head_dim):
    """q's and k's units (RoPE pairs) are one object on a grid, v's and the attention output's
    (value dims) another, so the hand-off joins q's and k's unit axes once; each equals the
    columns computed afresh from the layout."""
    for cols in (1, 3, kv_heads + 1, 75, 611):
        heads = head_layout(kv_heads, n_rep, head_dim, cols)
        pairs, values = (transfers._unit_columns(heads, d) for d in (Dim.Q, Dim.V))
        assert transfers._unit_columns(heads, Dim.KV) is pairs
        assert transfers._unit_columns(heads, Dim.O) is values
        for dim, got in ((Dim.KV, pairs), (Dim.V, values)):
            fresh = transfers._unit_steps.__wrapped__(heads, pairs=dim is Dim.KV)
            np.testing.assert_array_equal(got.expand(), fresh.expand())
