"""Serving requests: the trace a serving simulation replays (SPEC.md §10.13).

`Request` is one arrival (time, prompt and output lengths); `load_requests` reads a JSONL trace
with errors that name the line, field and value; `poisson_requests` draws seeded Poisson
arrivals with fixed lengths. Nothing here knows about costs or scheduling.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from waferllm.errors import WaferError

__all__ = ["Request", "load_requests", "poisson_requests"]

FIELDS = ("arrival_s", "prompt_len", "output_len")
MAX_SECONDS = 1e300  # beyond, an integer time would not convert to a float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """One request: it arrives at `arrival_s`, has `prompt_len` prompt tokens and wants
    `output_len` generated tokens (the first one comes out of the prefill)."""

    arrival_s: float
    prompt_len: int
    output_len: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.arrival_s) or self.arrival_s < 0:
            raise WaferError(f"arrival_s={self.arrival_s!r} must be a finite time >= 0")
        for name in ("prompt_len", "output_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WaferError(f"{name}={value!r} must be a positive integer")

    @property
    def max_context_tokens(self) -> int:
        """KV tokens at the end: the prompt and every generated token but the last (never fed
        back)."""
        return self.prompt_len + self.output_len - 1


def load_requests(path: str | Path) -> list[Request]:
    """Read a JSONL trace: one object per line with `arrival_s`, `prompt_len`, `output_len`.

    Blank or malformed lines, missing fields, negative or non-finite times and non-integer or
    non-positive lengths are errors naming the line number, the field and the value. Requests
    are returned sorted by arrival (stable: ties keep file order).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WaferError(f"cannot read requests file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WaferError(f"requests file {path} is not UTF-8 text") from None
    if not lines:
        raise WaferError(f"requests file {path} is empty (expected one JSON object per line)")
    requests = [_parse_line(path, number, line) for number, line in enumerate(lines, start=1)]
    return sorted(requests, key=lambda r: r.arrival_s)


def _parse_line(path: Path, number: int, line: str) -> Request:
    where = f"{path}:{number}"
    if not line.strip():
        raise WaferError(f"{where}: empty line (expected a JSON object with {', '.join(FIELDS)})")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WaferError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise WaferError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [name for name in FIELDS if name not in obj]
    if missing:
        raise WaferError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise WaferError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {FIELDS}")
    return Request(
        arrival_s=_time(where, obj["arrival_s"]),
        prompt_len=_length(where, "prompt_len", obj["prompt_len"]),
        output_len=_length(where, "output_len", obj["output_len"]),
    )


def _time(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WaferError(f"{where}: arrival_s={value!r} is not a number")
    seconds = float(value) if abs(value) < MAX_SECONDS else math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise WaferError(f"{where}: arrival_s={value!r:.40} must be a finite time >= 0 seconds")
    return seconds


def _length(where: str, name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 128.0 is 128; 128.5 is not a length
    if isinstance(value, bool) or not isinstance(value, int):
        raise WaferError(f"{where}: {name}={value!r} is not an integer")
    if value < 1:
        raise WaferError(f"{where}: {name}={value!r} must be a positive integer")
    return value


def poisson_requests(
    *, rate_per_s: float, num_requests: int, prompt_len: int, output_len: int, seed: int = 0
) -> list[Request]:
    """`num_requests` arrivals of a Poisson process of `rate_per_s` requests per second
    (exponential gaps, the first arrival one gap after 0), all with the same lengths."""
    if isinstance(rate_per_s, bool) or not math.isfinite(rate_per_s) or rate_per_s <= 0:
        raise WaferError(f"rate={rate_per_s!r} must be a positive number of requests per second")
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise WaferError(f"num_requests={num_requests!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise WaferError(f"seed={seed!r} must be an integer >= 0")
    gaps_s = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=num_requests)
    return [
        Request(arrival_s=float(t), prompt_len=prompt_len, output_len=output_len)
        for t in np.cumsum(gaps_s)
    ]
