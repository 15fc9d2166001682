"""One units policy for every command's human output (JSON always carries SI base units:
seconds, tokens/s, joules, bytes).

Durations pick s, ms, us or ns so that the number is at least 1, with three decimals;
throughputs are tokens/s with thousands separators; shares of a whole are rounded so that
they add up to exactly 100.0%. A missing value prints as "-".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "-"
_DURATION_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"))


def duration(seconds: float | None) -> str:
    """12.345 ms, 3.210 s, 845.000 ns."""
    if seconds is None:
        return MISSING
    for scale, unit in _DURATION_UNITS:
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3f} {unit}"
    return f"{seconds / 1e-9:.3f} ns"


def throughput(tokens_per_s: float | None) -> str:
    return MISSING if tokens_per_s is None else f"{tokens_per_s:,.1f} tok/s"


def energy(joules: float | None) -> str:
    return MISSING if joules is None else f"{joules:.4g} J"


def size(num_bytes: int | None) -> str:
    return MISSING if num_bytes is None else f"{num_bytes:,} B"


def count(value: int | None) -> str:
    return MISSING if value is None else f"{value:,}"


def percent(fraction: float | None, digits: int = 1) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.{digits}f}%"


def shares(parts: Sequence[float]) -> list[str]:
    """Each part's share of their sum in tenths of a percent, rounded by largest remainder
    so that the printed shares add up to exactly 100.0% (all "-" when the sum is zero)."""
    total = sum(parts)
    if total <= 0:
        return [MISSING] * len(parts)
    tenths = [1000 * p / total for p in parts]
    floors = [math.floor(t) for t in tenths]
    order = sorted(range(len(parts)), key=lambda i: floors[i] - tenths[i])
    for i in order[: 1000 - sum(floors)]:
        floors[i] += 1
    return [f"{f / 10:.1f}%" for f in floors]
