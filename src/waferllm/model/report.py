"""The request report shared by `generate`, `estimate` and `gpu` (SPEC.md §10.4).

One schema for all three. `RequestMetrics.from_times` is the single place where TTFT, TPOT
and the TPRs are derived from modelled times, so every producer uses the same definitions.
All values are modelled; host wall-clock lives in `host_wall_s` only. `Provenance` says how a
report was made (the public API fills it in; `waferllm.api.provenance` finds the values).
"""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance:
    """How a report was made (SPEC.md §10.4): waferllm's version and commit, the command line
    (None from the Python API), every device constant after JSON and `--set` overrides, and
    the sha256 of the model's canonical config (a mapping name -> sha256 where a report covers
    several models; None where it covers none)."""

    version: str
    commit: str | None
    command: str | None
    device_constants: dict[str, Any] | None
    model_config_sha256: str | dict[str, str] | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestMetrics:
    ttft_s: float | None
    tpot_s: float | None
    prefill_tpr: float | None
    decode_tpr: float | None
    e2e_tpr: float | None
    transition_s: float | None
    energy_j: float | None
    peak_sram_bytes_per_core: int | None
    routes_per_core: int | None
    utilization: float | None

    @classmethod
    def from_times(
        cls,
        *,
        prompt_len: int,
        output_len: int,
        ttft_s: float,
        decode_time_s: float,
        transition_s: float,
        power_w: float | None,
        peak_sram_bytes_per_core: int | None = None,
        routes_per_core: int | None = None,
        utilization: float | None = None,
    ) -> RequestMetrics:
        """SPEC.md §10.4: decode_time is the sum of the O-1 decode steps (null TPOT if O=1)."""
        tpot = decode_time_s / (output_len - 1) if output_len > 1 else None
        total = ttft_s + transition_s + decode_time_s
        return cls(
            ttft_s=ttft_s,
            tpot_s=tpot,
            prefill_tpr=prompt_len / ttft_s if ttft_s > 0 else None,
            decode_tpr=1.0 / tpot if tpot else None,
            e2e_tpr=output_len / total if total > 0 else None,
            transition_s=transition_s,
            energy_j=power_w * total if power_w is not None else None,
            peak_sram_bytes_per_core=peak_sram_bytes_per_core,
            routes_per_core=routes_per_core,
            utilization=utilization,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class KvCapacity:
    """Largest total context that fits and tokens that can follow the prompt, per cache policy;
    None with `reason` when the model does not fit one device."""

    shift: int | None
    concat: int | None
    reason: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestReport:
    kind: str  # "generate" | "estimate" | "gpu"
    model: str
    device: str
    prompt_len: int
    output_len: int
    prefill_grid: tuple[int, int] | None
    decode_grid: tuple[int, int] | None
    placement: str | None
    metrics: RequestMetrics
    kv_capacity_tokens: KvCapacity
    max_new_tokens: KvCapacity
    breakdown: dict[str, Any]
    host_wall_s: float
    text: str | None = None
    token_ids: list[int] | None = None
    warnings: tuple[str, ...] = ()
    provenance: Provenance | None = None
    system: str = "waferllm"  # or the paper's wafer-side baselines "t10", "ladder"
    batch_size: int = 1
    num_devices: int = 1  # wafers (or GPUs for kind "gpu")
    weight_dtype: str = "float16"  # stored weights
    kv_dtype: str = "float16"  # stored KV cache
    stack: str | None = None  # gpu only: "paper" or "ideal" serving-stack overhead
    sram_used_fraction: float | None = None  # of the device's SRAM, at the placed peak

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "modelled": True,
            "model": self.model,
            "device": self.device,
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
            "prefill_grid": list(self.prefill_grid) if self.prefill_grid else None,
            "decode_grid": list(self.decode_grid) if self.decode_grid else None,
            "placement": self.placement,
            "metrics": dataclasses.asdict(self.metrics),
            "kv_capacity_tokens": _capacity(self.kv_capacity_tokens),
            "max_new_tokens": _capacity(self.max_new_tokens),
            "breakdown": self.breakdown,
            "host_wall_s": self.host_wall_s,
            "system": self.system,
            "batch_size": self.batch_size,
            "num_devices": self.num_devices,
            "weight_dtype": self.weight_dtype,
            "kv_dtype": self.kv_dtype,
            "sram_used_fraction": self.sram_used_fraction,
            "warnings": list(self.warnings),
            "provenance": self.provenance.to_dict() if self.provenance else None,
        }
        if self.kind == "gpu":
            out["stack"] = self.stack
        if self.kind == "generate":
            out["text"] = self.text
            out["token_ids"] = list(self.token_ids or [])
        return out


def _capacity(cap: KvCapacity) -> dict[str, Any]:
    out: dict[str, Any] = {"shift": cap.shift, "concat": cap.concat}
    if cap.reason:
        out["reason"] = cap.reason
    return out
