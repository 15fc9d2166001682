"""Results, tokens and ledgers equal the reference snapshot bit for bit (`snapshot.py`).

A refactor or a speed change must leave every estimate report, every generated token and
logit, every ledger record and `reproduce`'s JSON unchanged. An intended change of numbers
regenerates golden.json (`python tests/golden/snapshot.py --write`) in a commit that says why.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import snapshot as snap


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(snap.GOLDEN.read_text())


def _differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Readable paths where two JSON values differ (first few only)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = []
        for key in sorted(set(ours) | set(theirs)):
            if key not in ours or key not in theirs:
                out.append(f"{path}/{key}: only in {'golden' if key in theirs else 'ours'}")
            else:
                out += _differences(ours[key], theirs[key], f"{path}/{key}")
        return out
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [
            d
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for d in _differences(a, b, f"{path}[{i}]")
        ]
    return [] if ours == theirs else [f"{path}: {theirs!r} -> {ours!r}"]


def _check(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    ours = json.loads(json.dumps(ours, sort_keys=True))
    diffs = _differences(ours, theirs)
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:8])


def test_estimate_reports_and_ledgers_are_unchanged(golden):
    _check(snap.estimate_snapshot(), golden["estimate"])


def test_functional_generation_tokens_logits_and_ledgers_are_unchanged(golden):
    _check(snap.generate_snapshot(), golden["generate"])


def test_reproduce_json_is_unchanged(golden):
    _check(snap.reproduce_snapshot(), golden["reproduce"])
