"""Where every tensor of the model lives on a mesh (STYLE.md §2; SPEC.md §5, §10.8): placing the
tensors `specs.py` declares (re-exported here).

Prefill (`L_y E_x`): activations split tokens over rows and features over columns; every
projection is a MeshGEMM right operand `W[in_y, out_x]`, pre-aligned at load. Decode
(`E_y L^x`): W_q/k/v and W_up/gate are GEMV weights `[in_y, out_x]` that reduce along Y; W_o and
W_down sit in the transposed placement `[in_x, out_y]` and reduce along X. Attention heads run
along X in contiguous kv-groups of columns (`HeadLayout`); the rows of W_q/W_k/W_v (and the
columns of W_o) are permuted into that order at load, padded with zeros where a split is ragged
(q and k in RoPE pairs, v and the attention output W_o reads in their own value slots).
The vocabulary tensors use the GEMV placements: `[D_x, V_y]` in prefill, `[D_y, V_x]` in decode
(functional tiles shared by the two on a square grid: `place_table`).
No math here (`transformer.py`), no regions (`regions.py`), no cache policy (`kv_cache.py`).
Legend: D model dim, F ffn dim, V vocab, Hq/Hkv query/kv heads, hd head dim, n_rep = Hq/Hkv;
per column: G kv heads, H = 2 * pairs head-dim slots (RoPE pairs (i, i + hd/2) kept together),
Hv value slots.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import torch

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.kernels.gemm import B_ALIGNED, RING_ALGO, prealign_b
from waferllm.kernels.heads import HeadLayout, gather_rows
from waferllm.kernels.operands import ring_grid
from waferllm.mesh.geometry import RingKind
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import padded_k
from waferllm.mesh.virtual import Mesh, Mode, held_dtype
from waferllm.model.config import ModelConfig
from waferllm.model.family import Dim, Role, family_of
from waferllm.model.specs import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    TensorSpec,
    dequant_chunk_bytes,
    head_slot_index,
    head_slots_per_column,
    heads_for,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    layer_specs,
    norm_spec,
    spec_stored,
    tile_bytes,
    vocab_spec,
)
from waferllm.model.weights import LayerWeights


def layer_host_tensors(
    config: ModelConfig, w: LayerWeights, heads: HeadLayout
) -> dict[str, torch.Tensor]:
    """The host tensors of `layer_specs` (phase independent: only the layouts differ):
    matmuls transposed to `[in, out]`, head features gathered into the heads' order."""
    index = {dim: head_slot_index(heads, dim) for dim in (Dim.Q, Dim.KV, Dim.V, Dim.O)}
    host = {}
    for t in family_of(config).tensors(config):
        tensor = w[t.name]
        if t.role is Role.MATMUL:
            if t.out.is_heads:  # rows of W[out, in]
                tensor = gather_rows(tensor, index[t.out])
            tensor = tensor.T
            if t.in_ is not None and t.in_.is_heads:  # rows of W.T[in, out]
                tensor = gather_rows(tensor, index[t.in_])
        elif t.out.is_heads:
            tensor = gather_rows(tensor[:, None], index[t.out])[:, 0]
        host[t.name] = tensor
    return host


