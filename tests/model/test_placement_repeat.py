"""Estimate mode places a region's first layer and repeats it for the others
(`placement.repeat_layer`): every mesh ends up with the same tensors (names, layouts, tile
shapes, stored dtypes) and the same SRAM bookkeeping (live buffers, totals, peak) as placing
every layer with `place_layer`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferllm.device import get_device
from waferllm.errors import SramOverflowError
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.config_sources import load_config
from waferllm.model.placed import build_phase
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    place_layer,
    repeat_layer,
)
from waferllm.model.plan import plan_model
from waferllm.model.quant import Storage

CASES = [
    # (model, prefill grid, decode grid, resident layouts, weights stored as)
    ("llama3-8b", (357, 357), (357, 357), ResidentLayouts.ONE, StoredDtype.FLOAT16),
    ("llama3-8b", (300, 600), (250, 750), ResidentLayouts.ONE, StoredDtype.FLOAT16),
    ("llama3-8b", (375, 375), (375, 375), ResidentLayouts.BOTH, StoredDtype.INT4),
    ("qwen2.5-7b", (200, 600), (300, 600), ResidentLayouts.ONE, StoredDtype.INT8),
]


def _placed_one_by_one(plan, phase: Phase, mesh_args) -> tuple[list[Mesh], dict]:
    """The slow path: every layer of every region placed by `place_layer`."""
    regions = plan.prefill if phase is Phase.PREFILL else plan.decode
    rows, cols = regions.grid
    meshes, layers = [], {}
    reserved = plan.other_plan_bytes[phase]
    for region in regions.regions:
        mesh = Mesh(plan.device, rows, cols, origin=region.origin, **mesh_args)
        if reserved:
            mesh.sram.alloc("other plan's weights (resident layouts both)", reserved)
        for i in region.layers:
            layers[i] = place_layer(
                mesh, plan.config, phase, None, name=f"layer{i}", stored=plan.storage.weights
            )
        meshes.append(mesh)
    return meshes, layers


def _sram(mesh: Mesh) -> tuple:
    live = {k: int(np.max(v)) for k, v in mesh.sram.live.items()}
    return live, int(np.max(mesh.sram._total)), mesh.sram.peak_bytes


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[3]}-{c[4]}" for c in CASES])
def test_repeated_layers_equal_layers_placed_one_by_one(case):
    name, prefill, decode, resident, stored = case
    plan = plan_model(
        load_config(name),
        get_device("wse2"),
        prefill_grid=prefill,
        decode_grid=decode,
        placement=PlacementMode.FIT,
        resident=resident,
        max_context_tokens=None,
        storage=Storage(weights=stored),
    )
    mesh_args = {"mode": Mode.ESTIMATE}
    for phase in Phase:
        regions = plan.prefill if phase is Phase.PREFILL else plan.decode
        assert max(len(r.layers) for r in regions.regions) > 1  # something is repeated
        state = build_phase(plan, phase, None, mesh_args)
        meshes, layers = _placed_one_by_one(plan, phase, mesh_args)
        assert layers.keys() == state.layers.keys()
        for i, layer in layers.items():
            fast = state.layers[i].tensors
            assert fast.keys() == layer.tensors.keys()
            for k, t in layer.tensors.items():
                got = fast[k]
                assert (got.name, got.sram_key, got.layout, got.stored, got.data.shape) == (
                    t.name,
                    t.sram_key,
                    t.layout,
                    t.stored,
                    t.data.shape,
                ), (i, k)
        for ours, slow in zip(state.meshes, meshes, strict=True):
            # the vocabulary tables come after the layers: compare the layers' part
            live = _sram(ours)[0]
            want_live, want_total, want_peak = _sram(slow)
            assert list(live.items())[: len(want_live)] == list(want_live.items())
            # placing one by one never held more than the layers it left (a weight's
            # unaligned copy is freed before its aligned tiles are registered and is no
            # larger), so the repeated layers' peak is the same
            assert want_peak == want_total


def _one_layer_bytes(config, device, grid, phase) -> int:
    mesh = Mesh(device, *grid, mode=Mode.ESTIMATE)
    place_layer(mesh, config, phase, None, name="layer0")
    return mesh.sram.peak_bytes


@pytest.mark.parametrize("room", [1.0, 2.5, 3.0, 4.0])
@pytest.mark.parametrize("phase", list(Phase))
def test_a_batch_of_repeated_layers_fails_where_placing_them_one_by_one_fails(room, phase):
    """A region whose SRAM holds `room` layers: the batch of repeats (`repeat_layer` with
    three names) keeps the same buffers, totals and peak, and fails on the same tensor with
    the same message, as `place_layer` of each layer in turn."""
    config, grid = load_config("llama3-8b"), (357, 357)
    base = get_device("wse2")
    need = _one_layer_bytes(config, base, grid, phase)
    device = dataclasses.replace(base, sram_bytes_per_core=int(room * need))
    outcomes = []
    for batched in (True, False):
        mesh = Mesh(device, *grid, mode=Mode.ESTIMATE)
        first = place_layer(mesh, config, phase, None, name="layer0")
        names = ["layer1", "layer2", "layer3"]
        error, layers = None, []
        try:
            if batched:
                layers = repeat_layer(mesh, first, names=names)
            else:
                layers = [place_layer(mesh, config, phase, None, name=n) for n in names]
        except SramOverflowError as caught:
            error = str(caught)
        shapes = [
            [(t.name, t.sram_key, t.layout, t.stored, t.data.shape) for t in p.tensors.values()]
            for p in layers
        ]
        outcomes.append((error, _sram(mesh), shapes))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0][0] is None) == (room >= 4.0)


def test_registering_copies_takes_a_whole_number_of_names_per_tensor():
    mesh = Mesh(get_device("wse2"), 4, 4, mode=Mode.ESTIMATE)
    first = place_layer(mesh, load_config("tiny"), Phase.DECODE, None, name="layer0")
    tensors = list(first.tensors.values())
    with pytest.raises(AssertionError):
        mesh.register_like(tensors, ["a"] * (len(tensors) + 1))
    assert mesh.register_like([], []) == []
    again = mesh.register_like(tensors, [f"x{i}" for i in range(2 * len(tensors))])
    assert [t.data for t in again] == [t.data for t in tensors] * 2
