"""The traffic of ring steps, every line alike: one logical line's step (`unit_traffic`, a
ring GEMM's step or skew round) and one step of a ring collective on the interleaved ring
(0, 2, 4, ..., 5, 3, 1: every core sends one block to its ring successor, at most 2 hops, no
link shared), each priced on one line and put on the grid; the walked segments
(`walked_unit`, `walked_ring_step`) are their oracles. Lines of unequal counts and the charges
are in `rings`; the ring allreduce's charges in `ring_allreduce`.
Legend: P cores along the axis.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from waferllm.device import Device
from waferllm.mesh.geometry import Axis, RingKind, ring_successor
from waferllm.mesh.traffic import Traffic, line_traffic, on_grid, one_line


@lru_cache(maxsize=4096)
def ring_step_traffic(
    device: Device, shape: tuple[int, int], axis: Axis, nbytes: int, stages: int
) -> Traffic:
    """One step of a ring collective on the interleaved ring: every core sends `nbytes` to its
    ring successor (at most 2 hops, no link shared); every line alike, so the line's closed
    form (`interleaved_ring_line`) put on the grid with the collective's stages."""
    num = shape[axis.tensor_dim]
    if num >= 2 and nbytes > 0:
        line = on_grid(interleaved_ring_line(device, num, nbytes), shape, axis)
        return dataclasses.replace(line, critical_stages=stages)  # its time found again
    return walked_ring_step(device, shape, axis, nbytes, stages)


def walked_ring_step(
    device: Device, shape: tuple[int, int], axis: Axis, nbytes: int, stages: int
) -> Traffic:
    """`ring_step_traffic` from its segments (`line_traffic`)."""
    src, dst = np.arange(shape[axis.tensor_dim]), ring_successor(shape[axis.tensor_dim])
    hops = int(np.abs(dst - src).max(initial=0))
    return line_traffic(
        device, shape, axis, src=src, dst=dst, nbytes=nbytes, critical_hops=hops,
        critical_stages=stages,
    )  # fmt: skip


def interleaved_ring_line(device: Device, num: int, nbytes: int) -> Traffic:
    """Every core of a line of `num` >= 2 sending `nbytes` > 0 to its neighbour either way round
    the interleaved ring 0, 2, 4, ..., 5, 3, 1 (`line_traffic`'s pricing): 2 hops, 1 at the
    turns, so each link carries one block each way (the evens' one way, the odds' the other,
    the turns' their end links), each ramp one out and one in; byte-hops 2 (P - 1) blocks."""
    block = float(nbytes)
    return Traffic(
        device=device,
        shape=one_line(num),
        critical_hops=2 if num > 2 else 1,
        critical_stages=0,
        bytes_injected=num * nbytes,
        link_byte_hops=2 * (num - 1) * nbytes,
        links={
            (Axis.X, 1): np.full((1, num - 1), block),
            (Axis.X, -1): np.full((1, num - 1), block),
        },
        ramp_in=np.full((1, num), block),
        ramp_out=np.full((1, num), block),
    )


def unit_traffic(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    size: int,
    kind: RingKind,
    steps: int,
    nbytes: int,
) -> Traffic:
    """One logical line advancing `steps` positions, its blocks `nbytes` each, on every
    physical line (a ring GEMM's step or skew round, `rings`): priced once per line length
    (`_line_unit`), put on the grid by `traffic.on_grid` (exact: the lines are alike), so a
    side's skew rounds and steps, either axis, any grid with the side share it."""
    num = shape[axis.tensor_dim]
    line = _line_unit(device, num, size, kind, steps, nbytes)
    return line if shape == one_line(num) and axis is Axis.X else on_grid(line, shape, axis)


@lru_cache(maxsize=1024)
def _line_unit(device: Device, num: int, size: int, kind: RingKind, steps: int, n: int) -> Traffic:
    """`walked_unit` on `one_line(num)`; the interleaved ring of one logical core per core
    (a square grid's MeshGEMM) either way in closed form (`interleaved_ring_line`)."""
    if kind is RingKind.INTERLEAVED and size == num >= 2 and n > 0 and abs(steps) == 1:
        return interleaved_ring_line(device, num, n)
    return walked_unit(device, one_line(num), Axis.X, size, kind, steps, n)


def walked_unit(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    size: int,
    kind: RingKind,
    steps: int,
    nbytes: int,
) -> Traffic:
    """`unit_traffic` from its segments (`line_traffic`): each logical core's block to its
    successor's core. Blocks whose logical successor sits on the same core move nothing."""
    per = size // shape[axis.tensor_dim]
    src = np.arange(size) // per
    dst = ring_successor(size, kind, steps) // per
    hops = int(np.abs(dst - src).max(initial=0))
    return line_traffic(
        device, shape, axis, src=src, dst=dst, nbytes=nbytes, critical_hops=hops, critical_stages=0
    )
