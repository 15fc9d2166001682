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
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tiling import LCM_FACTOR
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


def free_bytes(footprint: Footprint, count: int, capacity: int) -> np.ndarray:
    """(count,) per-core bytes each of `count` regions has for layers (the first region also
    holds the embedding table, the last the LM head)."""
    free = np.full(count, capacity - footprint.reserve, dtype=np.int64)
    free[0] -= footprint.first
    free[-1] -= footprint.last
    return free


def split_layers(num_layers: int, free: np.ndarray, layer_bytes: int) -> np.ndarray | None:
    """Layers per region, contiguous and as even as the room allows: every region takes
    min(room, t) for the smallest level t that places them all, and the surplus comes off the
    regions with the fewest free bytes (those holding a vocabulary table first), so regions
    that also hold the embedding or LM head take fewer layers. None if they do not fit."""
    room = np.maximum(free, 0) // max(layer_bytes, 1)
    if room.sum() < num_layers or (room < 1).any():
        return None
    level = -(-num_layers // len(room))
    while np.minimum(room, level).sum() < num_layers:
        level += 1
    sizes = np.minimum(room, level)
    surplus = int(sizes.sum()) - num_layers
    for i in np.argsort(free, kind="stable"):
        if surplus and sizes[i] == level and level > 1:
            sizes[i] -= 1
            surplus -= 1
    return sizes


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
    """The fewest regions whose per-core bytes fit, layers split as evenly as the room of
    each allows (`split_layers`)."""
    available = region_count(device, grid)
    if not available:
        raise WaferError(f"{what} grid {grid[0]}x{grid[1]} is larger than the {device.name} mesh")
    if mode is PlacementMode.PER_LAYER:
        if split_layers(1, free_bytes(footprint, 1, capacity_bytes), footprint.layer) is None:
            _overflow(what, footprint, 1, capacity_bytes, grid, "per-layer: one layer")
        origin = region_origins(device, grid, limit=1)[0]
        return PhaseRegions(grid, (Region(0, origin, range(num_layers)),))
    for count in range(1, num_layers + 1):
        free = free_bytes(footprint, count, capacity_bytes)
        sizes = split_layers(num_layers, free, footprint.layer)
        if sizes is not None:
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
    assert sizes is not None
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


# ---- tilings of the whole device -------------------------------------------------------------
TILING_SLACK = 48  # a ring grid may give up this many cores of side to keep lcm(R, C) small
MAX_TILING_REGIONS = 8


def device_tilings(
    device: Device, *, ring: bool, dims: tuple[int, ...] = ()
) -> list[tuple[int, int]]:
    """Grids whose regions tile (nearly) the whole device, fewest regions first: for every
    k_r x k_c regions (at most `MAX_TILING_REGIONS`), rows <= mesh_rows / k_r and cols <=
    mesh_cols / k_c. A `ring` grid (prefill's MeshGEMMs) must have a small logical grid
    (`tiling.grid_works`) and gives up to `TILING_SLACK` cores of side for it, choosing the
    most cores times the share of each of `dims` (the model's inner GEMM dimensions) left
    after padding to lcm(R, C); decode grids take the whole share."""
    out: list[tuple[int, int, int]] = []
    for k_r in range(1, MAX_TILING_REGIONS + 1):
        for k_c in range(1, MAX_TILING_REGIONS // k_r + 1):
            rows, cols = device.mesh_rows // k_r, device.mesh_cols // k_c
            if rows < 1 or cols < 1:
                continue
            grid = _ring_tile(rows, cols, dims) if ring else (rows, cols)
            if grid is not None:
                out.append((k_r * k_c, *grid))
    seen: set[tuple[int, int]] = set()
    ordered = []
    for _, r, c in sorted(out, key=lambda t: (t[0], -t[1] * t[2])):
        if (r, c) not in seen:
            seen.add((r, c))
            ordered.append((r, c))
    return ordered


def _ring_tile(rows: int, cols: int, dims: tuple[int, ...]) -> tuple[int, int] | None:
    r = np.arange(rows, max(rows - TILING_SLACK, 0), -1)[:, None]
    c = np.arange(cols, max(cols - TILING_SLACK, 0), -1)[None, :]
    size = np.lcm(r, c)
    value = np.where(size <= LCM_FACTOR * np.maximum(r, c), r * c, 0).astype(np.float64)
    for k in dims:
        value *= k / (-(-k // size) * size)  # the share left after padding K to lcm(R, C)
    if value.max() <= 0:
        return None
    i, j = np.unravel_index(int(np.argmax(value)), value.shape)
    return int(r[i, 0]), int(c[0, j])
