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
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.tiling import padded_k
from waferllm.mesh.virtual import Mesh
from waferllm.model.config import ModelConfig
from waferllm.model.pipeline import plan_pipeline_phase
from waferllm.model.placement import (
    Phase,
    PlacedLayer,
    PlacementMode,
    ResidentLayouts,
    TensorSpec,
    dequant_chunk_bytes,
    heads_for,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    layer_specs,
    norm_spec,
    place,
    place_layer,
    tile_bytes,
    vocab_spec,
)
from waferllm.model.quant import UNCOMPRESSED, Storage
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
    max_prompt_tokens: int  # the longest prompt the prefill plan's SRAM holds
    prefill_footprint: Footprint  # per-core bytes of the prefill plan without the prompt
    other_plan_bytes: dict[Phase, int]  # with `both`: the other plan's weights on each core
    storage: Storage  # how weights and the KV cache are stored (compressed or not)

    @property
    def layer_multiplier(self) -> int:
        """How many layers each placed layer stands for (the layer count in per-layer mode)."""
        if self.placement is PlacementMode.PER_LAYER:
            return self.config.num_hidden_layers
        return 1

    def prefill_need_bytes(self, length: int) -> int:
        fp, sb = self.prefill_footprint, self.device.storage_bytes
        return prefill_need_bytes(self.prefill, fp, self.config, sb, length, self.storage.weights)

    def grid(self, phase: Phase) -> tuple[int, int]:
        return (self.prefill if phase is Phase.PREFILL else self.decode).grid


def _vocab_bytes(
    config: ModelConfig, phase: Phase, rows: int, cols: int, sb: int, stored: StoredDtype
) -> int:
    return tile_bytes(vocab_spec(config, phase), rows, cols, sb, stored)


def decode_scratch_bytes(config: ModelConfig, rows: int, cols: int, sb: int) -> tuple[int, int]:
    """(fixed, per cached slot) bytes per core that one decode step holds at its peak: the
    residual and normed vectors, q/k/v, RoPE tables, attention output, the FFN's gate and up,
    this step's logits and the previous step's (kept on the mesh for `fetch_logits` until this
    step selects); plus one score per (head, slot)."""
    heads = heads_for(config, cols)
    d_y = math.ceil(config.hidden_size / rows)
    f_x = math.ceil(config.intermediate_size / cols)
    v_x = math.ceil(config.vocab_size / cols)
    fixed = 6 * d_y + 2 * heads.q_width + 2 * heads.kv_width + 2 * heads.head_slots
    fixed += 2 * f_x + 2 * v_x + 2
    return fixed * sb, heads.kv_per_tile * heads.n_rep * sb


