"""Model configurations: Hugging Face `config.json` fields, their parser, RoPE frequencies.

`ModelConfig` keeps HF's field names so a reader can hold it beside a checkpoint's config.json.
`from_hf_dict` is the only parser: it supports the Llama family and its close relatives
(SPEC.md §5) and refuses anything else by name. Where configs come from (presets, checkpoint
directories) lives in `config_sources.py`; no weights here (`weights.py`), no placement.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import torch

from waferllm.errors import WaferError
from waferllm.model import family

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "phi3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")

# Defaults of transformers' config classes for fields a config.json may omit (checked against
# transformers in tests/model/test_config.py).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mistral": {
        "max_position_embeddings": 4096 * 32,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
    },
    "qwen2": {
        "max_position_embeddings": 32768,
        "bos_token_id": None,
        "eos_token_id": None,
        "num_key_value_heads": 32,
        "sliding_window": 4096,
        "max_window_layers": 28,
    },
    "phi3": {
        "max_position_embeddings": 4096,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "rms_norm_eps": 1e-5,
    },
}
_REQUIRED_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
_DEFAULT_ROPE_THETA = 10000.0
# Upper bounds that keep plans, estimates and their integer arithmetic small (the largest
# public Llama-family models have 126 layers, hidden 16384, FFN 53248, vocabularies < 2**18).
MAX_CONFIG_VALUES = {
    "hidden_size": 1 << 18,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1 << 12,
    "num_key_value_heads": 1 << 12,
    "head_dim": 1 << 12,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 28,
}
_LAYER_TYPES = ("full_attention", "sliding_attention")


class ModelConfigError(WaferError):
    """A model name, config.json or config field that waferllm cannot run."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama 3.1 frequency scaling (`rope_type: llama3`); both HF spellings map here."""

    rope_type: str
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise ModelConfigError(
                f"rope_scaling rope_type={self.rope_type!r} is not supported; "
                f"supported rope types: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            if not getattr(self, name) > 0:
                raise ModelConfigError(f"rope_scaling {name}={getattr(self, name)!r} must be > 0")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ModelConfigError(
                f"rope_scaling high_freq_factor={self.high_freq_factor!r} must exceed "
                f"low_freq_factor={self.low_freq_factor!r}"
            )
        if self.original_max_position_embeddings < 1:
            raise ModelConfigError(
                "rope_scaling original_max_position_embeddings="
                f"{self.original_max_position_embeddings!r} must be >= 1"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One decoder-only model's shape and numerics, in HF `config.json` names.

    Attention uses `num_attention_heads` query heads of `head_dim` and `num_key_value_heads`
    kv heads (MHA, GQA, MQA). `sliding_window=W` lets position t attend to t-W+1 ... t, as
    transformers' sliding-window mask does (`kv_idx > q_idx - W`).
    """

    name: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelConfigError(
                f"architecture {self.architecture!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelConfigError(f"{self.name}: {name}={value!r} must be a positive integer")
            if value > MAX_CONFIG_VALUES[name]:
                raise ModelConfigError(
                    f"{self.name}: {name}={value} is larger than the supported "
                    f"{MAX_CONFIG_VALUES[name]}"
                )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"{self.name}: num_attention_heads={self.num_attention_heads} must be a multiple "
                f"of num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(
                f"{self.name}: head_dim={self.head_dim} must be even (RoPE rotates pairs)"
            )
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ModelConfigError(
                f"{self.name}: rms_norm_eps={self.rms_norm_eps!r} and "
                f"rope_theta={self.rope_theta!r} must be > 0"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ModelConfigError(
                f"{self.name}: sliding_window={self.sliding_window!r} must be >= 1 or null"
            )
        for token in (self.bos_token_id, *self.eos_token_ids):
            if token is not None and not 0 <= token < self.vocab_size:
                raise ModelConfigError(
                    f"{self.name}: special token id {token} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )

    @property
    def num_kv_groups(self) -> int:
        """Query heads per kv head (transformers' `n_rep`)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (every tensor of its family table)."""
        return family.layer_params(self)

    @property
    def layer_matmul_params(self) -> int:
        """Parameters of one decoder layer's matmuls (2 FLOPs each per token)."""
        return family.layer_matmul_params(self)

    @property
    def num_params(self) -> int:
        """All parameters, counting a tied LM head once (as `model.num_parameters()` does)."""
        embed = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embed
        return self.num_hidden_layers * self.layer_params + embed + self.hidden_size + lm_head

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        """KV-cache bytes one token adds over all layers (K and V, every kv head)."""
        return 2 * self.num_hidden_layers * self.kv_size * bytes_per_element


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2], float32, computed exactly as transformers does.

    Default RoPE: theta^(-2i/head_dim). llama3 scaling: wavelengths longer than
    original_max/low_freq_factor are divided by `factor`, shorter than original_max/
    high_freq_factor kept, and those in between interpolated smoothly.
    """
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    old_context_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context_len / scaling.low_freq_factor
    high_freq_wavelen = old_context_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def from_hf_dict(raw: Mapping[str, Any], name: str) -> ModelConfig:
    """Parse a Hugging Face config.json dict; refuse unsupported models by name."""
    architecture = raw.get("model_type")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelConfigError(
            f"{name}: model_type {architecture!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    _refuse_unsupported_fields(raw, name)
    missing = [field for field in _REQUIRED_FIELDS if raw.get(field) is None]
    if missing:
        raise ModelConfigError(f"{name}: config.json lacks required fields: {', '.join(missing)}")
    fields = {**_FAMILY_DEFAULTS[architecture], **{k: v for k, v in raw.items() if v is not None}}
    for optional_null in ("bos_token_id", "eos_token_id", "sliding_window"):
        if optional_null in raw:
            fields[optional_null] = raw[optional_null]
    heads = _as_int(fields, "num_attention_heads", name)
    if heads < 1:
        raise ModelConfigError(f"{name}: num_attention_heads={heads} must be a positive integer")
    head_dim = fields.get("head_dim") or _as_int(fields, "hidden_size", name) // heads
    if isinstance(head_dim, bool) or not isinstance(head_dim, int):
        raise ModelConfigError(f"{name}: head_dim={head_dim!r} must be an integer")
    rope_theta, rope_scaling = _parse_rope(raw, name, fields["max_position_embeddings"])
    if rope_scaling is not None and architecture == "phi3":  # transformers' Phi-3 refuses it
        raise ModelConfigError(f"{name}: phi3 supports default RoPE only, not llama3 scaling")
    attention_bias = bool(fields.get("attention_bias", False)) and architecture == "llama"
    eos = fields.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    for token in (fields.get("bos_token_id"), *eos_ids):
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise ModelConfigError(
                f"{name}: bos_token_id/eos_token_id {token!r} must be an integer or null"
            )
    return ModelConfig(
        name=name,
        architecture=architecture,
        hidden_size=_as_int(fields, "hidden_size", name),
        intermediate_size=_as_int(fields, "intermediate_size", name),
        num_hidden_layers=_as_int(fields, "num_hidden_layers", name),
        num_attention_heads=heads,
        num_key_value_heads=_as_int(fields, "num_key_value_heads", name, default=heads),
        head_dim=head_dim,
        vocab_size=_as_int(fields, "vocab_size", name),
        max_position_embeddings=_as_int(fields, "max_position_embeddings", name),
        rms_norm_eps=_as_float(fields, "rms_norm_eps", name, default=1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        qkv_bias=attention_bias or architecture == "qwen2",
        o_bias=attention_bias,
        mlp_bias=bool(fields.get("mlp_bias", False)) and architecture == "llama",
        tie_word_embeddings=bool(fields.get("tie_word_embeddings", False)),
        sliding_window=_sliding_window(architecture, fields, name),
        bos_token_id=fields.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )


def _as_int(fields: Mapping[str, Any], key: str, name: str, default: int | None = None) -> int:
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelConfigError(f"{name}: {key}={value!r} must be an integer")
    return value


def _as_float(fields: Mapping[str, Any], key: str, name: str, default: float) -> float:
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelConfigError(f"{name}: {key}={value!r} must be a finite number")
    return float(value)


def _refuse_unsupported_fields(raw: Mapping[str, Any], name: str) -> None:
    """Fields that change the math in ways waferllm does not implement."""
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ModelConfigError(
            f"{name}: hidden_act={act!r} is not supported; supported: silu (SwiGLU MLP)"
        )
    if raw.get("quantization_config") is not None:
        raise ModelConfigError(
            f"{name}: quantized checkpoints (quantization_config) are not supported; "
            "use float32, float16 or bfloat16 weights"
        )
    rope = raw.get("rope_parameters") or raw.get("rope_scaling")
    rope = rope if isinstance(rope, dict) else {}
    rotary = raw.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise ModelConfigError(
            f"{name}: partial_rotary_factor={rotary!r} is not supported; "
            "RoPE must rotate the whole head_dim"
        )
    layer_types = raw.get("layer_types") or []
    unknown = sorted({t for t in layer_types if t not in _LAYER_TYPES})
    if unknown:
        raise ModelConfigError(
            f"{name}: layer_types {unknown} are not supported; supported: {', '.join(_LAYER_TYPES)}"
        )


def _parse_rope(
    raw: Mapping[str, Any], name: str, max_position_embeddings: int
) -> tuple[float, RopeScaling | None]:
    """Both spellings: transformers 5's `rope_parameters`, or `rope_theta` + `rope_scaling`."""
    params = raw.get("rope_parameters")
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
    elif not isinstance(params, dict):
        raise ModelConfigError(f"{name}: rope_parameters={params!r} must be an object")
    elif params and all(isinstance(v, dict) or v is None for v in params.values()):
        params = _single_rope_parameters(params, name)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelConfigError(
            f"{name}: rope type {rope_type!r} is not supported; "
            f"supported rope types: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    theta = params.get("rope_theta")
    if theta is None:
        theta = raw.get("rope_theta") or _DEFAULT_ROPE_THETA
    theta = _as_float({"rope_theta": theta}, "rope_theta", name, default=_DEFAULT_ROPE_THETA)
    if rope_type == "default":
        return theta, None
    missing = [f for f in ("factor", "low_freq_factor", "high_freq_factor") if f not in params]
    if missing:
        raise ModelConfigError(f"{name}: llama3 rope scaling lacks field {missing[0]!r}")
    original = params.get("original_max_position_embeddings", max_position_embeddings)
    if isinstance(original, bool) or not isinstance(original, int):
        raise ModelConfigError(
            f"{name}: original_max_position_embeddings={original!r} must be an integer"
        )
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=_as_float(params, "factor", name, default=math.nan),
        low_freq_factor=_as_float(params, "low_freq_factor", name, default=math.nan),
        high_freq_factor=_as_float(params, "high_freq_factor", name, default=math.nan),
        original_max_position_embeddings=original,
    )
    return theta, scaling


def _single_rope_parameters(params: dict[str, Any], name: str) -> dict[str, Any]:
    """RoPE parameters nested per layer type: accepted only when every layer type agrees."""
    distinct = {json.dumps(v, sort_keys=True) for v in params.values()}
    if len(distinct) != 1 or not isinstance(next(iter(params.values())), dict):
        raise ModelConfigError(
            f"{name}: different RoPE parameters per layer type ({', '.join(params)}) "
            "are not supported"
        )
    return dict(next(iter(params.values())))


def _sliding_window(architecture: str, fields: Mapping[str, Any], name: str) -> int | None:
    """Mistral and Phi-3 honour `sliding_window`; Qwen2 only when `use_sliding_window` covers
    all layers."""
    if architecture == "llama":
        return None
    window = fields.get("sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
        raise ModelConfigError(f"{name}: sliding_window={window!r} must be an integer or null")
    if architecture in ("mistral", "phi3") or window is None:
        return window
    if not fields.get("use_sliding_window", False):
        return None
    num_layers = fields["num_hidden_layers"]
    layer_types = fields.get("layer_types") or [
        "sliding_attention" if i >= fields["max_window_layers"] else "full_attention"
        for i in range(num_layers)
    ]
    if set(layer_types) == {"full_attention"}:
        return None
    if set(layer_types) == {"sliding_attention"}:
        return int(window)
    raise ModelConfigError(
        f"{name}: use_sliding_window with sliding attention on only some layers "
        f"(max_window_layers={fields.get('max_window_layers')}) is not supported; "
        "supported: sliding attention on all layers or none"
    )
