"""Multi-wafer `fit` (SPEC.md §10.10): the model as a pipeline of layer ranges over N devices.

The layers are split into N contiguous ranges, one per device, as evenly as each device's
room allows (`pipeline_layer_ranges`): a device's room is the layers its whole tiling of the
phase's grid holds, so the devices holding a vocabulary table (the embedding on the first, the
final norm and LM head on the last) take fewer layers when the split is uneven. Each range is
placed on its device by the single-device `fit` placement (`regions.plan_phase`: the fewest
regions that fit). Prefill and decode split the layers alike, so a layer's KV cache never
leaves its device. Byte counts only; the link between devices is priced in `mesh.system_link`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.model.placement import PlacementMode
from waferllm.model.regions import (
    Footprint,
    PhaseRegions,
    Region,
    free_bytes,
    plan_phase,
    region_count,
)

Grid = tuple[int, int]


def check_device_count(num_layers: int, num_devices: int) -> None:
    """Every device holds at least one layer."""
    if num_devices > num_layers:
        raise WaferError(
            f"--num-devices {num_devices} is more than the model's {num_layers} layers: each "
            "device holds at least one layer"
        )


def _own(footprint: Footprint, *, first: bool, last: bool) -> Footprint:
    """The footprint of one device: the embedding only if `first`, the LM head only if `last`."""
    return dataclasses.replace(
        footprint,
        first=footprint.first if first else 0,
        last=footprint.last if last else 0,
    )


def device_rooms(
    device: Device, grid: Grid, footprint: Footprint, *, num_devices: int, capacity_bytes: int
) -> np.ndarray:
    """(num_devices,) the most layers each device holds on every `grid`-shaped slot of its
    mesh (its end slots carrying the device's vocabulary tables); 0 where a slot holding a
    table has no room for one layer. Closed form: the end slots' rooms plus (slots - 2) x
    the room of a slot holding no table."""
    slots = region_count(device, grid)
    rooms = np.zeros(num_devices, dtype=np.int64)
    if not slots:
        return rooms
    per_layer = max(footprint.layer, 1)
    middle = max(capacity_bytes - footprint.reserve, 0) // per_layer * max(slots - 2, 0)
    for d in range(num_devices):
        own = _own(footprint, first=d == 0, last=d == num_devices - 1)
        ends = np.maximum(free_bytes(own, min(slots, 2), capacity_bytes), 0) // per_layer
        rooms[d] = 0 if (ends < 1).any() else int(ends.sum()) + middle
    return rooms


def pipeline_layer_ranges(
    device: Device,
    phases: Sequence[tuple[Grid, Footprint]],
    *,
    num_layers: int,
    num_devices: int,
    capacity_bytes: int,
) -> tuple[range, ...]:
    """The contiguous layer range of each device, shared by every phase: device d takes
    min(room_d, t) layers for the smallest level t that places them all (room_d: the fewest
    layers any phase's grid lets it hold, `device_rooms`), and the surplus comes off the
    devices with the least room, those holding a vocabulary table first (as
    `regions.split_layers` does over one device's regions). Raises a WaferError when the
    devices' rooms do not add up to the model."""
    check_device_count(num_layers, num_devices)
    rooms = np.min(
        [
            device_rooms(device, grid, fp, num_devices=num_devices, capacity_bytes=capacity_bytes)
            for grid, fp in phases
        ],
        axis=0,
    )
    table_bytes = np.zeros(num_devices, dtype=np.int64)
    table_bytes[0] += sum(fp.first for _, fp in phases)
    table_bytes[-1] += sum(fp.last for _, fp in phases)
    sizes = _level_split(num_layers, rooms, table_bytes)
    if sizes is None:
        shapes = " and ".join(sorted({f"{g[0]}x{g[1]}" for g, _ in phases}))
        raise WaferError(
            f"the model does not fit {num_devices} {device.name}s on {shapes}: their meshes hold "
            f"{[int(r) for r in rooms]} layers per device and the model has {num_layers}"
        )
    starts = np.cumsum(sizes) - sizes
    return tuple(range(int(s), int(s + n)) for s, n in zip(starts, sizes, strict=True))


def _level_split(num_layers: int, rooms: np.ndarray, table_bytes: np.ndarray) -> np.ndarray | None:
    """min(room, t) layers each for the smallest level t that places them all; the surplus
    off the devices with the least room, ties going to those with the most table bytes."""
    if rooms.sum() < num_layers or (rooms < 1).any():
        return None
    level = -(-num_layers // len(rooms))
    while np.minimum(rooms, level).sum() < num_layers:
        level += 1
    sizes = np.minimum(rooms, level)
    surplus = int(sizes.sum()) - num_layers
    for i in np.lexsort((-table_bytes, rooms)):
        if surplus and sizes[i] == level and level > 1:
            sizes[i] -= 1
            surplus -= 1
    return sizes


def place_layer_range(
    device: Device,
    grid: Grid,
    layers: range,
    footprint: Footprint,
    *,
    first: bool,
    last: bool,
    capacity_bytes: int,
    what: str,
) -> tuple[Region, ...]:
    """`layers` on one device with the single-device `fit` placement: the fewest grid-shaped
    regions whose per-core bytes fit, the embedding table only if `first`, the final norm and
    LM head only if `last`. Region indices and layers are local to the device (0-based)."""
    placed = plan_phase(
        device,
        grid,
        len(layers),
        _own(footprint, first=first, last=last),
        mode=PlacementMode.FIT,
        capacity_bytes=capacity_bytes,
        what=what,
    )
    return placed.regions


def plan_pipeline_phase(
    device: Device,
    grid: Grid,
    footprint: Footprint,
    *,
    ranges: Sequence[range],
    capacity_bytes: int,
    what: str,
) -> PhaseRegions:
    """One phase's regions over `len(ranges)` identical devices: device d holds `ranges[d]`
    (`pipeline_layer_ranges`), placed by `place_layer_range`. Regions are numbered in pipeline
    order across devices; each keeps its origin on its own device."""
    regions: list[Region] = []
    count = len(ranges)
    for d, layers in enumerate(ranges):
        try:
            local = place_layer_range(
                device,
                grid,
                layers,
                footprint,
                first=d == 0,
                last=d == count - 1,
                capacity_bytes=capacity_bytes,
                what=what,
            )
        except WaferError as exc:
            raise WaferError(
                f"layers {layers.start}-{layers.stop - 1} do not fit device {d} of "
                f"{count} {device.name}s on {grid[0]}x{grid[1]}: {exc}"
            ) from None
        shift, base = layers.start, len(regions)
        regions.extend(
            Region(
                base + i,
                r.origin,
                range(r.layers.start + shift, r.layers.stop + shift),
                device=d,
            )
            for i, r in enumerate(local)
        )
    return PhaseRegions(grid, tuple(regions))


def device_count(regions: PhaseRegions) -> int:
    """How many devices a phase's regions span."""
    return regions.regions[-1].device + 1


def layers_per_device(regions: PhaseRegions) -> tuple[range, ...]:
    """Each device's contiguous layer range, read from a phase's regions."""
    out = []
    for d in range(device_count(regions)):
        mine = [r.layers for r in regions.regions if r.device == d]
        out.append(range(mine[0].start, mine[-1].stop))
    return tuple(out)


__all__ = [
    "check_device_count",
    "device_count",
    "device_rooms",
    "layers_per_device",
    "pipeline_layer_ranges",
    "place_layer_range",
    "plan_pipeline_phase",
]
