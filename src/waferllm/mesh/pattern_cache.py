"""The caches of `patterns`: a pattern priced once per line length when its lines are alike,
and once per byte below that (SPEC.md §10.6's message model is linear in the message size).

Both are exact (the docstrings say why) and bounded (`functools.lru_cache` with a maxsize).
`patterns` decorates its patterns with them; nothing here prices anything itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from waferllm.device import Device
from waferllm.mesh.geometry import Axis
from waferllm.mesh.traffic import Traffic, on_grid, one_line

Pattern = Callable[[Device, tuple[int, int], Axis, Any, int], Traffic]


def per_line(maxsize: int, alike: Callable[[Any], bool]) -> Callable[[Pattern], Pattern]:
    """Cache a pattern `f(device, shape, axis, what, nbytes)` per call and, when `alike(what)`
    (every line the same: one root, a K-tree, groups, one owner row), per line: priced once
    on `traffic.one_line(P)` and put on any grid with a side of P along either axis by
    `traffic.on_grid` (exact: the line's arrays do not depend on the other side, its sums
    scale with it). A square grid's X and Y patterns are then one pricing, and a new grid
    sharing a side with a grid already priced (a decode side seen as a prefill side) reuses
    it. The line cache's key (device, P, what, nbytes) is all the pattern reads of a line.
    `__wrapped__` is the plain pattern (no cache)."""

    def wrap(pattern: Pattern) -> Pattern:
        line = lru_cache(maxsize=maxsize)(_on_one_line(pattern))

        @lru_cache(maxsize=maxsize)
        def priced(
            device: Device, shape: tuple[int, int], axis: Axis, what: Any, nbytes: int
        ) -> Traffic:
            if alike(what):
                return on_grid(line(device, shape[axis.tensor_dim], what, nbytes), shape, axis)
            return pattern(device, shape, axis, what, nbytes)

        functools.update_wrapper(priced, pattern)
        priced.__wrapped__ = pattern  # type: ignore[attr-defined]
        return priced  # type: ignore[return-value]

    return wrap


def _on_one_line(pattern: Pattern) -> Callable[[Device, int, Any, int], Traffic]:
    def line(device: Device, num: int, what: Any, nbytes: int) -> Traffic:
        return pattern(device, one_line(num), Axis.X, what, nbytes)

    return line


def per_byte(maxsize: int, alike: Callable[[Any], bool]) -> Callable[[Pattern], Pattern]:
    """`per_line`, and below it per byte: a call with `nbytes` > 0 scales the pattern priced
    once at 1 byte (`Traffic.scaled`). Exact: every load, byte count and byte-hop is a whole
    multiple of the message size, the paths taken are those of any positive size, and the
    hops do not depend on it (tests/mesh/test_traffic_closed_forms.py compares every pattern
    at many sizes). The same pattern at another size (an attention re-walked at another cache
    width, a block of another length) then costs a scaling, not a pricing. The first size
    asked of a pattern is priced as it is (the same arrays, by the same exactness, without
    the scaling pass: a new grid's walk asks most patterns at one size only); the sizes
    after it scale the unit, which on one line (`per_line`'s pricing) is the first size's
    pricing divided by its size (`_unit_of`), not priced again. `__wrapped__` is the plain
    pattern (no cache, no scaling)."""

    def wrap(pattern: Pattern) -> Pattern:
        unit = lru_cache(maxsize=maxsize)(pattern)
        Key = tuple[Device, tuple[int, int], Axis, Any]
        first: dict[Key, tuple[int, Traffic | None]] = {}  # at most maxsize

        @lru_cache(maxsize=maxsize)
        def unit_of(device: Device, shape: tuple[int, int], axis: Axis, what: Any) -> Traffic:
            """The pattern at 1 byte, from its first size's line pricing when there is one."""
            nbytes, traffic = first.get((device, shape, axis, what), (1, None))
            divided = None if traffic is None else _unit_of(traffic, nbytes)
            return divided if divided is not None else unit(device, shape, axis, what, 1)

        def sized(
            device: Device, shape: tuple[int, int], axis: Axis, what: Any, nbytes: int
        ) -> Traffic:
            if nbytes <= 0 or nbytes == 1:
                return unit(device, shape, axis, what, nbytes)
            key = (device, shape, axis, what)
            seen = first.get(key)
            if seen is None or seen[0] == nbytes:
                traffic = pattern(device, shape, axis, what, nbytes)
                if seen is None:  # a line's pricing is kept (small): its unit divides it
                    first[key] = (nbytes, traffic if shape[0] == 1 else None)
                    if len(first) > maxsize:
                        first.pop(next(iter(first)))
                return traffic
            return unit_of(device, shape, axis, what).scaled(nbytes)

        priced = per_line(maxsize, alike)(sized)
        functools.update_wrapper(priced, pattern)
        priced.__wrapped__ = pattern  # type: ignore[attr-defined]
        return priced

    return wrap


def _unit_of(traffic: Traffic, nbytes: int) -> Traffic | None:
    """`traffic`, a pattern priced at `nbytes` per message, as the pattern at 1 byte: loads,
    bytes injected and byte-hops divided by `nbytes`, the critical message and the slack as
    they are (what `Traffic.scaled` multiplies). Exact: each is a whole multiple of the
    message size (`per_byte`), so each quotient is a whole number, which float division gives
    exactly. None where a load is in a factored form (`loads`): priced instead."""
    size = float(nbytes)
    links = {k: np.divide(v, size) for k, v in traffic.links.items() if isinstance(v, np.ndarray)}
    ramp_in, ramp_out = traffic.ramp_in, traffic.ramp_out
    if not isinstance(ramp_in, np.ndarray) or not isinstance(ramp_out, np.ndarray):
        return None
    if len(links) != len(traffic.links):
        return None
    return Traffic(
        device=traffic.device,
        shape=traffic.shape,
        critical_hops=traffic.critical_hops,
        critical_stages=traffic.critical_stages,
        bytes_injected=traffic.bytes_injected // nbytes,
        link_byte_hops=traffic.link_byte_hops // nbytes,
        links=links,
        ramp_in=np.divide(ramp_in, size),
        ramp_out=np.divide(ramp_out, size),
        mean_slack_cycles=traffic.mean_slack_cycles,
    )
