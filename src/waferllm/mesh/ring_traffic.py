"""The traffic of one step of a ring collective on the interleaved ring (0, 2, 4, ..., 5, 3, 1).

Every core sends one block to its ring successor: at most 2 hops, no link shared, every line
alike, so one line's closed form (`interleaved_ring_line`) is put on the grid; the walked
segments (`walked_ring_step`) are its oracle. The ring GEMMs' steps, with per-line counts, are
in `rings`; the ring allreduce's charges in `ring_allreduce`.
Legend: P cores along the axis.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from waferllm.device import Device
from waferllm.mesh.geometry import Axis, ring_successor
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
