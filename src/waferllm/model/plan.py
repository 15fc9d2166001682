"""The model's plan on a device: regions per phase, the KV cache's size, and the placed tensors.

`plan_model` decides, from per-core byte counts alone, how many regions each phase needs, which
layers each holds and how many cache slots every decode row gets (SPEC.md §10.4, §10.10).
`build_phase` then creates one `Mesh` per region and places the weights (`placement.py`); the
SRAM trackers check every allocation again as it happens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from waferllm.device import Device
from waferllm.errors import SramOverflowError
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh
from waferllm.model.config import ModelConfig
from waferllm.model.placement import (
    Phase,
    PlacedLayer,
    PlacementMode,
    ResidentLayouts,
    TensorSpec,
    heads_for,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    norm_spec,
    place,
    place_layer,
    tile_bytes,
    vocab_spec,
)
from waferllm.model.regions import Footprint, PhaseRegions, Region, plan_phase
from waferllm.model.weights import ModelWeights


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ModelPlan:
    config: ModelConfig
    device: Device
    placement: PlacementMode
    resident: ResidentLayouts
    prefill: PhaseRegions
    decode: PhaseRegions
    kv_slots: int  # cache slots per decode row (every layer, every region)
    other_plan_bytes: dict[Phase, int]  # with `both`: the other plan's weights on each core

    @property
    def layer_multiplier(self) -> int:
        """How many layers each placed layer stands for (the layer count in per-layer mode)."""
        if self.placement is PlacementMode.PER_LAYER:
            return self.config.num_hidden_layers
        return 1

    def grid(self, phase: Phase) -> tuple[int, int]:
        return (self.prefill if phase is Phase.PREFILL else self.decode).grid


def _vocab_bytes(config: ModelConfig, phase: Phase, rows: int, cols: int, sb: int) -> int:
    return tile_bytes(vocab_spec(config, phase), rows, cols, sb)


def decode_scratch_bytes(config: ModelConfig, rows: int, cols: int, sb: int) -> tuple[int, int]:
    """(fixed, per cached slot) bytes per core that one decode step holds at its peak: the
    residual and normed vectors, q/k/v, RoPE tables, attention output, the FFN's gate and up,
    the logits; plus one score per (head, slot)."""
    heads = heads_for(config, cols)
    d_y = math.ceil(config.hidden_size / rows)
    f_x = math.ceil(config.intermediate_size / cols)
    v_x = math.ceil(config.vocab_size / cols)
    fixed = 6 * d_y + 2 * heads.q_width + 2 * heads.kv_width + 2 * heads.head_slots
    fixed += 2 * f_x + v_x + 2
    return fixed * sb, heads.kv_per_tile * heads.n_rep * sb


def _footprint(
    config: ModelConfig,
    phase: Phase,
    grid: tuple[int, int],
    sb: int,
    extra_layer: int,
    reserve: int,
) -> Footprint:
    rows, cols = grid
    vocab = _vocab_bytes(config, phase, rows, cols, sb)
    norm = tile_bytes(norm_spec(config, phase), rows, cols, sb)
    tied = config.tie_word_embeddings
    return Footprint(
        layer=layer_bytes_per_core(config, rows, cols, phase, sb) + extra_layer,
        first=0 if tied else vocab,
        last=vocab + norm,
        reserve=reserve,
    )


def plan_model(
    config: ModelConfig,
    device: Device,
    *,
    prefill_grid: tuple[int, int],
    decode_grid: tuple[int, int],
    placement: PlacementMode,
    resident: ResidentLayouts,
    max_context_tokens: int | None,
) -> ModelPlan:
    sb = device.storage_bytes
    cap = device.sram_bytes_per_core
    rows_d, cols_d = decode_grid
    fixed, per_slot_scores = decode_scratch_bytes(config, rows_d, cols_d, sb)
    kv_slot = kv_slot_bytes_per_core(config, cols_d, sb)
    want = 1 if max_context_tokens is None else math.ceil(max_context_tokens / rows_d)
    other = {Phase.PREFILL: 0, Phase.DECODE: 0}
    plans: dict[Phase, PhaseRegions] = {}
    for _ in range(3 if resident is ResidentLayouts.BOTH else 1):
        prints = {
            Phase.PREFILL: _footprint(
                config, Phase.PREFILL, prefill_grid, sb, 0, other[Phase.PREFILL]
            ),
            Phase.DECODE: _footprint(
                config,
                Phase.DECODE,
                decode_grid,
                sb,
                want * kv_slot,
                other[Phase.DECODE] + fixed + want * per_slot_scores,
            ),
        }
        for phase, grid in ((Phase.PREFILL, prefill_grid), (Phase.DECODE, decode_grid)):
            plans[phase] = plan_phase(
                device,
                grid,
                config.num_hidden_layers,
                prints[phase],
                mode=placement,
                capacity_bytes=cap,
                what=phase.value,
            )
        if resident is ResidentLayouts.BOTH:
            other = {
                Phase.PREFILL: _peak(prints[Phase.DECODE], plans[Phase.DECODE]),
                Phase.DECODE: _peak(prints[Phase.PREFILL], plans[Phase.PREFILL]),
            }
    if placement is PlacementMode.PER_LAYER:
        plans = {
            ph: dataclasses.replace(
                p, regions=(dataclasses.replace(p.regions[0], layers=range(1)),)
            )
            for ph, p in plans.items()
        }
    slots = _kv_slots(
        plans[Phase.DECODE],
        prints[Phase.DECODE],
        cap,
        weights_per_layer=prints[Phase.DECODE].layer - want * kv_slot,
        other=other[Phase.DECODE],
        fixed=fixed,
        kv_slot=kv_slot,
        score_slot=per_slot_scores,
    )
    if max_context_tokens is not None:
        slots = min(slots, want)
    return ModelPlan(
        config=config,
        device=device,
        placement=placement,
        resident=resident,
        prefill=plans[Phase.PREFILL],
        decode=plans[Phase.DECODE],
        kv_slots=slots,
        other_plan_bytes=other,
    )


def _peak(fp: Footprint, plan: PhaseRegions) -> int:
    counts = [len(r.layers) for r in plan.regions]
    worst = max(counts) * fp.layer
    return worst + fp.first + fp.last


def _kv_slots(
    plan: PhaseRegions,
    fp: Footprint,
    cap: int,
    *,
    weights_per_layer: int,
    other: int,
    fixed: int,
    kv_slot: int,
    score_slot: int,
) -> int:
    """Slots per row that fit beside every region's weights and one step's scratch."""
    best, worst_free, last = None, cap, len(plan.regions) - 1
    for i, region in enumerate(plan.regions):
        layers = len(region.layers)
        used = layers * weights_per_layer + other + fixed
        used += (fp.first if i == 0 else 0) + (fp.last if i == last else 0)
        slots = (cap - used) // (layers * kv_slot + score_slot)
        if best is None or slots < best:
            best, worst_free = slots, cap - used
    assert best is not None
    if best < 1:
        raise SramOverflowError(
            tensor="kv cache",
            core=(0, 0),
            needed_bytes=cap - worst_free + kv_slot + score_slot,
            available_bytes=cap,
            hint="no room for one cached position per row beside the weights; use a larger "
            "decode grid, fewer layers per region or more SRAM",
        )
    return int(best)


# ---- placed tensors ------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class PhaseState:
    """One phase's meshes (one per region) and the tensors placed on them."""

    phase: Phase
    regions: PhaseRegions
    meshes: list[Mesh]
    layers: dict[int, PlacedLayer]
    embed_mesh: Mesh
    embed_view: DistTensor  # the vocab table seen as [V, D] for the lookup
    lm_head: DistTensor  # [D, V] GEMV weight
    final_norm: DistTensor


