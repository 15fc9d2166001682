"""Where model configurations come from: built-in presets and local checkpoint directories.

`load_config` resolves a name or a path; every source runs through `config.from_hf_dict`, the
only parser. Nothing is ever downloaded; no parsing rules here (`config.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from waferllm.model.config import ModelConfig, ModelConfigError, from_hf_dict
from waferllm.model.presets import HF_CONFIGS


def load_config(name_or_path: str) -> ModelConfig:
    """A built-in preset by name, or a local checkpoint directory holding config.json.

    A preset name wins over a directory of the same name; write `./tiny` for the directory.
    Nothing is ever downloaded.
    """
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    path = Path(name_or_path)
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        return config_from_checkpoint(path)
    raise ModelConfigError(
        f"unknown model {name_or_path!r}: not a built-in model ({', '.join(PRESETS)}) "
        "and not a local checkpoint directory"
    )


def config_from_checkpoint(path: str | Path) -> ModelConfig:
    """The config.json of a local checkpoint directory (or that file itself); never a preset.

    As in transformers' `generate`, an `eos_token_id` in generation_config.json beside it
    replaces config.json's (instruct models list their end-of-turn tokens there).
    """
    path = Path(path)
    if path.is_file():
        config_file = path
    elif path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelConfigError(f"checkpoint directory {path} has no config.json")
    else:
        raise ModelConfigError(f"checkpoint directory {path} does not exist")
    raw = _read_json_object(config_file)
    name = checkpoint_name(config_file.resolve().parent, raw)
    generation_file = config_file.parent / "generation_config.json"
    if generation_file.is_file():
        generation_eos = _read_json_object(generation_file).get("eos_token_id")
        if generation_eos is not None:
            raw["eos_token_id"] = generation_eos
    return from_hf_dict(raw, name)


# Folder names that say how a checkpoint was saved, not which model it is.
_GENERIC_DIRS = {"hf", "huggingface", "model", "models", "checkpoint", "checkpoints", "weights"}
_GENERIC_DIRS |= {"snapshots"}  # the Hub cache: models--org--name/snapshots/<commit>/


def checkpoint_name(directory: Path, raw: Mapping[str, Any]) -> str:
    """A checkpoint's model name: config.json's `_name_or_path` when it names a Hub model
    ("org/name"), else its folder, or the folder above when that one is generic ("hf",
    "checkpoint", a Hub cache snapshot hash): never "hf" for ".../smollm-135m/hf"."""
    hub = raw.get("_name_or_path")
    if isinstance(hub, str) and hub.count("/") == 1 and not hub.startswith((".", "/", "~")):
        return hub
    for folder in (directory, *directory.parents):
        name = folder.name
        snapshot = len(name) == 40 and all(c in "0123456789abcdef" for c in name)
        if name and name.lower() not in _GENERIC_DIRS and not snapshot:
            return name.removeprefix("models--").replace("--", "/", 1)
    return directory.name or "checkpoint"


def _read_json_object(file: Path) -> dict[str, Any]:
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelConfigError(f"cannot read {file}: {err}") from None
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{file} must hold a JSON object")
    return raw


def hf_config_dict(name: str) -> dict[str, Any]:
    """The config.json fields behind a built-in preset (a copy)."""
    if name not in HF_CONFIGS:
        raise ModelConfigError(f"unknown built-in model {name!r}; choose from {', '.join(PRESETS)}")
    return json.loads(json.dumps(HF_CONFIGS[name]))


def _preset(name: str) -> Callable[[], ModelConfig]:
    def build() -> ModelConfig:
        return from_hf_dict(HF_CONFIGS[name], name)

    build.__name__ = name.replace("-", "_").replace(".", "_")
    build.__doc__ = f"The built-in {name} config (public config.json fields, no weights)."
    return build


PRESETS: dict[str, Callable[[], ModelConfig]] = {name: _preset(name) for name in HF_CONFIGS}
