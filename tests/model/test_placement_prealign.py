"""Estimate mode places a MeshGEMM weight with its aligned tiles' shape in closed form
(`placement._prealigned_meta`): the same tiles (shape, dtype, meta), layout, name, SRAM keys,
totals, peak and failures (an SRAM overflow, a grid the ring GEMM refuses) as skewing meta
tiles with `kernels.gemm.prealign_b`, the oracle, across devices, models, grids (square,
non-square, refused), storage and SRAM left."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.device import get_device
from waferllm.errors import WaferError
from waferllm.kernels.gemm import prealign_b
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.config_sources import load_config
from waferllm.model.placement import Phase, layer_specs, place, spec_stored

CONFIGS = {name: load_config(name) for name in ("tiny", "llama3-8b", "qwen2.5-7b")}


def _outcome(mesh: Mesh, spec, name: str, stored: StoredDtype, oracle: bool) -> tuple:
    """What placing `spec` leaves: the tensor's fields (or the error) and the SRAM tracker."""
    mesh.sram.alloc("resident", mesh.device.sram_bytes_per_core // 3)
    try:
        if oracle:
            host = torch.empty(spec.shape, device="meta")
            t = prealign_b(mesh, host, name=name, stored=spec_stored(spec, stored))
        else:
            t = place(mesh, spec, None, name, stored)
        got = (t.data.shape, t.data.dtype, t.data.device, t.layout, t.name, t.sram_key, t.stored)
    except WaferError as error:
        got = (type(error).__name__, str(error))
    live = {k: int(np.max(v)) for k, v in mesh.sram.live.items()}
    return got, live, int(np.max(mesh.sram._total)), mesh.sram.peak_bytes


@settings(max_examples=150, deadline=None)
@given(
    device=st.sampled_from(["wse2", "wse3", "tiny"]),
    model=st.sampled_from(sorted(CONFIGS)),
    rows=st.integers(1, 64),
    cols=st.integers(1, 64),
    stored=st.sampled_from(list(StoredDtype)),
    sram=st.sampled_from([None, 0.4, 0.55, 2.0]),
)
def test_the_closed_form_alignment_equals_skewing_meta_tiles(
    device, model, rows, cols, stored, sram
):
    dev = get_device(device)
    if sram is not None:  # SRAM that overflows on the plain or the aligned tiles, or not
        dev = dataclasses.replace(dev, sram_bytes_per_core=int(sram * dev.sram_bytes_per_core))
    rows, cols = min(rows, dev.mesh_rows), min(cols, dev.mesh_cols)
    config = CONFIGS[model]
    specs = layer_specs(config, rows, cols, Phase.PREFILL)
    for key, spec in specs.items():
        if not spec.gemm_b:
            continue
        outcomes = [
            _outcome(Mesh(dev, rows, cols, mode=Mode.ESTIMATE), spec, f"l.{key}", stored, o)
            for o in (False, True)
        ]
        assert outcomes[0] == outcomes[1], key


@pytest.mark.parametrize("grid", [(357, 357), (300, 600), (250, 750), (480, 720), (7, 11)])
def test_wafer_grids_align_alike(grid):
    dev = get_device("wse2")
    specs = layer_specs(CONFIGS["llama3-8b"], *grid, Phase.PREFILL)
    for key, spec in specs.items():
        if spec.gemm_b:
            fast, slow = (
                _outcome(Mesh(dev, *grid, mode=Mode.ESTIMATE), spec, key, StoredDtype.INT4, o)
                for o in (False, True)
            )
            assert fast == slow
            assert (len(fast[0]) == 7) == (grid != (7, 11))  # placed, or the grid refused
