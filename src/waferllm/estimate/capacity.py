"""KV-cache capacity of the whole model resident on the device (SPEC.md §10.4, §10.10).

`whole_model_capacity` plans the whole model as in `fit` (whatever the request's placement)
and reads both policies' capacity from its cache slots per row; the per-row formulas are the
cache's own (`model.kv_cache.kv_capacity_tokens`, `max_new_tokens`). No walks here.
"""

from __future__ import annotations

import warnings

from waferllm.errors import WaferError
from waferllm.estimate.cost import Grid, Setup
from waferllm.model.kv_cache import KvPolicy, evicts, kv_capacity_tokens, max_new_tokens
from waferllm.model.placement import PlacementMode
from waferllm.model.plan import plan_model
from waferllm.model.report import KvCapacity


def whole_model_capacity(
    setup: Setup, prefill_grid: Grid, decode_grid: Grid, prompt_len: int
) -> tuple[KvCapacity, KvCapacity]:
    """(kv_capacity_tokens, max_new_tokens) of both policies: always the whole model
    resident, placed as in `fit` on the decode grid (in per-layer mode too; the same plan a
    fit-mode model builds); None with the reason when that placement does not fit."""
    try:
        plan = plan_model(
            setup.config,
            setup.device,
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            placement=PlacementMode.FIT,
            resident=setup.resident,
            max_context_tokens=None,
            storage=setup.storage,
            num_devices=setup.num_devices,
        )
    except WaferError as exc:
        where = f"one {setup.device.name}"
        if setup.num_devices > 1:
            where = f"{setup.num_devices} {setup.device.name}s"
        reason = f"the whole model does not fit {where} (fit): {exc}"
        none = KvCapacity(shift=None, concat=None, reason=reason)
        return none, none
    rows, slots = plan.decode.grid[0], plan.kv_slots
    shift, concat = KvPolicy.SHIFT, KvPolicy.CONCAT
    config = setup.config
    # a sliding window evicts older keys under the shift policy: never more than the window
    limits = {"window": config.sliding_window, "max_positions": config.max_position_embeddings}
    if evicts(shift, rows, slots, config.sliding_window):
        warnings.warn(
            f"{config.name}'s sliding window ({config.sliding_window} tokens) evicts older keys "
            f"from the shift KV cache, which holds a whole window ({rows * slots} tokens fit): "
            "its capacity is the trained context (max_position_embeddings), not SRAM",
            stacklevel=2,
        )
    return (
        KvCapacity(
            shift=kv_capacity_tokens(shift, rows, slots, prompt_len, **limits),
            concat=kv_capacity_tokens(concat, rows, slots, prompt_len, **limits),
        ),
        KvCapacity(
            shift=max_new_tokens(shift, rows, slots, prompt_len, **limits),
            concat=max_new_tokens(concat, rows, slots, prompt_len, **limits),
        ),
    )


__all__ = ["whole_model_capacity"]
