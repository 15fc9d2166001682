"""Placement over the wafer (SPEC.md §10.10): regions, layers per region, hops, re-layouts.

A phase's grid tiles the device in serpentine order, so consecutive regions touch; `fit` gives
each region a contiguous range of layers (the fewest regions whose per-core bytes fit SRAM) and
a request walks the regions in turn, paying the hop between neighbours. `per-layer` places one
layer on the grid and multiplies. Re-layouts between the prefill and decode plans (the KV
hand-off, the weights with one resident layout) are priced by `relayout_charge`.
Per-core byte counts come from `placement.py`; nothing here touches tensor data.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from waferllm.device import Device
from waferllm.errors import SramOverflowError, WaferError
from waferllm.mesh.cost import Charge, ChargeKind
from waferllm.mesh.geometry import Axis, split_sizes
from waferllm.model.placement import PlacementMode


@dataclasses.dataclass(frozen=True)
class Region:
    index: int
    origin: tuple[int, int]  # (row, col) of its top-left core on the device
    layers: range


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


def region_origins(device: Device, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left cores of the grid-shaped slots of the device, serpentine so neighbours touch."""
    rows, cols = grid
    across, down = device.mesh_cols // cols, device.mesh_rows // rows
    out: list[tuple[int, int]] = []
    for i in range(down):
        order = range(across) if i % 2 == 0 else range(across - 1, -1, -1)
        out.extend((i * rows, j * cols) for j in order)
    return out


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
    origins = region_origins(device, grid)
    if not origins:
        raise WaferError(f"{what} grid {grid[0]}x{grid[1]} is larger than the {device.name} mesh")
    if mode is PlacementMode.PER_LAYER:
        one = np.array([1])
        if not _fits(footprint, one, capacity_bytes)[0]:
            _overflow(what, footprint, 1, capacity_bytes, grid, "per-layer: one layer")
        return PhaseRegions(grid, (Region(0, origins[0], range(num_layers)),))
    for count in range(1, num_layers + 1):
        sizes = split_sizes(num_layers, count)
        if _fits(footprint, sizes, capacity_bytes).all():
            break
    else:
        _overflow(what, footprint, 1, capacity_bytes, grid, "one layer per region")
    if count > len(origins):
        wafers = math.ceil(count / len(origins))
        raise WaferError(
            f"the model does not fit one {device.name}: {what} needs {count} regions of "
            f"{grid[0]}x{grid[1]} cores and the device has {len(origins)} (about {wafers} "
            f"wafers); use a larger grid, placement per-layer, or a larger device"
        )
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


# ---- moving data between regions and plans -------------------------------------------------------
def _blocks(size: int, parts: int) -> np.ndarray:
    """Which of `parts` equal tiles (ceil split, as `Layout`) each index of `size` falls in."""
    return np.arange(size) // math.ceil(size / parts)


def block_coords(size: int, parts: int, origin: int) -> np.ndarray:
    return origin + _blocks(size, parts)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Move:
    """Elements (a, b) of a tensor moving from core (a_row[a], b_col[b]) to
    (a_row2[a], b_col2[b]) when `crossed` is False, or to (b_row2[b], a_col2[a]) when True
    (a transposed placement). `count` copies move at once (layers, K and V)."""

    a_src: np.ndarray
    b_src: np.ndarray
    a_dst: np.ndarray
    b_dst: np.ndarray
    crossed: bool = False
    count: int = 1


