"""The model's plan on a device: regions per phase, the KV cache's size, the longest prompt.

`plan_model` decides, from per-core byte counts alone, how many regions each phase needs, which
layers each holds and how many cache slots every decode row gets (SPEC.md §10.4, §10.10).
`placed.build_phase` then creates one `Mesh` per region and places the weights (re-exported
here with `PhaseState` and `wide_enough` for the walks that import them from the plan).
"""

from __future__ import annotations

import dataclasses
import functools

from waferllm.device import Device
from waferllm.errors import SramOverflowError
from waferllm.mesh.storage import StoredDtype
from waferllm.model.budget import (
    PlanBudget,
    VocabApart,
    check_apart,
    kv_slots,
    max_prompt_tokens,
    plan_budget,
    prefill_need_bytes,
    vocab_bytes,
)
from waferllm.model.config import ModelConfig
from waferllm.model.pipeline import pipeline_layer_ranges, plan_pipeline_phase
from waferllm.model.placed import PhaseState, build_phase, wide_enough
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    layer_bytes_per_core,
    norm_spec,
    tile_bytes,
)
from waferllm.model.quant import UNCOMPRESSED, Storage
from waferllm.model.regions import Footprint, PhaseRegions, Region, plan_phase
from waferllm.model.scratch import decode_scratch_bytes  # re-exported for transformer.py


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
    apart: dict[Phase, VocabApart] | None  # per-layer: the vocabulary regions' bytes per core
    storage: Storage  # how weights and the KV cache are stored (compressed or not)
    # `attention_schedule` per prompt length, kept with the plan (it reads the plan only)
    _schedules: dict[int, tuple[int, bool]] = dataclasses.field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def layer_multiplier(self) -> int:
        """How many layers each placed layer stands for (the layer count in per-layer mode)."""
        if self.placement is PlacementMode.PER_LAYER:
            return self.config.num_hidden_layers
        return 1

    def prefill_need_bytes(
        self, length: int, head_chunk: int | None = None, *, streamed: bool | None = None
    ) -> int:
        """The prefill walk's peak bytes per core for a `length`-token prompt, attention
        `head_chunk` query heads per kv head at a time or key-streamed (default: the plan's
        choice, `attention_schedule`)."""
        fp, sb = self.prefill_footprint, self.device.storage_bytes
        if head_chunk is None or streamed is None:
            chosen, stream = self.attention_schedule(length)
            head_chunk = chosen if head_chunk is None else head_chunk
            streamed = stream if streamed is None else streamed
        apart = self.apart[Phase.PREFILL] if self.apart else None
        return prefill_need_bytes(
            self.prefill,
            fp,
            self.config,
            sb,
            length,
            head_chunk=head_chunk,
            streamed=streamed,
            apart=apart,
            stored=self.storage.weights,
        )

    def attention_streamed(self, length: int) -> bool:
        """Whether prefill attention streams the key blocks (an online softmax, one score
        block live per pass) for a prompt of `length` tokens (`attention_schedule`)."""
        return self.attention_schedule(length)[1]

    def attention_chunk(self, length: int) -> int:
        """Query heads per kv head that prefill attention takes at a time for a prompt of
        `length` tokens (`attention_schedule`)."""
        return self.attention_schedule(length)[0]

    def attention_schedule(self, length: int) -> tuple[int, bool]:
        """(query heads per kv head per pass, keys streamed) for a prompt of `length` tokens:
        the most heads per pass whose owned score blocks fit (one pass when SRAM allows), else
        the most whose streamed pass fits, else the schedule that needs least (the request is
        then refused by `max_prompt_tokens`)."""
        known = self._schedules.get(length)
        if known is None:
            known = self._schedules[length] = self._schedule(length)
        return known

    def _schedule(self, length: int) -> tuple[int, bool]:
        """`attention_schedule`, the options' needs computed in order until one fits."""
        cap = self.device.sram_bytes_per_core
        options = [(c, s) for s in (False, True) for c in range(self.config.num_kv_groups, 0, -1)]
        needs = []
        for c, s in options:
            needs.append(self.prefill_need_bytes(length, c, streamed=s))
            if needs[-1] <= cap:
                return c, s
        return options[needs.index(min(needs))]

    def grid(self, phase: Phase) -> tuple[int, int]:
        return (self.prefill if phase is Phase.PREFILL else self.decode).grid


def _footprint(
    config: ModelConfig,
    phase: Phase,
    grid: tuple[int, int],
    sb: int,
    *,
    extra_layer: int,
    reserve: int,
    apart: bool,
    stored: StoredDtype,
) -> Footprint:
    """A phase's per-core bytes: a layer's tiles (and its KV), the vocabulary tables on the
    first and last regions (none with `apart`: they have regions of their own), `reserve`."""
    rows, cols = grid
    vocab = 0 if apart else vocab_bytes(config, phase, rows, cols, sb, stored)
    norm = 0 if apart else tile_bytes(norm_spec(config, phase), rows, cols, sb)
    tied = config.tie_word_embeddings
    return Footprint(
        layer=layer_bytes_per_core(config, rows, cols, phase, sb, stored) + extra_layer,
        first=0 if tied else vocab,
        last=vocab + norm,
        reserve=reserve,
    )


