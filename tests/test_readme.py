"""Docs are tests: every python block in README.md runs (STYLE.md §20)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert _python_blocks()


def test_every_python_block_in_the_readme_runs():
    for i, block in enumerate(_python_blocks()):
        exec(compile(block, f"README.md block {i}", "exec"), {"__name__": f"readme_{i}"})