def pad_k_rows(w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """W[K, N] -> W[K', N], K' = padded_k: the rows of each of the C column-tiles of K moved
    to the start of a tile of K'/C rows (what the activation's locally padded tiles hold)."""
    k = w.shape[0]
    tile, wide = -(-k // cols), padded_k(rows, cols, k) // cols
    c, i = np.divmod(np.arange(cols * wide), wide)
    index = np.where((i < tile) & (c * tile + i < k), c * tile + i, -1)
    return gather_rows(w, index)


def place(
    mesh: Mesh,
    spec: TensorSpec,
    host: torch.Tensor | None,
    name: str,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> DistTensor:
    """Put one tensor on the mesh (uncharged: weights load before any request). A matrix is
    stored as `stored` (`spec_stored`); vectors (norms, biases) in the storage dtype. A
    matrix's functional tiles keep a float16/bfloat16 host's dtype under float32 compute
    (`held_dtype`: exact, half the memory); vectors take the compute dtype. `host` may be a
    view (a transposed table): it is made contiguous on the tiles' torch device."""
    stored = spec_stored(spec, stored)
    dtype = None
    if host is None:
        assert mesh.mode is Mode.ESTIMATE, f"functional mode needs the host tensor of {name}"
        host = torch.empty(spec.shape, device="meta")
        if spec.gemm_b:
            return _prealigned_meta(mesh, spec, host, name, stored)
    else:
        dtype = held_dtype(host.dtype, mesh.compute_dtype) if len(spec.shape) == 2 else None
        host = host.to(mesh.torch_device)  # permuted and padded where the tiles will live
        if spec.gemm_b:
            host = pad_k_rows(host, mesh.rows, mesh.cols)
    assert tuple(host.shape) == spec.shape, (name, tuple(host.shape), spec.shape)
    if spec.gemm_b:
        return prealign_b(mesh, host.contiguous(), name=name, stored=stored, dtype=dtype)
    return mesh.scatter(host.contiguous(), spec.layout(), name, stored=stored, dtype=dtype)


def _prealigned_meta(
    mesh: Mesh, spec: TensorSpec, host: torch.Tensor, name: str, stored: StoredDtype
) -> DistTensor:
    """`prealign_b` of a meta weight (estimate mode), its registrations in the same order
    (the plain tiles, freed, then the aligned ones under the same name: the same keys, peaks
    and failures) and its grid check, the aligned tiles' shape in closed form: the plain
    tile's N padded to whole logical blocks per column (the skew only permutes blocks), not
    skewed as meta tiles (tests/model/test_placement_prealign.py compares)."""
    grid = ring_grid(mesh, RING_ALGO[RingKind.INTERLEAVED])
    layout = Layout(spec.shape, y_dim=0, x_dim=1)
    plain = mesh.scatter(host, layout, name, stored=stored)
    plain.free()
    rows, cols, kt, nt = plain.data.shape
    per_col = grid.per_col
    shape = (rows, cols, kt, -(-nt // per_col) * per_col)
    data = torch.empty(shape, dtype=plain.data.dtype, device="meta")
    aligned = layout.with_tag(B_ALIGNED[RingKind.INTERLEAVED])
    return mesh.register(data, aligned, name, stored=stored)


@dataclasses.dataclass(frozen=True, eq=False)
class PlacedLayer:
    """One decoder layer's tensors on one mesh, by name (`layer_specs`)."""

    tensors: dict[str, DistTensor]

    def __getitem__(self, name: str) -> DistTensor:
        return self.tensors[name]

    def get(self, name: str) -> DistTensor | None:
        return self.tensors.get(name)


def place_layer(
    mesh: Mesh,
    config: ModelConfig,
    phase: Phase,
    weights: LayerWeights | None,
    *,
    name: str,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> PlacedLayer:
    """One decoder layer's tensors placed on `mesh` (`layer_specs`). In estimate mode, where
    the layer fits beside what the mesh holds, a layer placed before on the grid
    (`_meta_layer`) is registered again (`repeat_layer`): the same tensors, keys and peaks."""
    if weights is None and mesh.mode is Mode.ESTIMATE:
        like = _meta_layer(
            config, mesh.device, mesh.rows, mesh.cols, phase, stored, mesh.compute_dtype
        )
        sram = mesh.sram
        if like is not None and sram.live_bytes_max + like.bytes_per_core <= sram.capacity_bytes:
            return repeat_layer(mesh, like.layer, names=[name])[0]
    return _placed_layer(mesh, config, phase, weights, name=name, stored=stored)


def _placed_layer(
    mesh: Mesh,
    config: ModelConfig,
    phase: Phase,
    weights: LayerWeights | None,
    *,
    name: str,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> PlacedLayer:
    """`place_layer`, every tensor placed (`place`)."""
    heads = heads_for(config, mesh.cols)
    specs = layer_specs(config, mesh.rows, mesh.cols, phase)
    host = layer_host_tensors(config, weights, heads) if weights is not None else {}
    tensors = {
        k: place(mesh, spec, host.get(k), f"{name}.{k}", stored) for k, spec in specs.items()
    }
    return PlacedLayer(tensors)


@dataclasses.dataclass(frozen=True, eq=False)
class _MetaLayer:
    layer: PlacedLayer  # on a mesh of its own (its tiles are what is shared)
    bytes_per_core: int  # what placing it adds to every core, its peak too


@functools.lru_cache(maxsize=64)  # per grid: a search builds several models on each
def _meta_layer(
    config: ModelConfig,
    device: Device,
    rows: int,
    cols: int,
    phase: Phase,
    stored: StoredDtype,
    compute_dtype: torch.dtype,
) -> _MetaLayer | None:
    """A meta layer placed on an empty rows x cols estimate-mode mesh of `device` (a function
    of these arguments: tiles, layouts, names and bytes follow from them), for `place_layer`
    to register again; None where that would not be placing it: a placement that fails (a
    grid the ring GEMM refuses, a layer larger than SRAM: the real path raises) or whose
    peak is above its bytes (a weight's unaligned tiles larger than its aligned ones)."""
    mesh = Mesh(device, rows, cols, mode=Mode.ESTIMATE, compute_dtype=compute_dtype)
    try:
        layer = _placed_layer(mesh, config, phase, None, name="like", stored=stored)
    except WaferError:
        return None
    held = mesh.sram.live_bytes_max
    return _MetaLayer(layer, held) if mesh.sram.peak_bytes == held else None


def repeat_layer(mesh: Mesh, placed: PlacedLayer, *, names: Sequence[str]) -> list[PlacedLayer]:
    """Estimate mode: more layers on `mesh` like `placed` (a layer placed there by
    `place_layer`), one per name, without placing them again: its meta tiles (shapes only, no
    values) shared, each tensor registered under its layer's name with the bytes `place_layer`
    charges (an identical layer's tiles have the same shapes), all the layers' in one batch
    (`Mesh.register_like`: the keys, peaks and failures of registering them in turn). A fit
    plan places every layer of a region this way after its first
    (tests/model/test_placement_repeat.py compares)."""
    assert mesh.mode is Mode.ESTIMATE, "functional layers hold their own weights"
    tensors = placed.tensors
    again = mesh.register_like(
        list(tensors.values()), [f"{name}.{k}" for name in names for k in tensors]
    )
    width = len(tensors)
    return [
        PlacedLayer(dict(zip(tensors, again[i : i + width], strict=True)))
        for i in range(0, len(again), width)
    ]


# ---- vocabulary tensors ------------------------------------------------------------------------
def place_table(
    mesh: Mesh,
    spec: TensorSpec,
    host: torch.Tensor | None,
    name: str,
    stored: StoredDtype,
    twin: DistTensor | None,
) -> DistTensor:
    """A vocabulary table ([V, D] on the host) placed as `spec`'s [D, V] on `mesh`. On a square
    grid the other phase's copy `twin` ([D_y, V_x] for [D_x, V_y], or back) holds the same
    tiles with the core axes swapped: its tiles are viewed, not copied (host memory only:
    the device holds and is charged for both, registered here as `place` would)."""
    layout = spec.layout()
    swapped = Layout(spec.shape, y_dim=layout.x_dim, x_dim=layout.y_dim)
    if (
        host is not None
        and twin is not None
        and twin.layout == swapped
        and mesh.shape == twin.mesh.shape
        and mesh.rows == mesh.cols
    ):
        data = twin.data.transpose(0, 1)
        assert tuple(data.shape[2:]) == layout.tile_shape(mesh.rows, mesh.cols), (name, data.shape)
        return mesh.register(data, layout, name, stored=spec_stored(spec, stored))
    return place(mesh, spec, host.T if host is not None else None, name, stored)


def table_view(table: DistTensor, spec: TensorSpec) -> DistTensor:
    """The [D, V] table as the [V, D] one the embedding lookup reads: tiles transposed in
    place (a per-core view of the same SRAM, not a copy)."""
    d, v = spec.shape
    lay = table.layout
    assert lay.y_dim is not None and lay.x_dim is not None
    layout = Layout((v, d), y_dim=1 - lay.y_dim, x_dim=1 - lay.x_dim)
    data = table.data.transpose(-1, -2)
    return DistTensor(data, layout, table.mesh, table.name, None, table.stored)


# the declarations (`specs.py`) are re-exported: callers import tensors and sizes from here
__all__ = [
    "Phase",
    "PlacedLayer",
    "PlacementMode",
    "ResidentLayouts",
    "TensorSpec",
    "dequant_chunk_bytes",
    "head_slot_index",
    "head_slots_per_column",
    "heads_for",
    "kv_slot_bytes_per_core",
    "layer_bytes_per_core",
    "layer_host_tensors",
    "layer_specs",
    "norm_spec",
    "pad_k_rows",
    "place",
    "place_layer",
    "place_table",
    "repeat_layer",
    "spec_stored",
    "table_view",
    "tile_bytes",
    "vocab_spec",
]
