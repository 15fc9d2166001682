"""Result tables of `waferllm reproduce`: named columns with a display format, rows of raw values.

The JSON writes the raw values; `reproduce_output.py` formats them for Markdown by `fmt`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Column", "Section"]


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = "text"  # text | tpr | s | ratio | pct | err (signed %) | x | int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Section:
    """One table of the reproduction: rows are dicts of raw values keyed by column."""

    key: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [dataclasses.asdict(c) for c in self.columns],
            "rows": list(self.rows),
            "notes": list(self.notes),
        }
