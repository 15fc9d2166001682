"""One phase's meshes and the tensors placed on them, from a `ModelPlan` (SPEC.md §5, §10.4).

`build_phase` creates one `Mesh` per region of the plan and places each layer's weights
(`placement.py`; in estimate mode a region's later layers repeat its first's meta tiles) and
the vocabulary tables; `wide_enough` widens a device for the notional `per-layer` vocabulary
regions. The SRAM trackers check every allocation again as it happens. Deciding the regions
is `plan.py`'s.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from waferllm.device import Device
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh
from waferllm.model.placement import (
    Phase,
    PlacedLayer,
    norm_spec,
    place,
    place_layer,
    place_table,
    repeat_layer,
    table_view,
    vocab_spec,
)
from waferllm.model.regions import PhaseRegions
from waferllm.model.weights import ModelWeights

if TYPE_CHECKING:
    from waferllm.model.plan import ModelPlan


@dataclasses.dataclass(eq=False)
class PhaseState:
    """One phase's meshes (one per region) and the tensors placed on them. `head_mesh` holds
    the LM head and final norm (the last region's in `fit`); `per-layer` adds notional meshes
    for the vocabulary tables (`vocab_meshes`), beside the layer's region."""

    phase: Phase
    regions: PhaseRegions
    meshes: list[Mesh]
    layers: dict[int, PlacedLayer]
    embed_mesh: Mesh
    embed_table: DistTensor  # [D, V], `lm_head` itself when tied
    embed_view: DistTensor  # the vocab table seen as [V, D] for the lookup
    head_mesh: Mesh
    lm_head: DistTensor  # [D, V] GEMV weight
    final_norm: DistTensor
    vocab_meshes: list[Mesh]

    @property
    def all_meshes(self) -> list[Mesh]:
        return [*self.meshes, *self.vocab_meshes]


def build_phase(
    plan: ModelPlan,
    phase: Phase,
    weights: ModelWeights | None,
    mesh_args: dict[str, Any],
    *,
    twin: PhaseState | None = None,
) -> PhaseState:
    """Place `phase`'s tensors on its regions. `twin`, the other phase already placed: its
    vocabulary tables' tiles are shared where the grids allow (`_table`)."""
    config = plan.config
    regions = plan.prefill if phase is Phase.PREFILL else plan.decode
    rows, cols = regions.grid
    meshes = [Mesh(plan.device, rows, cols, origin=r.origin, **mesh_args) for r in regions.regions]
    reserved = plan.other_plan_bytes[phase]
    for mesh in meshes:
        if reserved:
            mesh.sram.alloc("other plan's weights (resident layouts both)", reserved)
    layers: dict[int, PlacedLayer] = {}
    for region, mesh in zip(regions.regions, meshes, strict=True):
        placed = region.layers if weights is not None else region.layers[:1]
        for i in placed:
            host = weights.layers[i] if weights is not None else None
            layers[i] = place_layer(
                mesh, config, phase, host, name=f"layer{i}", stored=plan.storage.weights
            )
        if len(placed) < len(region.layers):  # estimate mode: the same meta tiles
            rest = region.layers[1:]
            again = repeat_layer(mesh, layers[placed[0]], names=[f"layer{i}" for i in rest])
            layers.update(zip(rest, again, strict=True))
    vocab_meshes = _vocab_meshes(plan, regions, mesh_args) if plan.apart else []
    spec, wdt = vocab_spec(config, phase), plan.storage.weights
    last = vocab_meshes[0] if vocab_meshes else meshes[-1]
    head_host, embed_host = (weights.lm_head, weights.embed) if weights else (None, None)
    lm_head = place_table(last, spec, head_host, "lm_head", wdt, twin.lm_head if twin else None)
    if config.tie_word_embeddings:
        table, embed_mesh = lm_head, last
    else:
        embed_mesh = vocab_meshes[-1] if vocab_meshes else meshes[0]
        twin_table = twin.embed_table if twin else None
        table = place_table(embed_mesh, spec, embed_host, "embed", wdt, twin_table)
    norm = place(
        last, norm_spec(config, phase), weights.final_norm if weights else None, "final_norm"
    )
    return PhaseState(
        phase=phase,
        regions=regions,
        meshes=meshes,
        layers=layers,
        embed_mesh=embed_mesh,
        embed_table=table,
        embed_view=table_view(table, spec),
        head_mesh=last,
        lm_head=lm_head,
        final_norm=norm,
        vocab_meshes=vocab_meshes,
    )


def wide_enough(device: Device, cols: int) -> Device:
    """`device` itself, or the same device widened to `cols` columns where it has fewer
    (the notional regions east of a `per-layer` layer's), one object per width."""
    return device if cols <= device.mesh_cols else _widened(device, cols)


@functools.lru_cache(maxsize=64)  # per device and width: every walk's hops ask again
def _widened(device: Device, cols: int) -> Device:
    """`device` with `cols` columns: a function of its arguments only (the device is
    immutable; an equal device, the same numbers, prices alike)."""
    return dataclasses.replace(device, mesh_cols=cols)


def _vocab_meshes(plan: ModelPlan, regions: PhaseRegions, mesh_args: dict[str, Any]) -> list[Mesh]:
    """`per-layer`: the LM head's region (and the embedding's when untied) east of the layer's,
    where the next region of the paper's chain of layers would be. Like that chain they are
    notional: priced on a device wide enough to hold them (`transfers.per_layer_hops`)."""
    rows, cols = regions.grid
    y, x = regions.regions[0].origin
    device = wide_enough(plan.device, x + 2 * cols)
    east = x + cols
    count = 1 if plan.config.tie_word_embeddings else 2
    return [Mesh(device, rows, cols, origin=(y, east), **mesh_args) for _ in range(count)]


__all__ = ["PhaseState", "build_phase", "wide_enough"]
