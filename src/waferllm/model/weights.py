"""Host-side weights of a local Hugging Face checkpoint, read from safetensors only.

`load_weights` checks every tensor's name and shape against the config's family table
(`family.py`) before loading any, and names each missing, mis-shaped or unexpected one; fused
checkpoint tensors are split into the table's rows here. Weights keep HF's (out, in)
orientation; the permutations and tiling for the mesh happen in `placement.py`, not here.
Pickle files (`*.bin`, `*.pt`) are never opened.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from waferllm.errors import WaferError
from waferllm.model.config import ModelConfig
from waferllm.model.config_sources import config_from_checkpoint
from waferllm.model.family import Family, Fused, LayerTensor, family_of

# Legend: D hidden size, F intermediate size, V vocab, Q heads * head_dim, K kv_heads * head_dim.

INDEX_FILE = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Buffers some exporters wrote into checkpoints; recomputed from the config, never read.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class CheckpointError(WaferError):
    """A checkpoint directory that cannot be loaded: files, tensor names, shapes or dtypes."""


@dataclasses.dataclass(frozen=True, eq=False)
class LayerWeights:
    """One decoder layer in HF orientation (a matmul `w` maps x to `x @ w.T + b`), by the
    row names of its family table (`family.py`); absent biases are absent keys."""

    tensors: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)


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


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of this config must hold, with its shape."""
    d, v = config.hidden_size, config.vocab_size
    expected = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        expected["lm_head.weight"] = (v, d)
    for i in range(config.num_hidden_layers):
        for hf_name, shape in family_of(config).checkpoint_tensors(config).items():
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
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        files = [path / name for name in sorted(set(weight_map.values()))]
        root = path.resolve()
        outside = [f.name for f in files if not f.resolve().is_relative_to(root)]
        if outside:
            raise CheckpointError(
                f"{index} lists shards outside the checkpoint directory: {', '.join(outside)}"
            )
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(absent)}")
        _regular_files_only(files)
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        _regular_files_only(files)
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); waferllm loads "
            "safetensors only and never unpickles. Convert it with transformers: "
            "from_pretrained(...).save_pretrained(dir) writes model.safetensors"
        )
    raise CheckpointError(f"{path} holds no *.safetensors weight files")


def _regular_files_only(files: list[Path]) -> None:
    """Refuse FIFOs, devices and directories (opening a FIFO would wait forever)."""
    odd = [f.name for f in files if not f.is_file()]
    if odd:
        raise CheckpointError(f"weight files must be regular files: {', '.join(odd)} is not")


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
    path: str | Path, config: ModelConfig, dtype: torch.dtype | None = torch.float32
) -> ModelWeights:
    """Read every weight of `config` from the safetensors files in `path`, cast to `dtype`
    (None: each tensor in the dtype its file stores)."""
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        raise CheckpointError(f"dtype {dtype} is not a floating dtype; use one of {_FLOAT_DTYPES}")
    path = Path(path)
    handles = _open_all(safetensors_files(path))
    _check_tensors(path, config, handles)

    def read(name: str) -> torch.Tensor:
        tensor = handles[name].get_tensor(name)
        return tensor if dtype is None else tensor.to(dtype)

    family = family_of(config)
    layers = []
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        tensors = {t.name: read(prefix + t.hf_name) for t in _unfused(family, config)}
        for fused in family.fused:
            tensors |= _split(fused, read(prefix + fused.hf_name), family, config)
        layers.append(LayerWeights(tensors))
    embed = read("model.embed_tokens.weight")
    return ModelWeights(
        config=config,
        embed=embed,
        layers=tuple(layers),
        final_norm=read("model.norm.weight"),
        lm_head=embed if config.tie_word_embeddings else read("lm_head.weight"),
    )


def _unfused(family: Family, config: ModelConfig) -> list[LayerTensor]:
    fused = {part for f in family.fused for part in f.parts}
    return [t for t in family.tensors(config) if t.name not in fused]


def _split(
    fused: Fused, tensor: torch.Tensor, family: Family, config: ModelConfig
) -> dict[str, torch.Tensor]:
    """A fused checkpoint tensor cut along dim 0 into its rows, in `fused.parts` order."""
    rows = {t.name: t for t in family.tensors(config)}
    sizes = [rows[part].shape(config)[0] for part in fused.parts]
    return dict(zip(fused.parts, torch.split(tensor, sizes), strict=True))


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = torch.float32) -> Checkpoint:
    """config.json and the weights of a local checkpoint directory (no config.json: an error);
    `dtype` as in `load_weights`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = config_from_checkpoint(path)
    return Checkpoint(path=path, config=config, weights=load_weights(path, config, dtype))
