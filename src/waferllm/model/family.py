"""One table per model family: every tensor of a decoder layer, declared once (SPEC.md §5).

A `LayerTensor` row names a tensor (its key in `LayerWeights` and `PlacedLayer`), its Hugging
Face name, its role (matmul weight, bias, norm), its shape in dims of the config, and, for a
matmul and its bias, the axis its decode GEMV reduces along (Y: `[in_y, out_x]`; X: the
transposed placement `[in_x, out_y]`). Q, KV, V and O dims are the ones the heads layout permutes.
Loading (`weights.py`), placement and byte counts (`placement.py`, `plan.py`), the weight
re-layout (`transfers.py`), parameter counts (`config.py`) and FLOPs (`estimate.flops`) read
these rows; a family may fuse rows into one checkpoint tensor (`Fused`), split at load.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING

from waferllm.mesh.geometry import Axis

if TYPE_CHECKING:
    from waferllm.model.config import ModelConfig

# Legend: D model dim, F ffn dim, Q query heads x head_dim, KV kv heads x head_dim (k's RoPE
# layout), V kv heads x head_dim (v's layout), O query heads x head_dim (attention output).


class Dim(enum.StrEnum):
    HIDDEN = "D"
    FFN = "F"
    Q = "Q"
    KV = "KV"
    V = "V"
    O = "O"

    def size(self, config: ModelConfig) -> int:
        return {
            Dim.HIDDEN: config.hidden_size,
            Dim.FFN: config.intermediate_size,
            Dim.Q: config.q_size,
            Dim.KV: config.kv_size,
            Dim.V: config.kv_size,
            Dim.O: config.q_size,
        }[self]

    @property
    def is_heads(self) -> bool:
        """Features in heads order, permuted and padded into the grid's `HeadLayout`."""
        return self in (Dim.Q, Dim.KV, Dim.V, Dim.O)


