"""Session-wide fixtures: the standard tiny checkpoints, each built once per test session.

Every fixture returns a checkpoint directory written by `helpers.checkpoints.make_checkpoint`
with the default (grid-unfriendly) sizes and a seed whose greedy margins on
`DEFAULT_PROMPT_IDS` are asserted. `checkpoint_factory` builds and caches any other variant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import make_checkpoint

CheckpointFactory = Callable[..., Path]

# Fixture name -> make_checkpoint arguments. The mistral window (5) is shorter than the
# standard request (16 positions) so that it masks something.
STANDARD_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "llama_checkpoint": {"family": "llama"},
    "llama_bias_checkpoint": {"family": "llama", "attention_bias": True, "mlp_bias": True},
    "llama3_rope_checkpoint": {"family": "llama3_rope"},
    "mistral_checkpoint": {"family": "mistral", "sliding_window": 5},
    "qwen2_checkpoint": {"family": "qwen2"},
    "qwen2_tied_checkpoint": {"family": "qwen2_tied"},
}


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFactory:
    """`checkpoint_factory(family, **make_checkpoint_kwargs)`: built once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[tuple[tuple[str, Any], ...], Path] = {}

    def build(family: str = "llama", **kwargs: Any) -> Path:
        key = tuple(sorted({"family": family, **kwargs}.items()))
        if key not in cache:
            cache[key] = make_checkpoint(root, family, **kwargs)
        return cache[key]

    return build


def _standard(name: str) -> Any:
    @pytest.fixture(scope="session", name=name)
    def fixture(checkpoint_factory: CheckpointFactory) -> Path:
        return checkpoint_factory(**STANDARD_CHECKPOINTS[name])

    return fixture


llama_checkpoint = _standard("llama_checkpoint")
llama_bias_checkpoint = _standard("llama_bias_checkpoint")
llama3_rope_checkpoint = _standard("llama3_rope_checkpoint")
mistral_checkpoint = _standard("mistral_checkpoint")
qwen2_checkpoint = _standard("qwen2_checkpoint")
qwen2_tied_checkpoint = _standard("qwen2_tied_checkpoint")


@pytest.fixture(scope="session", params=sorted(STANDARD_CHECKPOINTS))
def standard_checkpoint(
    request: pytest.FixtureRequest, checkpoint_factory: CheckpointFactory
) -> Path:
    """Each standard checkpoint in turn (tests parametrised over every family variant)."""
    return checkpoint_factory(**STANDARD_CHECKPOINTS[request.param])