def build_phase(
    plan: ModelPlan, phase: Phase, weights: ModelWeights | None, mesh_args: dict[str, Any]
) -> PhaseState:
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
        for i in region.layers:
            host = weights.layers[i] if weights is not None else None
            layers[i] = place_layer(mesh, config, phase, host, name=f"layer{i}")
    spec = vocab_spec(config, phase)
    last = meshes[-1]
    lm_head = place(last, spec, _t(weights.lm_head) if weights else None, "lm_head")
    if config.tie_word_embeddings:
        table, embed_mesh = lm_head, last
    else:
        table = place(meshes[0], spec, _t(weights.embed) if weights else None, "embed")
        embed_mesh = meshes[0]
    norm = place(
        last, norm_spec(config, phase), weights.final_norm if weights else None, "final_norm"
    )
    return PhaseState(
        phase=phase,
        regions=regions,
        meshes=meshes,
        layers=layers,
        embed_mesh=embed_mesh,
        embed_view=_table_view(table, spec),
        lm_head=lm_head,
        final_norm=norm,
    )


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.T.contiguous()


def _table_view(table: DistTensor, spec: TensorSpec) -> DistTensor:
    """The [D, V] table as the [V, D] one the embedding lookup reads: tiles transposed in
    place (a per-core view of the same SRAM, not a copy)."""
    d, v = spec.shape
    lay = table.layout
    assert lay.y_dim is not None and lay.x_dim is not None
    layout = Layout((v, d), y_dim=1 - lay.y_dim, x_dim=1 - lay.x_dim)
    return DistTensor(table.data.transpose(-1, -2), layout, table.mesh, table.name, None)


__all__ = ["ModelPlan", "PhaseState", "Region", "build_phase", "plan_model"]
