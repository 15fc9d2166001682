"""Host-side weights of a local Hugging Face checkpoint, read from safetensors only.

`load_weights` checks every tensor's name and shape against the config before loading any,
and names each missing, mis-shaped or unexpected one. Weights keep HF's (out, in) orientation;
the permutations and tiling for the mesh happen in `placement.py`, not here. Pickle files
(`*.bin`, `*.pt`) are never opened.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig, config_from_checkpoint

# Legend: D hidden size, F intermediate size, V vocab, Q heads * head_dim, K kv_heads * head_dim.

INDEX_FILE = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Buffers some exporters wrote into checkpoints; recomputed from the config, never read.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class CheckpointError(WaferError):
    """A checkpoint directory that cannot be loaded: files, tensor names, shapes or dtypes."""


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class LayerWeights:
    """One decoder layer in HF orientation: a projection `w` maps x to `x @ w.T + b`."""

    wq: torch.Tensor  # [Q, D]
    wk: torch.Tensor  # [K, D]
    wv: torch.Tensor  # [K, D]
    wo: torch.Tensor  # [D, Q]
    bq: torch.Tensor | None  # [Q]
    bk: torch.Tensor | None  # [K]
    bv: torch.Tensor | None  # [K]
    bo: torch.Tensor | None  # [D]
    w_gate: torch.Tensor  # [F, D]
    w_up: torch.Tensor  # [F, D]
    w_down: torch.Tensor  # [D, F]
    b_gate: torch.Tensor | None  # [F]
    b_up: torch.Tensor | None  # [F]
    b_down: torch.Tensor | None  # [D]
    attn_norm: torch.Tensor  # [D]
    mlp_norm: torch.Tensor  # [D]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ModelWeights:
    """All weights of a checkpoint; `lm_head` is the same tensor as `embed` when tied."""

    config: ModelConfig
    embed: torch.Tensor  # [V, D]
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor  # [D]
    lm_head: torch.Tensor  # [V, D]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Checkpoint:
    """A local checkpoint directory: its config and its weights."""

    path: Path
    config: ModelConfig
    weights: ModelWeights


_LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerWeights))


def _layer_tensors(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """LayerWeights field -> (HF name inside `model.layers.{i}.`, shape), present fields only."""
    d, f, q, kv = config.hidden_size, config.intermediate_size, config.q_size, config.kv_size
    tensors = {
        "wq": ("self_attn.q_proj.weight", (q, d)),
        "wk": ("self_attn.k_proj.weight", (kv, d)),
        "wv": ("self_attn.v_proj.weight", (kv, d)),
        "wo": ("self_attn.o_proj.weight", (d, q)),
        "w_gate": ("mlp.gate_proj.weight", (f, d)),
        "w_up": ("mlp.up_proj.weight", (f, d)),
        "w_down": ("mlp.down_proj.weight", (d, f)),
        "attn_norm": ("input_layernorm.weight", (d,)),
        "mlp_norm": ("post_attention_layernorm.weight", (d,)),
    }
    if config.qkv_bias:
        tensors |= {
            "bq": ("self_attn.q_proj.bias", (q,)),
            "bk": ("self_attn.k_proj.bias", (kv,)),
            "bv": ("self_attn.v_proj.bias", (kv,)),
        }
    if config.o_bias:
        tensors["bo"] = ("self_attn.o_proj.bias", (d,))
    if config.mlp_bias:
        tensors |= {
            "b_gate": ("mlp.gate_proj.bias", (f,)),
            "b_up": ("mlp.up_proj.bias", (f,)),
            "b_down": ("mlp.down_proj.bias", (d,)),
        }
    return tensors


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of this config must hold, with its shape."""
    d, v = config.hidden_size, config.vocab_size
    expected = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        expected["lm_head.weight"] = (v, d)
    for i in range(config.num_hidden_layers):
        for hf_name, shape in _layer_tensors(config).values():
            expected[f"model.layers.{i}.{hf_name}"] = shape
    return expected


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files (from the shard index when there is one)."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"cannot read the shard index {index}: {err!r}") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(absent)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); waferllm loads "
            "safetensors only and never unpickles. Convert it with transformers: "
            "from_pretrained(...).save_pretrained(dir) writes model.safetensors"
        )
    raise CheckpointError(f"{path} holds no *.safetensors weight files")


def _open_all(files: list[Path]) -> dict[str, Any]:
    """Tensor name -> the open safetensors handle holding it (each name in exactly one file)."""
    handles: dict[str, Any] = {}
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt")
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"cannot read {file}: {err}") from None
        for name in handle.keys():  # noqa: SIM118 - safe_open handles are not Mappings
            if name in handles:
                raise CheckpointError(f"tensor {name} appears in more than one file ({file.name})")
            handles[name] = handle
    return handles


def _check_tensors(path: Path, config: ModelConfig, handles: dict[str, Any]) -> None:
    """Raise naming every missing, mis-shaped, non-float or unexpected tensor."""
    expected = expected_tensors(config)
    problems: list[str] = []
    missing = [name for name in expected if name not in handles]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    misshaped = []
    wrong_dtype = []
    for name, shape in expected.items():
        if name in handles:
            tensor_slice = handles[name].get_slice(name)
            found = tuple(tensor_slice.get_shape())
            if found != shape:
                misshaped.append(f"{name} has shape {list(found)}, expected {list(shape)}")
            if tensor_slice.get_dtype() not in ("F32", "F16", "BF16", "F64"):
                wrong_dtype.append(f"{name} ({tensor_slice.get_dtype()})")
    if misshaped:
        problems.append(f"mis-shaped tensors: {'; '.join(misshaped)}")
    if wrong_dtype:
        problems.append(f"non-float tensors: {', '.join(wrong_dtype)}")
    tolerated = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(
        name
        for name in handles
        if name not in expected and name not in tolerated and not name.endswith(_IGNORED_SUFFIXES)
    )
    if unexpected:
        problems.append(
            f"unexpected tensors (not in a {config.architecture} model of this "
            f"config): {', '.join(unexpected)}"
        )
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match its config: " + "; ".join(problems)
        )


def load_weights(
    path: str | Path, config: ModelConfig, dtype: torch.dtype = torch.float32
) -> ModelWeights:
    """Read every weight of `config` from the safetensors files in `path`, cast to `dtype`."""
    if dtype not in _FLOAT_DTYPES:
        raise CheckpointError(f"dtype {dtype} is not a floating dtype; use one of {_FLOAT_DTYPES}")
    path = Path(path)
    handles = _open_all(safetensors_files(path))
    _check_tensors(path, config, handles)

    def read(name: str) -> torch.Tensor:
        return handles[name].get_tensor(name).to(dtype)

    layers = []
    for i in range(config.num_hidden_layers):
        tensors: dict[str, torch.Tensor | None] = dict.fromkeys(_LAYER_FIELDS)
        for field, (hf_name, _) in _layer_tensors(config).items():
            tensors[field] = read(f"model.layers.{i}.{hf_name}")
        layers.append(LayerWeights(**tensors))  # type: ignore[arg-type]
    embed = read("model.embed_tokens.weight")
    return ModelWeights(
        config=config,
        embed=embed,
        layers=tuple(layers),
        final_norm=read("model.norm.weight"),
        lm_head=embed if config.tie_word_embeddings else read("lm_head.weight"),
    )


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> Checkpoint:
    """config.json and the weights of a local checkpoint directory (no config.json: an error)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = config_from_checkpoint(path)
    return Checkpoint(path=path, config=config, weights=load_weights(path, config, dtype))
