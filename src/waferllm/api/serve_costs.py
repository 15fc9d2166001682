"""Wafer step costs for the serving simulator, from the wafer cost model (`waferllm.estimate`).

A decode step over B contexts is the batched decode step of the model (the GEMVs carry B
vectors, each sequence attends to its own KV rows); a batch whose KV shares and step scratch
do not fit the decode grid's SRAM at once runs as the largest sub-batches that do, one after
another. Prompts are prefilled one after another (prefill is not batched): a prefill of B
prompts costs the sum of their TTFTs. Each length is estimated once on fixed grids and cached;
`BinnedStepCost` (estimate/step_cost.py) asks for a few bin edges only. `GpuStepCost` adapts
the batched GPU baseline's step costs. Nothing here schedules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from waferllm.api.estimate import Estimate, estimate
from waferllm.api.gpu import GpuStepCosts
from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.estimate.capacity import whole_model_capacity
from waferllm.estimate.cost import Setup, cost_model
from waferllm.model.config import ModelConfig
from waferllm.model.kv_cache import slots_needed
from waferllm.model.placement import ResidentLayouts

__all__ = [
    "SUB_BATCH_WARNING",
    "GpuStepCost",
    "WaferPoint",
    "WaferStepCost",
]

SUB_BATCH_WARNING = (
    "some decode batches did not fit the wafer's SRAM at once (each sequence has its own KV "
    "rows and step scratch) and ran as sub-batches one after another (modelled)"
)


class WaferPoint:
    """Batch-1 costs at one length L (modelled seconds), from one estimate on fixed grids."""

    __slots__ = ("ttft_s", "decode_step_s", "weights_to_decode_s", "kv_to_decode_s", "to_prefill_s")

    def __init__(self, est: Estimate) -> None:
        metrics = est.metrics
        # a fitting request with output_len 2: every time is set, one decode step
        assert metrics.ttft_s is not None and metrics.tpot_s is not None
        assert metrics.transition_s is not None
        self.ttft_s: float = metrics.ttft_s
        self.decode_step_s: float = metrics.tpot_s
        ops: dict[str, Any] = est.report.breakdown["transition"]["ops"]
        # the estimate's transition is a round trip: decode-to-prefill weights (readying the
        # next request), prefill-to-decode weights, and the KV cache of this prompt
        self.to_prefill_s = float(sum(v for k, v in ops.items() if "to_prefill" in k))
        self.weights_to_decode_s = float(
            sum(v for k, v in ops.items() if "weights" in k and "to_prefill" not in k)
        )
        self.kv_to_decode_s = metrics.transition_s - self.to_prefill_s - self.weights_to_decode_s


class WaferStepCost:
    """`StepCost` of one model on one wafer, on the given grids (SPEC.md §10.13).

    `resident_layouts="one"` is the time-multiplexed wafer (every phase switch re-lays out the
    weights); `"both"` the disaggregated one (both plans resident; SramOverflowError when they
    do not fit). The KV capacity is the estimate's whole-model `kv_capacity_tokens` under the
    shift policy, shared token for token by every resident sequence (the scheduler's
    admission). Under a sliding window that evicts, the pool is what the SRAM holds (not the
    trained context the estimate reports) and each sequence holds at most its window of it
    (`kv_window_tokens`); decode steps are the model's batched steps (`num_split_batches`
    counts those run as sub-batches).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        device: Device,
        prefill_grid: tuple[int, int],
        decode_grid: tuple[int, int],
        resident_layouts: str,
        probe: Estimate,
    ) -> None:
        self.config, self.device = config, device
        self.grids = (prefill_grid, decode_grid)
        self.resident_layouts = resident_layouts
        self._points: dict[int, WaferPoint] = {probe.report.prompt_len: WaferPoint(probe)}
        capacity = probe.report.kv_capacity_tokens
        if capacity.shift is None:
            raise WaferError(f"no KV capacity for serving: {capacity.reason}")
        self.kv_capacity_tokens = capacity.shift
        self.kv_window_tokens = config.sliding_window
        if config.sliding_window is not None:
            self.kv_capacity_tokens = _sram_pool_tokens(probe, config, device, resident_layouts)
        self._to_prefill_s = self._points[probe.report.prompt_len].to_prefill_s
        self._costs = cost_model(
            Setup(config=config, device=device, resident=ResidentLayouts(resident_layouts))
        )
        self._steps: dict[tuple[int, int], float] = {}
        self.num_split_batches = 0

    def point(self, length: int) -> WaferPoint:
        """The batch-1 costs at `length` tokens (the last position is clamped to the model's
        `max_position_embeddings`, which the one decode step of the estimate needs)."""
        length = min(length, self.config.max_position_embeddings - 1)
        if length not in self._points:
            est = estimate(
                self.config,
                device=self.device,
                prompt_len=length,
                output_len=2,
                prefill_grid=self.grids[0],
                decode_grid=self.grids[1],
                resident_layouts=self.resident_layouts,
            )
            self._points[length] = WaferPoint(est)
        return self._points[length]

    def prefill_s(self, prompt_lens: Sequence[int]) -> float:
        return sum(self.point(n).ttft_s for n in prompt_lens)

    def decode_step_s(self, context_lens: Sequence[int]) -> float:
        """One batched decode step; the batch is priced at its mean context (`BinnedStepCost`
        asks for equal contexts only)."""
        batch = len(context_lens)
        mean = round(sum(context_lens) / batch)
        context = min(mean + 1, self.config.max_position_embeddings)  # the new token included
        fit = self._largest_batch(batch, context)
        full, rest = divmod(batch, fit)
        if rest or full > 1:
            self.num_split_batches += 1
        return full * self._step_s(fit, context) + (self._step_s(rest, context) if rest else 0.0)

    def _largest_batch(self, batch: int, context: int) -> int:
        """The most sequences of `context` tokens (at most `batch`) one step holds (>= 1)."""
        model = self._costs.model(*self.grids)
        budget = model.kv_budget
        window = self.config.sliding_window
        need = slots_needed(model.kv_policy, budget.rows, context, context, window=window)
        while batch > 1 and budget.equal_share(batch) < need:
            batch -= 1
        return batch

    def _step_s(self, batch: int, context: int) -> float:
        key = (batch, context)
        if key not in self._steps:
            model = self._costs.model(*self.grids, batch)
            ledger = self._costs.walks(model, batch).decode_step(context)
            self._steps[key] = self.device.cycles_to_seconds(ledger.totals().latency_cycles)
        return self._steps[key]

    def to_decode_s(self, prompt_lens: Sequence[int]) -> float:
        """The weights move once per switch; every new prompt's KV cache moves."""
        kv_s = sum(self.point(n).kv_to_decode_s for n in prompt_lens)
        return self.point(prompt_lens[0]).weights_to_decode_s + kv_s if prompt_lens else 0.0

    def to_prefill_s(self) -> float:
        return self._to_prefill_s


