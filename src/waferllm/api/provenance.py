"""How a result was made (SPEC.md §10.4 `provenance`, `warnings`): waferllm's version and
commit, a model config's identity, the device constants, and the warnings a call raised.

The commit comes from `git rev-parse` when the package runs from a git checkout, else from the
install's PEP 610 metadata (`pip install git+...`), else None. Nothing here computes a result;
the report builders in this package stamp what it finds onto their reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from waferllm.device import Device
from waferllm.model.config import ModelConfig
from waferllm.model.report import Provenance

__all__ = [
    "collected_warnings",
    "config_sha256",
    "device_constants",
    "make_provenance",
    "package_commit",
    "package_version",
    "what_if",
]

PACKAGE = "waferllm"
_GIT_TIMEOUT_S = 5  # a stuck git (network filesystem) must not hold a report back


@functools.cache
def package_version() -> str:
    """The installed distribution's version (pyproject.toml's `version`)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


@functools.cache
def package_commit() -> str | None:
    """The commit of the code that runs: `git rev-parse HEAD` in the source's checkout (with
    "-dirty" when tracked files differ from it), else the install's recorded VCS commit."""
    here = Path(__file__).resolve().parent
    head = _git(here, "rev-parse", "HEAD")
    if head is not None:
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
        return head + ("-dirty" if dirty else "")
    try:
        direct = importlib.metadata.distribution(PACKAGE).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    commit = json.loads(direct or "{}").get("vcs_info", {}).get("commit_id")
    return str(commit) if commit else None


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=_GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def config_sha256(config: ModelConfig) -> str:
    """sha256 of the model config's canonical JSON: every parsed field (as the model runs,
    generation_config's eos included) but its name, keys sorted, no spaces. Two copies of one
    checkpoint hash alike wherever they live."""
    fields = dataclasses.asdict(config)
    fields.pop("name")
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def device_constants(device: Device) -> dict[str, Any]:
    """Every field of the device after JSON and `--set` overrides, with each field's source."""
    return device.to_dict()


def what_if(device: Device) -> dict[str, Any]:
    """The constants a user changed on a preset (`--set`, or a JSON file with a `base`): the
    fields whose source is the user, unless every field is (a device of the user's own)."""
    fields = [f.name for f in dataclasses.fields(device) if f.name not in ("name", "sources")]
    mine = [f for f in fields if device.sources.get(f, "").startswith("user")]
    if len(mine) == len(fields):
        return {}
    return {field: getattr(device, field) for field in mine}


def make_provenance(
    *,
    device: Device | dict[str, Any] | None,
    config: ModelConfig | dict[str, ModelConfig] | None,
    command: str | None = None,
) -> Provenance:
    """`device`: a mesh device, or the constants of another machine (the GPU baseline's)."""
    if isinstance(config, dict):
        sha: str | dict[str, str] | None = {k: config_sha256(v) for k, v in config.items()}
    else:
        sha = config_sha256(config) if config is not None else None
    return Provenance(
        version=package_version(),
        commit=package_commit(),
        command=command,
        device_constants=device_constants(device) if isinstance(device, Device) else device,
        model_config_sha256=sha,
    )


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect the warnings raised inside (each message once, in order) into the yielded
    list, filled when the block ends, and re-issue them outside so Python callers still see
    them. Reports carry the list as `warnings`."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    for message in dict.fromkeys(str(w.message) for w in caught):
        messages.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)
