"""`waferllm.estimate`: the full-scale modelled prediction of one request, without weights.

The mesh transformer runs in estimate mode (the same code as functional generation, on meta
tensors, every SRAM and route check enforced) on the given grids, or on the pair the grid
search picks (`search.py`). The result is the request report of SPEC.md §10.4 (kind
"estimate") with, in its breakdown, the placement, the search's choice, time by op and by
compute/communication per phase, and the KV capacity of both cache policies.
Walks are cached per process and setup (`waferllm.estimate.cost`); `clear_cache()` empties
it. This module only coerces arguments and checks them; `estimate_report.py` assembles the
report, and the costing is `estimate/`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from waferllm.api.estimate_report import Estimate, PhasePlacement, cores_of, estimate_result
from waferllm.api.provenance import collected_warnings, make_provenance
from waferllm.device import Device, get_device
from waferllm.errors import GridError, WaferError
from waferllm.estimate.cost import Grid, Setup, clear_cache, cost_model
from waferllm.estimate.multi_device import (
    batch_over_devices,
    grid_request,
    request_over_devices,
    resolve_num_devices,
    single_device_error,
)
from waferllm.mesh.virtual import GridLike, as_grid
from waferllm.model.config import ModelConfig
from waferllm.model.config_sources import load_config
from waferllm.model.kv_cache import KvPolicy
from waferllm.model.placement import PlacementMode, ResidentLayouts
from waferllm.model.quant import UNCOMPRESSED, Storage

if TYPE_CHECKING:
    from waferllm.api.estimate_systems import BaselineEstimate

__all__ = ["Estimate", "PhasePlacement", "clear_cache", "estimate"]

Progress = Callable[[int, int, str], None]
_Result = TypeVar("_Result", "Estimate", "BaselineEstimate")  # what `_stamped` stamps


# ---- the public function -------------------------------------------------------------------------
def estimate(
    model: str | Path | ModelConfig,
    *,
    device: str | Device = "wse2",
    device_overrides: Mapping[str, Any] | None = None,
    prompt_len: int,
    output_len: int,
    prefill_grid: GridLike | None = None,
    decode_grid: GridLike | None = None,
    placement: str | PlacementMode = "fit",
    kv_cache: str | KvPolicy = "shift",
    resident_layouts: str | ResidentLayouts = "one",
    progress: Progress | None = None,
    system: str = "waferllm",
    weight_dtype: str = "float16",
    kv_dtype: str = "float16",
    num_devices: int | str = 1,
    batch_size: int = 1,
) -> Estimate:
    """Predict one request of `prompt_len` tokens generating `output_len`; with `batch_size`
    B, B such requests decoded together (prompts prefilled one after another, each sequence
    in its own KV rows). The metrics are one sequence's (TTFT its own prefill, TPOT the
    batch's decode step); `breakdown["batch"]` has the batch's throughput. Grids not given
    are searched for one sequence, then the batch is priced on them; over several devices
    the sequences overlap in the pipeline (TPOT a round of B tokens, bubbles reported).

    `model`: a built-in name or a local checkpoint directory (only config.json is read).
    Grids not given are searched (the fastest feasible pair under SRAM and routes, minimising
    TTFT + transition + decode time); `progress(done, total, what)` follows the search.
    `system="t10"|"ladder"`: the paper's wafer-side baselines instead (`estimate_systems`).
    `weight_dtype`, `kv_dtype`: float16 (default), int8 or int4 (one float16 scale per group of
    32; SPEC.md §10.2): SRAM, links and the ledger count the stored bytes, every use pays the
    dequantisation.
    `num_devices`: `fit` over that many linked devices, a pipeline of layer ranges
    (SPEC.md §10.10), or "auto" for the fewest that hold the request.

    >>> est = estimate("llama3-8b", prompt_len=4096, output_len=2, placement="per-layer",
    ...                prefill_grid=600, decode_grid=420)
    >>> est.report.placement, est.extrapolated, est.metrics.decode_tpr > 1000
    ('per-layer', True, True)
    """
    storage = Storage.of(weight_dtype, kv_dtype)
    if system != "waferllm" and storage != UNCOMPRESSED:
        raise WaferError(
            f"system={system!r} models float16 weights and KV cache only; "
            "weight_dtype/kv_dtype apply to system waferllm"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise WaferError(f"batch_size={batch_size!r} must be a positive integer")
    if batch_size != 1 and system != "waferllm":
        raise WaferError(f"batch_size={batch_size} applies to system waferllm only")
    config = model if isinstance(model, ModelConfig) else load_config(str(model))
    resolved = _device(device, device_overrides)
    if system != "waferllm":
        if num_devices != 1:
            raise WaferError(f"num_devices={num_devices!r} applies to system waferllm only")
        grids_given = (prefill_grid, decode_grid)
        with collected_warnings() as caught:
            baseline = _baseline(config, resolved, system, prompt_len, output_len, grids_given)
        return _stamped(baseline, caught, device=resolved, config=config)  # type: ignore[return-value]
    with collected_warnings() as caught:
        result = _estimate(
            config,
            device=resolved,
            prompt_len=prompt_len,
            output_len=output_len,
            grids=(prefill_grid, decode_grid),
            placement=placement,
            kv_cache=kv_cache,
            resident_layouts=resident_layouts,
            progress=progress,
            storage=storage,
            num_devices=num_devices,
            batch_size=batch_size,
        )
    return _stamped(result, caught, device=resolved, config=config)


def _estimate(
    config: ModelConfig,
    *,
    device: Device,
    prompt_len: int,
    output_len: int,
    grids: tuple[GridLike | None, GridLike | None],
    placement: str | PlacementMode,
    kv_cache: str | KvPolicy,
    resident_layouts: str | ResidentLayouts,
    progress: Progress | None,
    storage: Storage,
    num_devices: int | str,
    batch_size: int,
) -> Estimate:
    start = time.perf_counter()
    setup = Setup(
        config=config,
        device=device,
        placement=_choice(placement, PlacementMode, "placement"),
        kv_policy=_choice(kv_cache, KvPolicy, "kv_cache"),
        resident=_choice(resident_layouts, ResidentLayouts, "resident_layouts"),
        storage=storage,
    )
    _check_lengths(setup.config, prompt_len, output_len)
    grids = (as_grid(grids[0], "prefill_grid"), as_grid(grids[1], "decode_grid"))
    for grid, name in zip(grids, ("prefill_grid", "decode_grid"), strict=True):
        _check_on_device(grid, setup.device, name)
    lengths = {"prompt_len": prompt_len, "output_len": output_len}
    count = resolve_num_devices(setup, num_devices, **lengths, grids=grids)
    setup = dataclasses.replace(setup, num_devices=count)
    costs = cost_model(setup)
    if count > 1:
        cost, search = request_over_devices(costs, **lengths, grids=grids, progress=progress)
        if batch_size > 1:  # the sequences overlapped over the devices (pipeline_schedule_of)
            cost = batch_over_devices(costs, cost, **lengths, batch=batch_size)
    else:
        try:
            cost, search = grid_request(costs, **lengths, grids=grids, progress=progress)
        except WaferError as exc:
            raise single_device_error(setup, exc, **lengths, grids=grids) from None
        if batch_size > 1:  # the grids found for one sequence, the batch priced on them
            p, d = cost.prefill_grid, cost.decode_grid
            cost = costs.request(p, d, prompt_len, output_len, batch_size)
    return estimate_result(setup, cost, search, prompt_len, output_len, time.perf_counter() - start)


def _baseline(
    config: ModelConfig,
    device: Device,
    system: str,
    prompt_len: int,
    output_len: int,
    grids: tuple[GridLike | None, GridLike | None],
) -> BaselineEstimate:
    """The paper's baselines (estimate_systems.py), same report schema with `system` set."""
    from waferllm.api.estimate_systems import estimate_baseline  # it builds on this module
    from waferllm.estimate.systems import System

    _check_lengths(config, prompt_len, output_len)
    return estimate_baseline(
        _choice(system, System, "system"),
        config,
        device,
        prompt_len=prompt_len,
        output_len=output_len,
        prefill_grid=grids[0],
        decode_grid=grids[1],
    )


