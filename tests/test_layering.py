"""Imports point only downward (STYLE.md §1): a test walks every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "waferllm"

# Lower number = lower layer. A module may import its own layer or lower ones.
LAYERS = {
    "errors": 0,
    "device": 0,
    "device_sources": 0,
    "mesh": 1,
    "kernels": 2,
    "model": 3,
    "estimate": 4,
    "engine": 5,
    "baselines": 6,
    "api": 7,
    "__init__": 8,
    "cli": 9,
    "__main__": 10,
}
# The CLI talks to the public API only.
CLI_ALLOWED = {"waferllm", "waferllm.api", "waferllm.cli", "waferllm.device", "waferllm.errors"}


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [m for m in found if m == "waferllm" or m.startswith("waferllm.")]


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _violations(src: Path) -> list[str]:
    violations = []
    for path in src.rglob("*.py"):
        module = _module_name(path, src)
        mine = LAYERS[_layer_of(module) if module != "waferllm" else "__init__"]
        for target in _imports(path):
            theirs = LAYERS[_layer_of(target) if target != "waferllm" else "__init__"]
            if theirs > mine:
                violations.append(f"{module} imports {target}")
    return violations


def test_every_import_points_down_the_layers():
    violations = _violations(SRC)
    assert not violations, violations


def test_cli_imports_only_the_public_api():
    bad = []
    for path in (SRC / "cli").rglob("*.py"):
        for target in _imports(path):
            if not any(target == a or target.startswith(a + ".") for a in CLI_ALLOWED):
                bad.append(f"{_module_name(path)} imports {target}")
    assert not bad, bad


def test_device_and_geometry_import_nothing_of_ours_but_the_error_types():
    assert _imports(SRC / "errors.py") == []
    assert _imports(SRC / "device_sources.py") == []  # citations: data only
    assert set(_imports(SRC / "device.py")) <= {"waferllm.errors", "waferllm.device_sources"}
    assert set(_imports(SRC / "mesh/geometry.py")) <= {"waferllm.errors"}


def test_the_layering_test_catches_a_planted_upward_import(tmp_path):
    src = tmp_path / "waferllm"
    (src / "model").mkdir(parents=True)
    (src / "estimate").mkdir()
    (src / "estimate" / "cost.py").write_text("from waferllm.model.plan import plan_model\n")
    assert _violations(src) == []
    (src / "model" / "plan.py").write_text("import waferllm.estimate.cost\n")
    assert _violations(src) == ["waferllm.model.plan imports waferllm.estimate.cost"]
