"""Estimate mode places a layer by registering again one placed before on the same grid
(`placement._meta_layer`) where it fits beside what the mesh holds: the same tensors (tile
shapes, dtypes, layouts, names, keys, storage), live buffers, totals, peaks and failures as
placing every tensor (`placement._placed_layer`, the oracle), across devices, models, grids,
phases, storage, compute dtypes and SRAM already held or left."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import get_device
from waferllm.errors import WaferError
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.config_sources import load_config
from waferllm.model.placement import Phase, _meta_layer, _placed_layer, place_layer

CONFIGS = {name: load_config(name) for name in ("tiny", "llama3-8b", "qwen2.5-7b")}


def _outcome(mesh: Mesh, config, phase, stored, held, oracle: bool) -> tuple:
    """What placing a layer after `held` bytes (an int, or per core) leaves on `mesh`."""
    mesh.sram.alloc("held", held)
    mesh.sram.alloc("layer0.wq", 8)  # a name the layer's takes again: uniquified alike
    place = _placed_layer if oracle else place_layer
    with mesh.sram.watch() as watch:
        try:
            layer = place(mesh, config, phase, None, name="layer0", stored=stored)
            got = [
                (k, t.data.shape, t.data.dtype, t.data.device, t.layout, t.name, t.sram_key)
                + (t.stored, t.mesh is mesh)
                for k, t in layer.tensors.items()
            ]
        except WaferError as error:
            got = [(type(error).__name__, str(error))]
    live = {k: np.asarray(v).tolist() for k, v in mesh.sram.live.items()}
    total = np.asarray(mesh.sram._total).tolist()
    return got, live, total, mesh.sram.peak_bytes, watch.bytes_per_core


@settings(max_examples=120, deadline=None)
@given(
    device=st.sampled_from(["wse2", "wse3", "tiny"]),
    model=st.sampled_from(sorted(CONFIGS)),
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    phase=st.sampled_from(list(Phase)),
    stored=st.sampled_from(list(StoredDtype)),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    held=st.sampled_from(["none", "half", "fits", "over"]),
    per_core=st.booleans(),
)
def test_a_layer_registered_again_equals_a_layer_placed(
    device, model, rows, cols, phase, stored, dtype, held, per_core
):
    dev = get_device(device)
    rows, cols = min(rows, dev.mesh_rows), min(cols, dev.mesh_cols)
    config = CONFIGS[model]
    like = _meta_layer(config, dev, rows, cols, phase, stored, dtype)
    size = like.bytes_per_core if like is not None else dev.sram_bytes_per_core // 2
    # SRAM already held: none, some, just enough that the layer fits or just does not
    room = max(dev.sram_bytes_per_core - size - 8, 0)
    nbytes = {"none": 0, "half": room // 2, "fits": room, "over": room + 1}[held]
    if per_core:
        nbytes = np.full((rows, cols), nbytes, dtype=np.int64)
        nbytes[-1, 0] = max(int(nbytes[-1, 0]) - 5, 0)
    outcomes = [
        _outcome(
            Mesh(dev, rows, cols, mode=Mode.ESTIMATE, compute_dtype=dtype, origin=(0, 0)),
            config,
            phase,
            stored,
            nbytes,
            oracle,
        )
        for oracle in (False, True)
    ]
    assert outcomes[0] == outcomes[1]


def test_the_wafer_grids_register_their_layers_again():
    dev = get_device("wse2")
    config = CONFIGS["llama3-8b"]
    for grid in ((357, 357), (300, 600), (480, 720)):
        for phase in Phase:
            like = _meta_layer(config, dev, *grid, phase, StoredDtype.FLOAT16, torch.float32)
            assert like is not None  # the fast path is taken there
            fast, slow = (
                _outcome(
                    Mesh(dev, *grid, mode=Mode.ESTIMATE, origin=(5, 3)),
                    config,
                    phase,
                    StoredDtype.FLOAT16,
                    1000,
                    oracle,
                )
                for oracle in (False, True)
            )
            assert fast == slow


def test_a_layer_too_large_for_the_device_is_placed_to_fail_alike():
    dev = dataclasses.replace(get_device("wse2"), sram_bytes_per_core=20_000)
    config = CONFIGS["llama3-8b"]
    assert (
        _meta_layer(config, dev, 100, 100, Phase.DECODE, StoredDtype.FLOAT16, torch.float32) is None
    )
    fast, slow = (
        _outcome(
            Mesh(dev, 100, 100, mode=Mode.ESTIMATE), config, Phase.DECODE, StoredDtype.FLOAT16, 0, o
        )
        for o in (False, True)
    )
    assert fast == slow and fast[0][0][0] == "SramOverflowError"


def test_a_layer_failing_on_a_weights_unaligned_tiles_fails_alike():
    """Where a MeshGEMM weight's unaligned tiles are narrower than its aligned ones and the
    mesh has room for the former only up to one byte, placing fails on the unaligned tiles:
    registering the layer again must not be tried (its sizes are the aligned ones)."""
    dev = dataclasses.replace(get_device("wse2"), sram_bytes_per_core=1 << 34)
    config, phase = CONFIGS["llama3-8b"], Phase.PREFILL
    for rows, cols in ((4, 6), (6, 4), (8, 12), (9, 6)):
        probe = Mesh(dev, rows, cols, mode=Mode.ESTIMATE)
        layer = _placed_layer(probe, config, phase, None, name="layer0")
        sizes = dict(probe.sram.live)
        prefix = 0
        for key, t in layer.tensors.items():
            aligned = sizes[f"layer0.{key}"]
            plain = tile_stored_bytes(t.stored, (t.data.shape[2], -(-t.layout.shape[1] // cols)), 2)
            if plain < aligned:
                break
            prefix += aligned
        else:
            continue
        held = dev.sram_bytes_per_core - 8 - prefix - plain + 1
        fast, slow = (
            _outcome(
                Mesh(dev, rows, cols, mode=Mode.ESTIMATE),
                config,
                phase,
                StoredDtype.FLOAT16,
                held,
                o,
            )
            for o in (False, True)
        )
        assert fast == slow and fast[0][0][0] == "SramOverflowError"
        return
    raise AssertionError("no grid pads a weight's tiles")