class Role(enum.StrEnum):
    MATMUL = "matmul"  # prefill: a MeshGEMM right operand; decode: a GEMV weight
    BIAS = "bias"  # added to a matmul's output, split like it
    NORM = "norm"  # an RMSNorm weight, split like the residual stream


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerTensor:
    """One tensor of a decoder layer. HF orientation: a matmul is `[out, in]` (`x @ w.T`)."""

    name: str
    hf_name: str  # inside `model.layers.{i}.`
    role: Role
    out: Dim  # a matmul's output features; a vector's length
    in_: Dim | None = None  # a matmul's input features
    decode_reduce: Axis | None = None  # matmul or bias: the decode GEMV's reduce axis
    when: str | None = None  # a bool ModelConfig field that must hold for the tensor to exist

    def present(self, config: ModelConfig) -> bool:
        return self.when is None or bool(getattr(config, self.when))

    def shape(self, config: ModelConfig) -> tuple[int, ...]:
        if self.in_ is None:
            return (self.out.size(config),)
        return (self.out.size(config), self.in_.size(config))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fused:
    """One checkpoint tensor holding several rows concatenated along dim 0, in `parts` order."""

    hf_name: str
    parts: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """A model family: the `model_type`s it covers, its layer's rows, its fused tensors."""

    model_types: tuple[str, ...]
    layer: tuple[LayerTensor, ...]
    fused: tuple[Fused, ...] = ()

    def tensors(self, config: ModelConfig) -> tuple[LayerTensor, ...]:
        """The rows this config has (biases only where the config says so)."""
        return tuple(t for t in self.layer if t.present(config))

    def checkpoint_tensors(self, config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """HF name (inside `model.layers.{i}.`) -> shape of every tensor a layer stores."""
        rows = {t.name: t for t in self.tensors(config)}
        out: dict[str, tuple[int, ...]] = {}
        for fused in self.fused:
            shapes = [rows.pop(part).shape(config) for part in fused.parts]
            out[fused.hf_name] = (sum(s[0] for s in shapes), *shapes[0][1:])
        out.update({t.hf_name: t.shape(config) for t in rows.values()})
        return out


def _matmul(name: str, hf: str, out: Dim, in_: Dim, reduce: Axis) -> LayerTensor:
    return LayerTensor(
        name=name, hf_name=hf, role=Role.MATMUL, out=out, in_=in_, decode_reduce=reduce
    )


def _bias(name: str, hf: str, out: Dim, reduce: Axis, when: str) -> LayerTensor:
    return LayerTensor(
        name=name, hf_name=hf, role=Role.BIAS, out=out, decode_reduce=reduce, when=when
    )


D, F, Q, KV, V, O = Dim.HIDDEN, Dim.FFN, Dim.Q, Dim.KV, Dim.V, Dim.O
X, Y = Axis.X, Axis.Y
# The Llama decoder layer (Mistral and Qwen2 too: they differ in config fields only). Decode
# GEMVs alternate their reduce axis (SPEC.md §5): W_q/k/v and W_gate/up along Y, W_o and
# W_down along X. Row order is placement order.
LLAMA_LAYER = (
    _matmul("wq", "self_attn.q_proj.weight", Q, D, Y),
    _matmul("wk", "self_attn.k_proj.weight", KV, D, Y),
    _matmul("wv", "self_attn.v_proj.weight", V, D, Y),
    _matmul("wo", "self_attn.o_proj.weight", D, O, X),
    _matmul("w_gate", "mlp.gate_proj.weight", F, D, Y),
    _matmul("w_up", "mlp.up_proj.weight", F, D, Y),
    _matmul("w_down", "mlp.down_proj.weight", D, F, X),
    LayerTensor(name="attn_norm", hf_name="input_layernorm.weight", role=Role.NORM, out=D),
    LayerTensor(name="mlp_norm", hf_name="post_attention_layernorm.weight", role=Role.NORM, out=D),
    _bias("bq", "self_attn.q_proj.bias", Q, Y, "qkv_bias"),
    _bias("bk", "self_attn.k_proj.bias", KV, Y, "qkv_bias"),
    _bias("bv", "self_attn.v_proj.bias", V, Y, "qkv_bias"),
    _bias("bo", "self_attn.o_proj.bias", D, X, "o_bias"),
    _bias("b_gate", "mlp.gate_proj.bias", F, Y, "mlp_bias"),
    _bias("b_up", "mlp.up_proj.bias", F, Y, "mlp_bias"),
    _bias("b_down", "mlp.down_proj.bias", D, X, "mlp_bias"),
)
LLAMA = Family(model_types=("llama", "mistral", "qwen2"), layer=LLAMA_LAYER)
# Phi-3 (Phi3ForCausalLM): the Llama layer with q/k/v and gate/up fused in the checkpoint, in
# that order (modeling_phi3: qkv[..., :Q], [Q:Q+KV], rest; gate, up = gate_up.chunk(2)).
PHI3 = Family(
    model_types=("phi3",),
    layer=LLAMA_LAYER,
    fused=(
        Fused(hf_name="self_attn.qkv_proj.weight", parts=("wq", "wk", "wv")),
        Fused(hf_name="mlp.gate_up_proj.weight", parts=("w_gate", "w_up")),
    ),
)
FAMILIES = (LLAMA, PHI3)


def family_of(config: ModelConfig) -> Family:
    for family in FAMILIES:
        if config.architecture in family.model_types:
            return family
    raise AssertionError(f"no family table for {config.architecture!r}")  # config checks this


def matmuls(config: ModelConfig) -> tuple[LayerTensor, ...]:
    return tuple(t for t in family_of(config).tensors(config) if t.role is Role.MATMUL)


def layer_params(config: ModelConfig) -> int:
    """Parameters of one decoder layer: every row of its family table."""
    return sum(math.prod(t.shape(config)) for t in family_of(config).tensors(config))


def layer_matmul_params(config: ModelConfig) -> int:
    """Parameters of one layer's matmuls (each does 2 FLOPs per parameter per token)."""
    return sum(math.prod(t.shape(config)) for t in matmuls(config))