def _stamped(result: _Result, caught: list[str], *, device: Device, config: ModelConfig) -> _Result:
    """The result (WaferLLM's or a baseline's) with its warnings, provenance and the share of
    the device's SRAM in use (`_sram_used_bytes`, over every device)."""
    sram_bytes = device.sram_bytes_per_core * device.num_cores * result.report.num_devices
    report = dataclasses.replace(
        result.report,
        warnings=tuple(caught),
        provenance=make_provenance(device=device, config=config),
        sram_used_fraction=_sram_used_bytes(result) / sram_bytes,
    )
    return dataclasses.replace(result, report=report)


def _sram_used_bytes(result: Estimate | BaselineEstimate) -> int:
    """WaferLLM: the phase whose placement holds the most, each of its regions (the
    vocabulary's own too in per-layer mode) at its peak core's bytes times its cores. A
    baseline: the peak core's bytes on every core it occupies (an upper bound)."""
    if isinstance(result, Estimate):
        cost = result.ledgers
        return max(cost.prefill.sram_used_bytes, cost.decode.sram_used_bytes)
    cores = max(cores_of(p, result.extrapolated) for p in (result.prefill, result.decode))
    return (result.report.metrics.peak_sram_bytes_per_core or 0) * cores


# ---- inputs --------------------------------------------------------------------------------------
def _device(device: str | Device, overrides: Mapping[str, Any] | None) -> Device:
    if isinstance(device, Device):
        return get_device(device.name, overrides) if overrides else device
    return get_device(device, overrides)


def _choice(value: Any, options: type, name: str) -> Any:
    try:
        return options(value)
    except ValueError:
        valid = ", ".join(str(o) for o in options)  # type: ignore[attr-defined]
        raise WaferError(f"{name}={value!r} is not one of {valid}") from None


def _check_on_device(grid: Grid | None, device: Device, name: str) -> None:
    if grid is not None and (grid[0] > device.mesh_rows or grid[1] > device.mesh_cols):
        raise GridError(
            f"{name} {grid[0]}x{grid[1]} is larger than the {device.name} mesh "
            f"({device.mesh_rows}x{device.mesh_cols})"
        )


def _check_lengths(config: ModelConfig, prompt_len: int, output_len: int) -> None:
    for name, value in (("prompt_len", prompt_len), ("output_len", output_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WaferError(f"{name}={value!r} must be a positive integer")
    # the last generated token is never fed back: it needs no position
    positions = prompt_len + output_len - 1
    if positions > config.max_position_embeddings:  # SPEC.md §9: accepted, with a warning
        warnings.warn(
            f"the request uses {positions} positions (prompt_len + output_len - 1) but "
            f"{config.name}'s max_position_embeddings is {config.max_position_embeddings}: "
            "the model was not trained that far; the estimate assumes it runs anyway",
            stacklevel=2,
        )


# ---- the report ----------------------------------------------------------------------------------