def relayout_charge(device: Device, moves: list[Move]) -> Charge:
    """One communication step moving every element of `moves` at once.

    Cost: the farthest element's hops * alpha plus the busiest of (a) a bisection cut, its
    bytes spread over the links that cross it (a redistribution spreads over the whole cut of
    the cores involved), and (b) a core's ramp, sending or receiving its bytes. Elements whose
    core does not change cost nothing. Sizes in the storage dtype.
    """
    rows, cols = device.mesh_rows, device.mesh_cols
    cut_y = np.zeros((2, max(rows - 1, 0)))
    cut_x = np.zeros((2, max(cols - 1, 0)))
    ramp = moved = byte_hops = 0.0
    hops = 0
    lo_r, hi_r, lo_c, hi_c = rows, 0, cols, 0
    for m in moves:
        dst_r, dst_c = (m.b_dst, m.a_dst) if m.crossed else (m.a_dst, m.b_dst)
        src_r, src_c = m.a_src, m.b_src
        lo_r, hi_r = min(lo_r, src_r.min(), dst_r.min()), max(hi_r, src_r.max(), dst_r.max())
        lo_c, hi_c = min(lo_c, src_c.min(), dst_c.min()), max(hi_c, src_c.max(), dst_c.max())
        if m.crossed:
            # rows: source follows a, destination follows b; columns the other way round
            cut_y += m.count * _cross_cuts(src_r, dst_r, rows)
            cut_x += m.count * _cross_cuts(src_c, dst_c, cols)
            # element (a, b) stays home when a's (src row, dst col) equals b's (dst row, src col)
            stay = _pairs(src_r, dst_c, rows, cols) * _pairs(dst_r, src_c, rows, cols)
            sent = _busiest(_counts(src_r, rows), _counts(src_c, cols), stay)
            received = _busiest(_counts(dst_r, rows), _counts(dst_c, cols), stay)
            count = len(src_r) * len(src_c) - int(stay.sum())
            dist = _pair_distance(src_r, dst_r, rows) + _pair_distance(src_c, dst_c, cols)
        else:
            cut_y += m.count * len(src_c) * _direct_cuts(src_r, dst_r, rows)
            cut_x += m.count * len(src_r) * _direct_cuts(src_c, dst_c, cols)
            stay_r, stay_c = src_r == dst_r, src_c == dst_c
            home = (_counts(src_r[stay_r], rows), _counts(src_c[stay_c], cols))
            sent = _busiest(_counts(src_r, rows), _counts(src_c, cols), home)
            home = (_counts(dst_r[stay_r], rows), _counts(dst_c[stay_c], cols))
            received = _busiest(_counts(dst_r, rows), _counts(dst_c, cols), home)
            count = len(src_r) * len(src_c) - int(stay_r.sum()) * int(stay_c.sum())
            dist = (
                len(src_c) * np.abs(src_r - dst_r).sum() + len(src_r) * np.abs(src_c - dst_c).sum()
            )
        if count == 0:
            continue
        ramp = max(ramp, m.count * max(sent, received))
        moved += m.count * count
        byte_hops += m.count * float(dist)
        if m.crossed:
            hops = max(hops, _span(src_r, dst_r) + _span(src_c, dst_c))
        else:
            hops = max(hops, int(np.abs(src_r - dst_r).max()) + int(np.abs(src_c - dst_c).max()))
    if moved == 0:
        return Charge(kind=ChargeKind.COMM, cycles=0.0)
    nbytes = device.storage_bytes
    cut = max(
        float(cut_y.max(initial=0.0)) / (hi_c - lo_c + 1),
        float(cut_x.max(initial=0.0)) / (hi_r - lo_r + 1),
    )
    size_term = max(
        cut * nbytes / device.link_bytes_per_cycle,
        ramp * nbytes / device.ramp_bytes_per_cycle,
    )
    return Charge(
        kind=ChargeKind.COMM,
        cycles=hops * device.hop_latency_cycles + size_term,
        bytes_injected=int(moved * nbytes),
        link_byte_hops=int(byte_hops * nbytes),
        critical_hops=int(hops),
        overhead_cycles=device.op_overhead_cycles,
    )


def _busiest(
    per_row: np.ndarray, per_col: np.ndarray, home: np.ndarray | tuple[np.ndarray, np.ndarray]
) -> float:
    """max over cores of outer(per_row, per_col) - home (elements that stay put).

    `home` is a (rows, cols) histogram or a pair of vectors whose outer product it is; it never
    exceeds the outer product, so cores outside the product's support hold 0 and only the
    support (rows and columns with elements) is materialised.
    """
    r, c = np.flatnonzero(per_row), np.flatnonzero(per_col)
    if r.size == 0 or c.size == 0:
        return 0.0
    block = np.outer(per_row[r], per_col[c])
    if isinstance(home, tuple):
        block = block - np.outer(home[0][r], home[1][c])
    else:
        block = block - home[np.ix_(r, c)]
    return float(block.max(initial=0.0))


def _direct_cuts(src: np.ndarray, dst: np.ndarray, length: int) -> np.ndarray:
    """(2, length-1): elements crossing each cut i|i+1 towards + and towards -."""
    diff = np.zeros((2, length + 1))
    up, down = dst > src, dst < src
    np.add.at(diff[0], src[up], 1)
    np.add.at(diff[0], dst[up], -1)
    np.add.at(diff[1], dst[down], 1)
    np.add.at(diff[1], src[down], -1)
    return np.cumsum(diff, axis=1)[:, : length - 1]


def _cross_cuts(src: np.ndarray, dst: np.ndarray, length: int) -> np.ndarray:
    """Like `_direct_cuts` for every pair (i, j) moving from src[i] to dst[j]."""
    at = np.arange(length - 1)
    src_before = np.searchsorted(np.sort(src), at, side="right")  # src <= cut
    dst_before = np.searchsorted(np.sort(dst), at, side="right")
    forward = src_before * (len(dst) - dst_before)
    backward = (len(src) - src_before) * dst_before
    return np.stack([forward, backward]).astype(np.float64)


def _pair_distance(src: np.ndarray, dst: np.ndarray, length: int) -> float:
    """Sum over all pairs (i, j) of |src[i] - dst[j]|."""
    a, b = _counts(src, length), _counts(dst, length)
    # sum_i sum_j |p_i - q_j| = sum over cuts of (left of a * right of b + right of a * left of b)
    left_a, left_b = np.cumsum(a)[:-1], np.cumsum(b)[:-1]
    return float((left_a * (b.sum() - left_b) + (a.sum() - left_a) * left_b).sum())


def _pairs(rows_of: np.ndarray, cols_of: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) histogram of the pairs (rows_of[i], cols_of[i])."""
    flat = np.bincount(rows_of * cols + cols_of, minlength=rows * cols)
    return flat.reshape(rows, cols).astype(np.float64)


def _counts(coords: np.ndarray, length: int) -> np.ndarray:
    return np.bincount(coords, minlength=length).astype(np.float64)


def _peak(coords: np.ndarray) -> float:
    return float(np.bincount(coords).max(initial=0)) if len(coords) else 0.0


def _span(src: np.ndarray, dst: np.ndarray) -> int:
    """Farthest move along one axis over all pairs (src[i], dst[j])."""
    if not len(src) or not len(dst):
        return 0
    return int(max(abs(int(src.max()) - int(dst.min())), abs(int(dst.max()) - int(src.min()))))
