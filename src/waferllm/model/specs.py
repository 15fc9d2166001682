"""Every tensor of the model, declared once: its shape, layout and storage per phase and grid,
and the per-core bytes of its tiles (STYLE.md §2; SPEC.md §5, §10.8). Placing them on a mesh is
`placement.py`'s (which re-exports these names); sizes and layouts only here.

Prefill (`L_y E_x`): every projection is a MeshGEMM right operand `W[in_y, out_x]`, its K
padded for the grid. Decode (`E_y L^x`): W_q/k/v and W_up/gate are GEMV weights `[in_y, out_x]`
that reduce along Y; W_o and W_down sit in the transposed placement `[in_x, out_y]` and reduce
along X. Head features are in the heads' padded order (`HeadLayout`). The vocabulary table:
`[D_x, V_y]` in prefill, `[D_y, V_x]` in decode.
Legend: D model dim, F ffn dim, V vocab; per column: G kv heads, H head-dim slots, Hv value slots.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
from collections.abc import Mapping

import numpy as np

from waferllm.kernels.dequant import dequant_scratch_bytes
from waferllm.kernels.heads import HeadLayout, head_layout
from waferllm.mesh.geometry import Axis
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes
from waferllm.mesh.tensor import Layout
from waferllm.mesh.tiling import padded_k
from waferllm.model.config import ModelConfig
from waferllm.model.family import Dim, LayerTensor, Role, family_of


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


def spec_stored(spec: TensorSpec, weights: StoredDtype) -> StoredDtype:
    """How a tensor is stored given the weights' dtype: matrices (`[in, out]`, reduced axis
    first) compressed, vectors never."""
    return weights if len(spec.shape) == 2 else StoredDtype.FLOAT16


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
