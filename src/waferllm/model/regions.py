"""Placement over the wafer (SPEC.md §10.10): regions, layers per region, hops, re-layouts.

A phase's grid tiles the device in serpentine order, so consecutive regions touch; `fit` gives
each region a contiguous range of layers (the fewest regions whose per-core bytes fit SRAM) and
a request walks the regions in turn, paying the hop between neighbours. `per-layer` places one
layer on the grid and multiplies. Moving data between regions and plans is priced
in `mesh/relayout.py`.
Per-core byte counts come from `placement.py`; nothing here touches tensor data.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from waferllm.device import Device
from waferllm.errors import SramOverflowError, WaferError
from waferllm.mesh.geometry import Axis, split_sizes
from waferllm.model.placement import PlacementMode


@dataclasses.dataclass(frozen=True)
class Region:
    index: int
    origin: tuple[int, int]  # (row, col) of its top-left core on the device
    layers: range
    device: int = 0  # which of the linked devices holds it (multi-wafer `fit`, pipeline.py)


@dataclasses.dataclass(frozen=True)
class PhaseRegions:
    """One phase's regions: all of them `grid`-shaped, holding consecutive layers."""

    grid: tuple[int, int]
    regions: tuple[Region, ...]

    def region_of(self, layer: int) -> Region:
        for region in self.regions:
            if layer in region.layers:
                return region
        raise IndexError(f"layer {layer} is in no region")

    def hop(self, index: int) -> tuple[Axis, int]:
        """(axis, signed cores) from region `index` to region `index + 1`."""
        (y0, x0), (y1, x1) = self.regions[index].origin, self.regions[index + 1].origin
        return (Axis.X, x1 - x0) if y0 == y1 else (Axis.Y, y1 - y0)


def region_count(device: Device, grid: tuple[int, int]) -> int:
    """How many grid-shaped slots tile the device (counted, not listed)."""
    return (device.mesh_cols // grid[1]) * (device.mesh_rows // grid[0])


def region_origins(
    device: Device, grid: tuple[int, int], *, limit: int | None = None
) -> list[tuple[int, int]]:
    """Top-left cores of the grid-shaped slots of the device, serpentine so neighbours touch;
    the first `limit` only when given (a huge device has millions of slots)."""
    rows, cols = grid
    across, down = device.mesh_cols // cols, device.mesh_rows // rows
    wanted = across * down if limit is None else min(limit, across * down)
    out: list[tuple[int, int]] = []
    for i in range(-(-wanted // across) if across else 0):
        order = range(across) if i % 2 == 0 else range(across - 1, -1, -1)
        out.extend((i * rows, j * cols) for j in order)
    return out[:wanted]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Footprint:
    """Per-core bytes of one phase's plan on its grid (storage dtype)."""

    layer: int  # one decoder layer's tensors
    first: int  # extra on the first region (embedding table)
    last: int  # extra on the last region (final norm, LM head)
    reserve: int  # every region: activations, scratch, a minimal KV cache


def _fits(footprint: Footprint, counts: np.ndarray, capacity: int) -> np.ndarray:
    need = counts * footprint.layer + footprint.reserve
    need[0] += footprint.first
    need[-1] += footprint.last
    return need <= capacity


def plan_phase(
    device: Device,
    grid: tuple[int, int],
    num_layers: int,
    footprint: Footprint,
    *,
    mode: PlacementMode,
    capacity_bytes: int,
    what: str,
) -> PhaseRegions:
    """The fewest regions whose per-core bytes fit, layers split as evenly as possible."""
    available = region_count(device, grid)
    if not available:
        raise WaferError(f"{what} grid {grid[0]}x{grid[1]} is larger than the {device.name} mesh")
    if mode is PlacementMode.PER_LAYER:
        one = np.array([1])
        if not _fits(footprint, one, capacity_bytes)[0]:
            _overflow(what, footprint, 1, capacity_bytes, grid, "per-layer: one layer")
        origin = region_origins(device, grid, limit=1)[0]
        return PhaseRegions(grid, (Region(0, origin, range(num_layers)),))
    for count in range(1, num_layers + 1):
        sizes = split_sizes(num_layers, count)
        if _fits(footprint, sizes, capacity_bytes).all():
            break
    else:
        _overflow(what, footprint, 1, capacity_bytes, grid, "one layer per region")
    if count > available:
        wafers = math.ceil(count / available)
        raise WaferError(
            f"the model does not fit one {device.name}: {what} needs {count} regions of "
            f"{grid[0]}x{grid[1]} cores and the device has {available} (about {wafers} "
            f"wafers); use a larger grid, placement per-layer, or a larger device"
        )
    origins = region_origins(device, grid, limit=count)
    starts = np.cumsum(sizes) - sizes
    regions = tuple(
        Region(i, origins[i], range(int(s), int(s + n)))
        for i, (s, n) in enumerate(zip(starts, sizes, strict=True))
    )
    return PhaseRegions(grid, regions)


def _overflow(
    what: str, fp: Footprint, layers: int, capacity: int, grid: tuple[int, int], how: str
) -> None:
    need = layers * fp.layer + fp.reserve + fp.first + fp.last
    raise SramOverflowError(
        tensor=f"{what} plan ({how})",
        core=(0, 0),
        needed_bytes=need,
        available_bytes=capacity,
        hint=f"one layer alone takes {fp.layer} bytes per core on {grid[0]}x{grid[1]}; "
        "use a larger grid or a device with more SRAM per core",
    )
