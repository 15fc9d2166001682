"""The grid search's error when no grid works for a phase (`search.search_grids`): what is
needed, in SRAM or wafers (`fit`), or the longest prompt any evaluated prefill grid holds.
The search itself is in `search.py`.
"""

from __future__ import annotations

import math

from waferllm.errors import WaferError
from waferllm.estimate.cost import CostModel, Grid
from waferllm.mesh.storage import bytes_per_element
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts
from waferllm.model.plan import plan_model

__all__ = ["nothing_fits"]


def nothing_fits(
    costs: CostModel, phase: Phase, *, grids: list[Grid], reasons: list[str]
) -> WaferError:
    """No side worked: in `fit` mode say how much SRAM (how many wafers) the model needs."""
    setup = costs.setup
    device, config = setup.device, setup.config
    last = reasons[-1] if reasons else "no candidate grid"
    if setup.placement is PlacementMode.FIT:
        stored = setup.storage.weights
        weight_bytes = config.num_params * bytes_per_element(stored, device.storage_bytes)
        total_sram = device.num_cores * device.sram_bytes_per_core
        wafers = math.ceil(weight_bytes / total_sram)
        dtype = stored.value if stored.compressed else device.storage_dtype
        if wafers > 1:
            return WaferError(
                f"{config.name} does not fit one {device.name} (placement fit): its weights "
                f"alone need {weight_bytes / 1e9:.1f} GB of SRAM in {dtype}, the "
                f"device has {total_sram / 1e9:.1f} GB, so at least {wafers} wafers; use "
                "--placement per-layer (the paper's extrapolation) or a device with more SRAM"
            )
    if phase is Phase.PREFILL:
        longest = _longest_prompt(costs, grids)
        if longest is not None:
            tokens, grid = longest
            last = (
                f"the longest prompt any evaluated prefill grid holds is {tokens} tokens (on "
                f"{grid[0]}x{grid[1]}); use a shorter prompt or --placement per-layer"
            )
    return WaferError(
        f"no square grid or tiling of the device works for {phase.value} on {device.name}: {last}"
    )


def _longest_prompt(costs: CostModel, grids: list[Grid]) -> tuple[int, Grid] | None:
    """The longest prompt the prefill plans of the evaluated grids hold (byte counts only)."""
    setup, best = costs.setup, None
    for grid in grids:
        try:
            plan = plan_model(
                setup.config,
                setup.device,
                prefill_grid=grid,
                decode_grid=grid,
                placement=setup.placement,
                resident=ResidentLayouts.ONE,
                max_context_tokens=None,
            )
        except WaferError:
            continue
        if plan.max_prompt_tokens and (best is None or plan.max_prompt_tokens > best[0]):
            best = (plan.max_prompt_tokens, grid)
    return best
