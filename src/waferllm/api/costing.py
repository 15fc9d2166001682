"""Phase costs of a request on given grids, from the mesh transformer in estimate mode.

`CostModel` owns the estimate-mode `MeshTransformer`s of one setup (model, device, placement,
cache policy, resident layouts) and caches what they charge: one model per grid pair, the
prefill ledger per (prefill grid, prompt), the decode ledger per (decode grid, request), the
transition per (grid pair, prompt). The grid search and `reproduce` evaluate many requests on
few grids, so every walk of the layers happens once per process. Nothing here prints.
"""

from __future__ import annotations

import dataclasses

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.mesh.cost import Ledger
from waferllm.model.config import ModelConfig
from waferllm.model.kv_cache import KvCacheFullError, KvPolicy
from waferllm.model.placement import Phase, PlacementMode, ResidentLayouts
from waferllm.model.transformer import MeshTransformer

Grid = tuple[int, int]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """Everything an estimate depends on except the grids and the request's lengths."""

    config: ModelConfig
    device: Device
    placement: PlacementMode = PlacementMode.FIT
    kv_policy: KvPolicy = KvPolicy.SHIFT
    resident: ResidentLayouts = ResidentLayouts.ONE


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhaseCost:
    """One phase's ledger and the peaks its walk reached on that phase's meshes."""

    ledger: Ledger
    peak_sram_bytes_per_core: int
    routes_per_core: int

    @property
    def latency_cycles(self) -> float:
        return self.ledger.totals().latency_cycles


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestCost:
    """The three ledgers of one request on one grid pair (SPEC.md §10.4's ingredients)."""

    prefill_grid: Grid
    decode_grid: Grid
    prefill: PhaseCost  # TTFT: prefill, final norm, LM head, the first token's argmax
    transition: Ledger
    decode: PhaseCost  # the O-1 decode steps, identical steps grouped by count
    model: MeshTransformer

    def seconds(self) -> tuple[float, float, float]:
        """(TTFT, transition, decode time), modelled."""
        to_s = self.model.device.cycles_to_seconds
        return (
            to_s(self.prefill.latency_cycles),
            to_s(self.transition.totals().latency_cycles),
            to_s(self.decode.latency_cycles),
        )

    @property
    def objective_s(self) -> float:
        """What the grid search minimises: TTFT + transition + decode time."""
        return sum(self.seconds())


class CostModel:
    """Estimate-mode transformers of one `Setup` and the ledgers they charged, cached.

    With one resident layout a phase's plan depends on its own grid only, so a phase's cost is
    cached per (its grid, the request) and shared by every grid pair; with both layouts
    resident, each phase's SRAM holds the other plan's weights too, and the key is the pair.
    """

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._models: dict[tuple[Grid, Grid], MeshTransformer] = {}
        self._phases: dict[tuple, PhaseCost] = {}
        self._transitions: dict[tuple, Ledger] = {}

    def model(self, prefill_grid: Grid, decode_grid: Grid) -> MeshTransformer:
        """The placed model (weights on meta tensors; SRAM and routes checked)."""
        key = (prefill_grid, decode_grid)
        if key not in self._models:
            s = self.setup
            self._models[key] = MeshTransformer(
                s.config,
                None,
                device=s.device,
                prefill_grid=prefill_grid,
                decode_grid=decode_grid,
                placement=s.placement,
                kv_policy=s.kv_policy,
                resident_layouts=s.resident,
            )
        return self._models[key]

    def _key(self, model: MeshTransformer, phase: Phase, *request: int) -> tuple:
        grids = (model.plan.prefill.grid, model.plan.decode.grid)
        if self.setup.resident is ResidentLayouts.ONE:
            grids = (model.plan.grid(phase),)  # type: ignore[assignment]
        return (phase, *grids, *request)

    def prefill(self, model: MeshTransformer, prompt_len: int) -> PhaseCost:
        """TTFT's ledger (prefill, final norm, LM head, the first token's argmax)."""
        key = self._key(model, Phase.PREFILL, prompt_len)
        if key not in self._phases:
            ledger = Ledger()
            model.prefill([0] * prompt_len, ledger)
            self._phases[key] = _phase_cost(model, Phase.PREFILL, ledger)
        return self._phases[key]

    def transition(self, model: MeshTransformer, prompt_len: int) -> Ledger:
        """The re-layouts between the plans after a prompt of `prompt_len` (both grids matter)."""
        key = (model.plan.prefill.grid, model.plan.decode.grid, prompt_len)
        if key not in self._transitions:
            ledger = Ledger()
            model.transition_cost(prompt_len, ledger)
            self._transitions[key] = ledger
        return self._transitions[key]

    def check_room(self, model: MeshTransformer, prompt_len: int, output_len: int) -> None:
        """Raise unless the KV cache holds the request (`prompt_len + output_len - 1`)."""
        room = model.max_new_tokens(prompt_len)
        if output_len > room:
            rows, cols = model.plan.decode.grid
            capacity = model.kv_capacity_tokens(prompt_len=prompt_len)
            raise KvCacheFullError(
                f"the request needs {prompt_len + output_len - 1} cached positions but the KV "
                f"cache on the {rows}x{cols} decode grid holds {capacity} "
                f"({self.setup.kv_policy.value} policy: {room} new tokens after this prompt); "
                "use a larger decode grid, placement per-layer, or a shorter request"
            )

    def decode(self, model: MeshTransformer, prompt_len: int, output_len: int) -> PhaseCost:
        """The O-1 decode steps after a prompt of `prompt_len`; raises if the cache is full."""
        self.check_room(model, prompt_len, output_len)
        key = self._key(model, Phase.DECODE, prompt_len, output_len)
        if key not in self._phases:
            ledger = model.decode_cost(prompt_len, output_len)
            self._phases[key] = _phase_cost(model, Phase.DECODE, ledger)
        return self._phases[key]

    def request(
        self, prefill_grid: Grid, decode_grid: Grid, prompt_len: int, output_len: int
    ) -> RequestCost:
        """All three ledgers of one request; raises the model's errors (SRAM, routes, KV)."""
        if prompt_len < 1 or output_len < 1:
            raise WaferError(
                f"prompt_len={prompt_len} and output_len={output_len} must both be >= 1"
            )
        model = self.model(prefill_grid, decode_grid)
        self.check_room(model, prompt_len, output_len)
        return RequestCost(
            prefill_grid=prefill_grid,
            decode_grid=decode_grid,
            prefill=self.prefill(model, prompt_len),
            transition=self.transition(model, prompt_len),
            decode=self.decode(model, prompt_len, output_len),
            model=model,
        )


def _phase_cost(model: MeshTransformer, phase: Phase, ledger: Ledger) -> PhaseCost:
    state = model.prefill_state if phase is Phase.PREFILL else model.decode_state
    return PhaseCost(
        ledger=ledger,
        peak_sram_bytes_per_core=max(mesh.sram.peak_bytes for mesh in state.meshes),
        routes_per_core=model.routes_per_core()[phase.value],
    )


__all__ = ["CostModel", "Grid", "PhaseCost", "RequestCost", "Setup"]
