"""Where every tensor of the model lives on a mesh, declared once (STYLE.md §2; SPEC.md §5, §10.8).

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
import enum
import functools
import math
import types
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.kernels.dequant import dequant_scratch_bytes
from waferllm.kernels.gemm import B_ALIGNED, RING_ALGO, prealign_b
from waferllm.kernels.heads import HeadLayout, gather_rows, head_layout
from waferllm.kernels.operands import ring_grid
from waferllm.mesh.geometry import Axis, RingKind
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import padded_k
from waferllm.mesh.virtual import Mesh, Mode, held_dtype
from waferllm.model.config import ModelConfig
from waferllm.model.family import Dim, LayerTensor, Role, family_of
from waferllm.model.weights import LayerWeights


class Phase(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"


class PlacementMode(enum.StrEnum):
    FIT = "fit"  # the whole model resident on the device, over one or more regions
    PER_LAYER = "per-layer"  # the paper's method: one layer's plan, time x num_layers


class ResidentLayouts(enum.StrEnum):
    ONE = "one"  # one copy of the weights: re-laid prefill -> decode -> prefill per request
    BOTH = "both"  # prefill and decode copies both resident: no weight re-layout


def heads_for(config: ModelConfig, num_cols: int) -> HeadLayout:
    return head_layout(config.num_key_value_heads, config.num_kv_groups, config.head_dim, num_cols)


# ---- per-layer tensors ------------------------------------------------------------------------
# Host matrices are [in, out]; the layout says which of them runs along which mesh axis.
_MAT = {"y_dim": 0, "x_dim": 1}  # prefill MeshGEMM B, and decode reducing along Y: [in_y, out_x]
_GEMV_Y = _MAT
_GEMV_X = {"y_dim": 1, "x_dim": 0}  # decode, transposed placement: [in_x, out_y]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """One tensor of a layer: its logical shape, its layout keywords, and how it is stored."""

    shape: tuple[int, ...]
    dims: dict[str, int]
    gemm_b: bool = False  # a MeshGEMM right operand, pre-aligned at load

    def layout(self) -> Layout:
        return Layout(self.shape, y_dim=self.dims.get("y_dim"), x_dim=self.dims.get("x_dim"))


@functools.lru_cache(maxsize=1024)  # a plan, its SRAM bounds and its transfers ask per grid
def layer_specs(
    config: ModelConfig, rows: int, cols: int, phase: Phase
) -> Mapping[str, TensorSpec]:
    """Every tensor of one decoder layer (its family table's rows) for `phase` on a rows x
    cols grid. Host matrices are `[in, out]`; q and kv features are in the heads' padded
    order. Prefill matrices are MeshGEMM right operands whose K is padded for the grid
    (`pad_k_rows`); decode matrices are GEMV weights placed by their reduce axis. A bias is
    split like its matmul's output, a norm like the residual stream. Read only (cached)."""
    heads = heads_for(config, cols)
    prefill = phase is Phase.PREFILL
    return types.MappingProxyType(
        {
            t.name: _spec(t, _placed_size(t.out, config, heads), config, heads, rows, cols, prefill)
            for t in family_of(config).tensors(config)
        }
    )


def _placed_size(dim: Dim, config: ModelConfig, heads: HeadLayout) -> int:
    """A dim's size on the mesh: head features padded to whole column tiles of heads."""
    if dim.is_heads:
        return heads.num_cols * head_slots_per_column(heads, dim)
    return dim.size(config)


def head_slots_per_column(heads: HeadLayout, dim: Dim) -> int:
    """A head dim's slots per column (`HeadLayout`): q, k (RoPE pairs), v, attention output."""
    return {
        Dim.Q: heads.q_width,
        Dim.KV: heads.kv_width,
        Dim.V: heads.v_width,
        Dim.O: heads.o_width,
    }[dim]


def head_slot_index(heads: HeadLayout, dim: Dim) -> np.ndarray:
    """A head dim's original feature of every padded slot, -1 for padding (`HeadLayout`)."""
    index = {
        Dim.Q: heads.q_index,
        Dim.KV: heads.kv_index,
        Dim.V: heads.v_index,
        Dim.O: heads.o_index,
    }
    return index[dim]()


def _spec(
    t: LayerTensor,
    out: int,
    config: ModelConfig,
    heads: HeadLayout,
    rows: int,
    cols: int,
    prefill: bool,
) -> TensorSpec:
    if t.role is Role.MATMUL:
        assert t.in_ is not None
        k = _placed_size(t.in_, config, heads)
        if prefill:
            return TensorSpec(shape=(padded_k(rows, cols, k), out), dims=_MAT, gemm_b=True)
        return TensorSpec(shape=(k, out), dims=_MAT if t.decode_reduce is Axis.Y else _GEMV_X)
    # a vector along X in prefill; in decode, the output of a Y-reducing GEMV lies along X,
    # that of an X-reducing one (and the residual stream a norm scales) along Y
    along_x = prefill or (t.role is Role.BIAS and t.decode_reduce is Axis.Y)
    return TensorSpec(shape=(out,), dims={"x_dim": 0} if along_x else {"y_dim": 0})


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


def spec_stored(spec: TensorSpec, weights: StoredDtype) -> StoredDtype:
    """How a tensor is stored given the weights' dtype: matrices (`[in, out]`, reduced axis
    first) compressed, vectors never."""
    return weights if len(spec.shape) == 2 else StoredDtype.FLOAT16


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


def tile_bytes(
    spec: TensorSpec,
    rows: int,
    cols: int,
    dtype_bytes: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> int:
    """Per-core bytes of one placed tensor, matrices stored as `stored` (`spec_stored`). A
    MeshGEMM weight on a non-square grid keeps its N tile padded to whole logical blocks
    (`kernels.gemm.prealign_b`)."""
    dims = spec.dims
    y, x = dims.get("y_dim"), dims.get("x_dim")
    return _tile_bytes(spec.shape, y, x, spec.gemm_b, rows, cols, dtype_bytes, stored)


@functools.lru_cache(maxsize=8192)  # the planner's budgets ask it for every prompt it tries
def _tile_bytes(
    shape: tuple[int, ...],
    y_dim: int | None,
    x_dim: int | None,
    gemm_b: bool,
    rows: int,
    cols: int,
    dtype_bytes: int,
    stored: StoredDtype,
) -> int:
    """`tile_bytes` of the spec (shape, y_dim, x_dim, gemm_b): the key is everything the
    spec's layout, its padding and its storage read."""
    dims = {k: v for k, v in (("y_dim", y_dim), ("x_dim", x_dim)) if v is not None}
    spec = TensorSpec(shape=shape, dims=dims, gemm_b=gemm_b)
    tile = list(spec.layout().tile_shape(rows, cols))
    if gemm_b:
        per_col = math.lcm(rows, cols) // cols
        tile[-1] = -(-tile[-1] // per_col) * per_col
    return tile_stored_bytes(spec_stored(spec, stored), tuple(tile), dtype_bytes)


def layer_bytes_per_core(
    config: ModelConfig,
    rows: int,
    cols: int,
    phase: Phase,
    dtype_bytes: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> int:
    """Per-core bytes of one layer's tensors on a rows x cols grid (tiles include padding)."""
    specs = layer_specs(config, rows, cols, phase)
    return sum(tile_bytes(spec, rows, cols, dtype_bytes, stored) for spec in specs.values())


def dequant_chunk_bytes(
    config: ModelConfig, rows: int, cols: int, phase: Phase, stored: StoredDtype, sb: int
) -> int:
    """The largest float16 chunk a compressed matrix of `phase` expands into per use
    (`kernels.dequant`; a MeshGEMM weight's N tile padded as `tile_bytes` pads it); 0 when
    the weights are not compressed."""
    if not stored.compressed:
        return 0
    specs = [*layer_specs(config, rows, cols, phase).values(), vocab_spec(config, phase)]
    chunk = 0
    for spec in specs:
        if len(spec.shape) != 2:
            continue
        kt, nt = spec.layout().tile_shape(rows, cols)
        if spec.gemm_b:
            per_col = math.lcm(rows, cols) // cols
            nt = -(-nt // per_col) * per_col
        chunk = max(chunk, dequant_scratch_bytes(stored, reduced=kt, other=nt, sb=sb))
    return chunk


# ---- vocabulary tensors ------------------------------------------------------------------------
def vocab_spec(config: ModelConfig, phase: Phase) -> TensorSpec:
    """The [D, V] table: `[D_x, V_y]` in prefill (LM head reduces along X), `[D_y, V_x]` in
    decode (reduces along Y). The embedding lookup reads the same table."""
    shape = (config.hidden_size, config.vocab_size)
    return TensorSpec(shape=shape, dims=_GEMV_X if phase is Phase.PREFILL else _GEMV_Y)


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


def norm_spec(config: ModelConfig, phase: Phase) -> TensorSpec:
    """The final norm's weight, split like the last hidden state it scales."""
    return TensorSpec(
        shape=(config.hidden_size,),
        dims={"x_dim": 0} if phase is Phase.PREFILL else {"y_dim": 0},
    )


def kv_slot_bytes_per_core(
    config: ModelConfig, cols: int, dtype_bytes: int, stored: StoredDtype = StoredDtype.FLOAT16
) -> int:
    """Bytes one cached position adds to a core of its row, per layer (K and V): the widest
    column's k and v slots of its kv heads, compressed in groups along the slots
    (`HeadLayout.cache_bytes`)."""
    return heads_for(config, cols).cache_bytes(stored, dtype_bytes)
