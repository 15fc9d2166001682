"""Multi-wafer `fit` (SPEC.md §10.10): the model as a pipeline of layer ranges over N devices.

The layers are split into N contiguous ranges as evenly as possible, one per device; each
range is placed on its device by the single-device `fit` placement (`regions.plan_phase`: the
fewest regions that fit), the embedding table on the first device and the final norm and LM
head on the last. Prefill and decode split the layers alike, so a layer's KV cache never
leaves its device. Byte counts only; the link between devices is priced in `mesh.system_link`.
"""

from __future__ import annotations

import dataclasses

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.mesh.geometry import split_sizes
from waferllm.model.placement import PlacementMode
from waferllm.model.regions import Footprint, PhaseRegions, Region, plan_phase


def device_layer_ranges(num_layers: int, num_devices: int) -> tuple[range, ...]:
    """The contiguous layer range of each device, sizes differing by at most one."""
    if num_devices > num_layers:
        raise WaferError(
            f"--num-devices {num_devices} is more than the model's {num_layers} layers: each "
            "device holds at least one layer"
        )
    sizes = split_sizes(num_layers, num_devices)
    starts = [int(sum(sizes[:d])) for d in range(num_devices)]
    return tuple(range(s, s + int(n)) for s, n in zip(starts, sizes, strict=True))


def place_layer_range(
    device: Device,
    grid: tuple[int, int],
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
    own = dataclasses.replace(
        footprint,
        first=footprint.first if first else 0,
        last=footprint.last if last else 0,
    )
    placed = plan_phase(
        device,
        grid,
        len(layers),
        own,
        mode=PlacementMode.FIT,
        capacity_bytes=capacity_bytes,
        what=what,
    )
    return placed.regions


def plan_pipeline_phase(
    device: Device,
    grid: tuple[int, int],
    num_layers: int,
    footprint: Footprint,
    *,
    num_devices: int,
    capacity_bytes: int,
    what: str,
) -> PhaseRegions:
    """One phase's regions over `num_devices` identical devices: device d holds the d-th
    layer range (`device_layer_ranges`), placed by `place_layer_range`. Regions are numbered
    in pipeline order across devices; each keeps its origin on its own device."""
    regions: list[Region] = []
    ranges = device_layer_ranges(num_layers, num_devices)
    for d, layers in enumerate(ranges):
        try:
            local = place_layer_range(
                device,
                grid,
                layers,
                footprint,
                first=d == 0,
                last=d == num_devices - 1,
                capacity_bytes=capacity_bytes,
                what=what,
            )
        except WaferError as exc:
            raise WaferError(
                f"layers {layers.start}-{layers.stop - 1} do not fit device {d} of "
                f"{num_devices} {device.name}s on {grid[0]}x{grid[1]}: {exc}"
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


__all__ = ["device_count", "device_layer_ranges", "place_layer_range", "plan_pipeline_phase"]
