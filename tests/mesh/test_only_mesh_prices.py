"""Only `mesh/` prices communication: no module outside it builds a `Charge` or a `Traffic`,
calls a traffic builder or imports the message model (an AST scan of src/, plus a planted
violation the scan must catch)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "waferllm"
PRICING_NAMES = {"Charge", "ChargeKind", "Traffic", "line_traffic", "merge_all"}
PRICING_MODULES = {"waferllm.mesh.traffic", "waferllm.mesh.patterns"}


def _called_name(func: ast.expr) -> str:
    """`f` for f(...), `Charge.comm` for Charge.comm(...), '' for anything else."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def pricing_violations(path: Path) -> list[str]:
    """Where `path` builds a Charge or Traffic, calls a *_traffic builder or imports them."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = _called_name(node.func)
            parts = name.split(".")
            if PRICING_NAMES & set(parts) or parts[-1].endswith("_traffic"):
                found.append(f"{path.name}:{node.lineno} calls {name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {alias.name for alias in node.names}
            if node.module in PRICING_MODULES or (
                node.module.startswith("waferllm.") and names & PRICING_NAMES
            ):
                found.append(
                    f"{path.name}:{node.lineno} imports {sorted(names)} from {node.module}"
                )
    return found


def test_no_module_outside_mesh_prices_communication():
    outside = [p for p in SRC.rglob("*.py") if "mesh" not in p.relative_to(SRC).parts[:1]]
    assert len(outside) > 30
    violations = [v for path in outside for v in pricing_violations(path)]
    assert not violations, violations


def test_the_scan_catches_a_planted_charge_traffic_and_builder(tmp_path):
    planted = tmp_path / "attention.py"
    planted.write_text(
        "from waferllm.mesh.cost import Charge\n"
        "from waferllm.mesh.patterns import chain_traffic\n"
        "def f(mesh, ledger, traffic):\n"
        "    ledger.charge('x', Charge.comm(traffic))\n"
        "    t = chain_traffic(mesh.device, mesh.shape, 0, None, 8)\n"
        "    return cost.Traffic(device=mesh.device, shape=mesh.shape)\n"
    )
    found = pricing_violations(planted)
    assert len(found) == 5, found
    assert any("Charge.comm" in v for v in found)
    assert any("chain_traffic" in v and "calls" in v for v in found)
    assert any("calls cost.Traffic" in v for v in found)
    clean = tmp_path / "clean.py"
    clean.write_text("def g(ledger, charge):\n    ledger.charge('x', charge)\n")
    assert pricing_violations(clean) == []