def _footprints(
    config: ModelConfig,
    grids: dict[Phase, tuple[int, int]],
    sb: int,
    budget: PlanBudget,
    other: dict[Phase, int],
    apart: bool,
    stored: StoredDtype,
) -> dict[Phase, Footprint]:
    pre = budget.prefill
    return {
        Phase.PREFILL: _footprint(
            config,
            Phase.PREFILL,
            grids[Phase.PREFILL],
            sb,
            extra_layer=pre.kv,
            reserve=other[Phase.PREFILL] + (pre.layer if apart else pre.peak),
            apart=apart,
            stored=stored,
        ),
        Phase.DECODE: _footprint(
            config,
            Phase.DECODE,
            grids[Phase.DECODE],
            sb,
            extra_layer=budget.kv_want * budget.kv_slot,
            reserve=other[Phase.DECODE] + budget.decode_fixed + budget.kv_want * budget.score_slot,
            apart=apart,
            stored=stored,
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
    layers each (`pipeline.pipeline_layer_ranges`: fewer on the devices holding a vocabulary
    table when the split is uneven).

    Per-core bytes of a region: its layers' weights, each layer's KV cache (decode) or kept
    k/v (prefill), one step's scratch, the vocabulary tables on the first and last regions
    (`per-layer`: on notional regions of their own), and with `both` resident layouts the
    other plan's weights (a bound: the most any core of the other plan holds). Matrices and
    cached positions count as `storage` stores them. Prefill is packed for its usual walk
    (temporaries kept to the layer's end, every owned score block live); only when that
    does not place, for the lean one (`attention_schedule`'s streamed keys, early frees)."""
    place = functools.partial(
        _plan_model,
        config,
        device,
        prefill_grid=prefill_grid,
        decode_grid=decode_grid,
        placement=placement,
        resident=resident,
        max_context_tokens=max_context_tokens,
        storage=storage,
        num_devices=num_devices,
    )
    try:
        return place(lean=False)
    except SramOverflowError:
        return place(lean=True)


def _plan_model(
    config: ModelConfig,
    device: Device,
    *,
    prefill_grid: tuple[int, int],
    decode_grid: tuple[int, int],
    placement: PlacementMode,
    resident: ResidentLayouts,
    max_context_tokens: int | None,
    storage: Storage,
    num_devices: int,
    lean: bool,
) -> ModelPlan:
    sb, cap = device.storage_bytes, device.sram_bytes_per_core
    grids = {Phase.PREFILL: prefill_grid, Phase.DECODE: decode_grid}
    per_layer = placement is PlacementMode.PER_LAYER
    wdt = storage.weights
    budget = plan_budget(config, grids, sb, max_context_tokens, per_layer, storage, lean=lean)
    apart = check_apart(config, grids, sb, cap, wdt) if per_layer else None
    other = {Phase.PREFILL: 0, Phase.DECODE: 0}
    plans: dict[Phase, PhaseRegions] = {}
    for _ in range(3 if resident is ResidentLayouts.BOTH else 1):
        prints = _footprints(config, grids, sb, budget, other, per_layer, wdt)
        if num_devices > 1:
            ranges = pipeline_layer_ranges(
                device,
                [(grids[ph], prints[ph]) for ph in grids],
                num_layers=config.num_hidden_layers,
                num_devices=num_devices,
                capacity_bytes=cap,
            )
        for phase, grid in grids.items():
            if num_devices > 1:
                plans[phase] = plan_pipeline_phase(
                    device, grid, prints[phase], ranges=ranges, capacity_bytes=cap, what=phase.value
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
    if per_layer:  # one placed layer stands for all
        plans = {
            ph: dataclasses.replace(
                p, regions=(dataclasses.replace(p.regions[0], layers=range(1)),)
            )
            for ph, p in plans.items()
        }
    dec = prints[Phase.DECODE]
    slots = kv_slots(
        plans[Phase.DECODE],
        dec,
        cap,
        weights_per_layer=dec.layer - budget.kv_want * budget.kv_slot,
        other=other[Phase.DECODE],
        fixed=budget.decode_fixed,
        kv_slot=budget.kv_slot,
        score_slot=budget.score_slot,
    )
    if max_context_tokens is not None:
        slots = min(slots, budget.kv_want)
    pre = prints[Phase.PREFILL]
    pre = dataclasses.replace(
        pre, layer=pre.layer - budget.prefill.kv, reserve=other[Phase.PREFILL]
    )
    pre_apart = apart[Phase.PREFILL] if apart else None
    return ModelPlan(
        config=config,
        device=device,
        placement=placement,
        resident=resident,
        prefill=plans[Phase.PREFILL],
        decode=plans[Phase.DECODE],
        kv_slots=slots,
        max_prompt_tokens=max_prompt_tokens(
            plans[Phase.PREFILL], pre, config, cap, sb, pre_apart, wdt
        ),
        prefill_footprint=pre,
        other_plan_bytes=other,
        apart=apart,
        storage=storage,
    )


def _peak(fp: Footprint, plan: PhaseRegions) -> int:
    counts = [len(r.layers) for r in plan.regions]
    worst = max(counts) * fp.layer
    return worst + fp.first + fp.last


__all__ = [
    "ModelPlan",
    "PhaseState",
    "Region",
    "build_phase",
    "decode_scratch_bytes",
    "plan_model",
    "wide_enough",
]