def prefill_scratch_bytes(
    config: ModelConfig,
    rows: int,
    cols: int,
    sb: int,
    length: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> tuple[int, int]:
    """(the peak scratch of one layer or of the LM head, one layer's k and v kept for the
    cache) per core for a prompt of `length` tokens. A layer's is an upper bound summing its
    activations (x, normed, the aligned GEMM operand and its receive buffer, q/k/v, RoPE
    tables, scores and the attention loops' buffers, o, gate/up/act/down), the largest weight
    tile's receive buffer and the GEMM padding (token tiles padded to whole logical blocks on
    a non-square grid); the head's holds the last hidden state, its
    norm, the logits (V split along Y) and the argmax, which outgrow a layer's when the
    vocabulary is wide and the model narrow."""
    heads = heads_for(config, cols)
    lt = math.ceil(length / rows)
    per_row = math.lcm(rows, cols) // rows
    lt_gemm = -(-lt // per_row) * per_row  # a ring GEMM pads the token tile to whole blocks
    d_x = padded_k(rows, cols, config.hidden_size) // cols
    f_x = padded_k(rows, cols, config.intermediate_size) // cols
    q_x = padded_k(rows, cols, cols * heads.q_width) // cols
    kc = max(math.ceil(rows / min(heads.group_sizes)), 1)
    gn = heads.kv_per_tile * heads.n_rep
    acts = lt_gemm * (8 * d_x + 4 * q_x + 3 * heads.kv_width + 4 * f_x + 2 * heads.head_slots)
    attn = gn * lt * (kc * lt + 2 * lt + heads.head_slots) + lt * heads.kv_width
    specs = layer_specs(config, rows, cols, Phase.PREFILL)
    weight = max(tile_bytes(spec, rows, cols, sb, stored) for spec in specs.values())
    chunk = dequant_chunk_bytes(config, rows, cols, Phase.PREFILL, stored, sb)
    kv = 2 * lt * heads.kv_width
    head = 2 * d_x + math.ceil(config.vocab_size / rows) + 2
    return max((acts + attn) * sb + 2 * weight, head * sb) + chunk, kv * sb


def prefill_need_bytes(
    regions: PhaseRegions,
    fp: Footprint,
    config: ModelConfig,
    sb: int,
    length: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> int:
    """The most any core of the prefill plan needs for a prompt of `length` tokens: weights,
    every layer's kept k/v, one layer's scratch, the vocabulary tables."""
    rows, cols = regions.grid
    scratch, kv = prefill_scratch_bytes(config, rows, cols, sb, length, stored)
    last = len(regions.regions) - 1
    need = 0
    for i, region in enumerate(regions.regions):
        used = len(region.layers) * (fp.layer + kv) + fp.reserve + scratch
        used += (fp.first if i == 0 else 0) + (fp.last if i == last else 0)
        need = max(need, used)
    return need


def max_prompt_tokens(
    regions: PhaseRegions,
    fp: Footprint,
    config: ModelConfig,
    cap: int,
    sb: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> int:
    """The longest prompt whose prefill fits every region (0 if none does)."""

    def fits(length: int) -> bool:
        return prefill_need_bytes(regions, fp, config, sb, length, stored) <= cap

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high) and high < 1 << 24:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _footprint(
    config: ModelConfig,
    phase: Phase,
    grid: tuple[int, int],
    sb: int,
    extra_layer: int,
    reserve: int,
    stored: StoredDtype,
) -> Footprint:
    rows, cols = grid
    vocab = _vocab_bytes(config, phase, rows, cols, sb, stored)
    norm = tile_bytes(norm_spec(config, phase), rows, cols, sb)
    tied = config.tie_word_embeddings
    return Footprint(
        layer=layer_bytes_per_core(config, rows, cols, phase, sb, stored) + extra_layer,
        first=0 if tied else vocab,
        last=vocab + norm,
        reserve=reserve,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Budget:
    """Per-core byte counts the planner needs beyond the weights (see `plan_model`)."""

    decode_fixed: int  # one decode step's scratch
    score_slot: int  # decode scratch per cached slot
    kv_slot: int  # one cached position, one layer (K and V)
    kv_want: int  # cache slots per row the caller asked for (1 when unspecified)
    prefill_scratch: int  # one prefill layer's scratch for a 1-token prompt
    prefill_kv: int  # one layer's kept k/v for a 1-token prompt


def _footprints(
    config: ModelConfig,
    grids: dict[Phase, tuple[int, int]],
    sb: int,
    budget: _Budget,
    other: dict[Phase, int],
    stored: StoredDtype,
) -> dict[Phase, Footprint]:
    return {
        Phase.PREFILL: _footprint(
            config,
            Phase.PREFILL,
            grids[Phase.PREFILL],
            sb,
            budget.prefill_kv,
            other[Phase.PREFILL] + budget.prefill_scratch,
            stored,
        ),
        Phase.DECODE: _footprint(
            config,
            Phase.DECODE,
            grids[Phase.DECODE],
            sb,
            budget.kv_want * budget.kv_slot,
            other[Phase.DECODE] + budget.decode_fixed + budget.kv_want * budget.score_slot,
            stored,
        ),
    }


def plan_model(
    config: ModelConfig,
    device: Device,
    *,
    prefill_grid: tuple[int, int],
    decode_grid: tuple[int, int],
    placement: PlacementMode,
    resident: ResidentLayouts,
    max_context_tokens: int | None,
    storage: Storage = UNCOMPRESSED,
    num_devices: int = 1,
) -> ModelPlan:
    """Regions per phase (the fewest that fit), cache slots per row, the longest prompt.
    With `num_devices` > 1 (`fit` only) the regions span that many linked devices, a range of
    layers each (`pipeline.plan_pipeline_phase`).

    Per-core bytes of a region: its layers' weights, each layer's KV cache (decode) or kept
    k/v (prefill), one step's scratch, the vocabulary tables on the first and last regions,
    and with `both` resident layouts the other plan's weights (a bound: the most any core of
    the other plan holds). Matrices and cached positions count as `storage` stores them."""
    sb, cap = device.storage_bytes, device.sram_bytes_per_core
    wdt = storage.weights
    grids = {Phase.PREFILL: prefill_grid, Phase.DECODE: decode_grid}
    fixed, score_slot = decode_scratch_bytes(config, *decode_grid, sb)
    fixed += dequant_chunk_bytes(config, *decode_grid, Phase.DECODE, wdt, sb)
    # prefill is planned for a prompt of max_context_tokens (1 when unspecified)
    pre_scratch, pre_kv = prefill_scratch_bytes(
        config, *prefill_grid, sb, max_context_tokens or 1, wdt
    )
    budget = _Budget(
        decode_fixed=fixed,
        score_slot=score_slot,
        kv_slot=kv_slot_bytes_per_core(config, decode_grid[1], sb, storage.kv),
        kv_want=1 if max_context_tokens is None else -(-max_context_tokens // decode_grid[0]),
        prefill_scratch=pre_scratch,
        prefill_kv=pre_kv,
    )
    other = {Phase.PREFILL: 0, Phase.DECODE: 0}
    plans: dict[Phase, PhaseRegions] = {}
    for _ in range(3 if resident is ResidentLayouts.BOTH else 1):
        prints = _footprints(config, grids, sb, budget, other, wdt)
        for phase, grid in grids.items():
            if num_devices > 1:
                plans[phase] = plan_pipeline_phase(
                    device,
                    grid,
                    config.num_hidden_layers,
                    prints[phase],
                    num_devices=num_devices,
                    capacity_bytes=cap,
                    what=phase.value,
                )
                continue
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
    if placement is PlacementMode.PER_LAYER:  # one placed layer stands for all
        plans = {
            ph: dataclasses.replace(
                p, regions=(dataclasses.replace(p.regions[0], layers=range(1)),)
            )
            for ph, p in plans.items()
        }
    dec = prints[Phase.DECODE]
    slots = _kv_slots(
        plans[Phase.DECODE],
        dec,
        cap,
        weights_per_layer=dec.layer - budget.kv_want * budget.kv_slot,
        other=other[Phase.DECODE],
        fixed=fixed,
        kv_slot=budget.kv_slot,
        score_slot=score_slot,
    )
    if max_context_tokens is not None:
        slots = min(slots, budget.kv_want)
    pre = prints[Phase.PREFILL]
    pre = dataclasses.replace(pre, layer=pre.layer - pre_kv, reserve=other[Phase.PREFILL])
    return ModelPlan(
        config=config,
        device=device,
        placement=placement,
        resident=resident,
        prefill=plans[Phase.PREFILL],
        decode=plans[Phase.DECODE],
        kv_slots=slots,
        max_prompt_tokens=max_prompt_tokens(plans[Phase.PREFILL], pre, config, cap, sb, wdt),
        prefill_footprint=pre,
        other_plan_bytes=other,
        storage=storage,
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
            layers[i] = place_layer(
                mesh, config, phase, host, name=f"layer{i}", stored=plan.storage.weights
            )
    spec, wdt = vocab_spec(config, phase), plan.storage.weights
    last = meshes[-1]
    lm_head = place(last, spec, _t(weights.lm_head) if weights else None, "lm_head", wdt)
    if config.tie_word_embeddings:
        table, embed_mesh = lm_head, last
    else:
        table = place(meshes[0], spec, _t(weights.embed) if weights else None, "embed", wdt)
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
    data = table.data.transpose(-1, -2)
    return DistTensor(data, layout, table.mesh, table.name, None, table.stored)


__all__ = ["ModelPlan", "PhaseState", "Region", "build_phase", "plan_model"]