def _sram_pool_tokens(
    probe: Estimate, config: ModelConfig, device: Device, resident_layouts: str
) -> int:
    """The shift cache's tokens on the probe's grids as SRAM bounds them, eviction aside (a
    windowed model's reported capacity is its trained context)."""
    report = probe.report
    assert report.prefill_grid is not None and report.decode_grid is not None  # a wafer estimate
    setup = Setup(
        config=dataclasses.replace(config, sliding_window=None),
        device=device,
        resident=ResidentLayouts(resident_layouts),
    )
    capacity, _ = whole_model_capacity(
        setup, report.prefill_grid, report.decode_grid, report.prompt_len
    )
    if capacity.shift is None:
        raise WaferError(f"no KV capacity for serving: {capacity.reason}")
    return capacity.shift


class GpuStepCost:
    """`StepCost` of GPUs from the batched GPU baseline (`waferllm.gpu_step_costs`): the
    weights stay in HBM for both phases, so switching phase costs nothing. The baseline's
    decode step takes the positions each sequence attends to: its cached tokens and itself."""

    def __init__(self, costs: GpuStepCosts) -> None:
        self.costs = costs
        self.kv_capacity_tokens = costs.kv_capacity_tokens
        self.kv_window_tokens = costs.kv_window_tokens

    def prefill_s(self, prompt_lens: Sequence[int]) -> float:
        return self.costs.prefill_seconds(prompt_lens)

    def decode_step_s(self, context_lens: Sequence[int]) -> float:
        return self.costs.decode_step_seconds([c + 1 for c in context_lens])

    def to_decode_s(self, prompt_lens: Sequence[int]) -> float:
        return 0.0

    def to_prefill_s(self) -> float:
        return 0.0
