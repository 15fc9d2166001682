"""Checks of a modelled trace (`--trace`): the Chrome trace-event format, and tracks that add
up to a report's modelled phase times. Shared by the trace tests of every system."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import pytest

from waferllm.api.trace import COMM, COMPUTE, OPS, OVERHEAD

PHASES = ("prefill", "transition", "decode")
SPLIT = {COMPUTE: "compute_s", COMM: "comm_s", OVERHEAD: "overhead_s"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def assert_chrome_trace(trace: dict[str, Any]) -> None:
    """The Chrome trace-event format (JSON object form): required keys and types per phase
    type, metadata naming every process and thread used, and X events on one thread never
    overlapping."""
    json.dumps(trace, allow_nan=False)  # strict JSON: no NaN or inf
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    named: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    complete: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in trace["traceEvents"]:
        assert isinstance(event["name"], str) and event["name"]
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        assert event["ph"] in ("X", "M"), event
        if event["ph"] == "M":
            assert event["name"] in (
                "process_name",
                "process_sort_index",
                "thread_name",
                "thread_sort_index",
            )
            key = "name" if event["name"].endswith("_name") else "sort_index"
            assert isinstance(event["args"][key], str if key == "name" else int)
            named[event["name"]].add((event["pid"], event["tid"]))
            continue
        assert _number(event["ts"]) and _number(event["dur"]) and event["dur"] > 0
        assert isinstance(event["cat"], str) and isinstance(event["args"], dict)
        complete[(event["pid"], event["tid"])].append((event["ts"], event["dur"]))
    for pid, tid in complete:
        assert (pid, 0) in named["process_name"]
        assert (pid, tid) in named["thread_name"]
    for spans in complete.values():
        spans.sort()
        for (ts, dur), (next_ts, _) in zip(spans, spans[1:], strict=False):
            assert next_ts >= ts + dur - 1e-9 * max(1.0, ts), (ts, dur, next_ts)


def _durations_s(trace: dict[str, Any], tid: int) -> list[float]:
    """Modelled seconds on thread `tid` of each phase's process (1, 2, 3)."""
    total = [0.0, 0.0, 0.0]
    for event in trace["traceEvents"]:
        if event["ph"] == "X" and event["tid"] == tid:
            total[event["pid"] - 1] += event["dur"] * 1e-6
    return total


def assert_tracks_add_up(trace: dict[str, Any], breakdown: dict[str, Any]) -> None:
    for index, phase in enumerate(PHASES):
        want = breakdown[phase]
        assert _durations_s(trace, OPS)[index] == pytest.approx(want["modelled_s"], rel=1e-9)
        for tid, key in SPLIT.items():
            assert _durations_s(trace, tid)[index] == pytest.approx(want[key], rel=1e-9, abs=1e-15)
