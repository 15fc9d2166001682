"""PLMR device model: one frozen dataclass per mesh device, and the presets wse2(), wse3(), tiny().

Every constant cites the PAPER.md row it comes from, or says it is a placeholder or calibrated
(SPEC.md §8 says on what). Users build their own device in Python (`dataclasses.replace`), from
a JSON file (`load_device`), or override single constants (`with_overrides`, the CLI's `--set`).
Citations live in `device_sources.py`; this module imports nothing else of ours but the errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from waferllm.device_sources import COMMON_SOURCES
from waferllm.errors import WaferError

STORAGE_DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4}
# Bounds that keep plans and grid searches within seconds and host memory (estimate walks
# per-core arrays: a WSE-3 is under 1,200 cores a side, 2048 is twice that area again; real
# cores hold kilobytes to megabytes).
MAX_MESH_SIDE = 2048
MAX_SRAM_BYTES_PER_CORE = 1 << 60  # also what `bench` uses to measure a point that does not fit
# WSE-2/WSE-3 static power: power_w less the events' mean power at PAPER.md §3.3's operating
# points (see the source of `static_power_w`).
STATIC_POWER_W = 14_380.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Device:
    """A 2D mesh of cores in PLMR terms (Parallelism, Latency, Memory, Routing).

    Rows are the Y axis (southwards), columns the X axis (eastwards); `mesh_rows` x `mesh_cols`
    is the usable rectangle a kernel may occupy (SPEC.md §10.1).
    """

    name: str
    mesh_rows: int
    mesh_cols: int
    clock_hz: float
    sram_bytes_per_core: int
    storage_dtype: str
    flops_per_cycle_per_core: float  # packed-f16 SIMD peak (2 FLOP per MAC lane)
    sram_bytes_per_cycle: float  # SRAM traffic a core can move per cycle (reads + write)
    link_bytes_per_cycle: float  # one directed link between neighbouring routers
    ramp_bytes_per_cycle: float  # one direction of a core's port to its own router
    hop_latency_cycles: float  # alpha: per hop of hardware forwarding
    stage_latency_cycles: float  # beta: per core that receives, processes and re-sends
    routes_per_core: int  # route ids (colours) one router can hold
    power_w: float  # whole-device power, for energy = power x modelled time
    # Energy per event (estimate/energy.py): static power over the modelled time plus these.
    static_power_w: float  # drawn whatever the cores do (leakage, clocks, idle cores, I/O)
    energy_pj_per_flop: float  # one f16 FLOP on a core
    energy_pj_per_sram_byte: float  # one byte read from or written to a core's SRAM
    energy_pj_per_hop_byte: float  # one byte crossing one link (wire and router)
    # Efficiency constants (calibrated; see the README's calibration section).
    vector_instr_floor_cycles: float  # minimum cycles of one vector instruction (issue latency)
    step_overhead_cycles: float  # fixed cost of one compute-shift step (task switch, sync)
    op_overhead_cycles: float  # fixed cost of one sequential operation (task/collective start)
    scalar_cycles_per_element: float  # one scalar (non-SIMD) instruction: fast_exp step, divide
    layer_fixed_cycles: float  # fixed cost of one decoder layer per pass, whatever its sizes
    host_io_bytes_per_s: float  # host <-> wafer transfer rate for prompts, tokens, logits
    # ---- the inter-system link (multi-wafer `fit`, SPEC.md §10.10): one wafer's system to the
    # next; what one activation transfer between two devices of a pipeline costs
    system_link_bytes_per_s: float  # payload bandwidth out of one system into the next
    system_link_latency_s: float  # one transfer's fixed latency (NICs, switch, protocol)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for field in ("mesh_rows", "mesh_cols", "sram_bytes_per_core", "routes_per_core"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WaferError(f"device field {field}={value!r} must be a positive integer")
        limits = {
            "mesh_rows": MAX_MESH_SIDE,
            "mesh_cols": MAX_MESH_SIDE,
            "sram_bytes_per_core": MAX_SRAM_BYTES_PER_CORE,
            "routes_per_core": 1 << 16,
        }
        for field, limit in limits.items():
            if getattr(self, field) > limit:
                raise WaferError(
                    f"device field {field}={getattr(self, field)} is larger than the supported "
                    f"{limit}"
                )
        self._check_numbers()
        self._check_system_link()
        if self.storage_dtype not in STORAGE_DTYPES:
            raise WaferError(
                f"device field storage_dtype={self.storage_dtype!r} must be one of "
                f"{', '.join(STORAGE_DTYPES)}"
            )

    def _check_numbers(self) -> None:
        """Finite numbers only (a NaN or infinite constant would poison every cost)."""
        positive = (
            "clock_hz",
            "flops_per_cycle_per_core",
            "sram_bytes_per_cycle",
            "link_bytes_per_cycle",
            "ramp_bytes_per_cycle",
            "power_w",
            "host_io_bytes_per_s",
        )
        for field in positive:
            value = getattr(self, field)
            if not _is_finite_number(value) or value <= 0:
                raise WaferError(f"device field {field}={value!r} must be a positive number")
        non_negative = (
            "static_power_w",
            "energy_pj_per_flop",
            "energy_pj_per_sram_byte",
            "energy_pj_per_hop_byte",
            "hop_latency_cycles",
            "stage_latency_cycles",
            "vector_instr_floor_cycles",
            "step_overhead_cycles",
            "op_overhead_cycles",
            "scalar_cycles_per_element",
            "layer_fixed_cycles",
        )
        for field in non_negative:
            value = getattr(self, field)
            if not _is_finite_number(value) or value < 0:
                raise WaferError(f"device field {field}={value!r} must be a number >= 0")

    def _check_system_link(self) -> None:
        """The inter-system link: a positive bandwidth, a latency >= 0 (finite numbers)."""
        bandwidth, latency = self.system_link_bytes_per_s, self.system_link_latency_s
        if not _is_finite_number(bandwidth) or bandwidth <= 0:
            raise WaferError(
                f"device field system_link_bytes_per_s={bandwidth!r} must be a positive number"
            )
        if not _is_finite_number(latency) or latency < 0:
            raise WaferError(
                f"device field system_link_latency_s={latency!r} must be a number >= 0"
            )

    @property
    def storage_bytes(self) -> int:
        """Bytes of one element in the storage dtype (SRAM, links and the ledger use it)."""
        return STORAGE_DTYPES[self.storage_dtype]

    @property
    def num_cores(self) -> int:
        return self.mesh_rows * self.mesh_cols

    def cycles_to_seconds(self, cycles: float) -> float:
        """The one conversion from modelled cycles to modelled seconds."""
        return cycles / self.clock_hz

    def energy_j(self, seconds: float) -> float:
        """Whole-device power times modelled time (SPEC.md §3)."""
        return self.power_w * seconds

    def to_dict(self) -> dict[str, Any]:
        """Every field plus `name`; `sources` as a mapping field -> citation."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["sources"] = dict(self.sources)
        return out


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _wse_common() -> dict[str, Any]:
    """Constants WSE-2 and WSE-3 share, with their sources."""
    return dict(
        clock_hz=1.1e9,
        sram_bytes_per_core=48 * 1024,
        storage_dtype="float16",
        sram_bytes_per_cycle=12.0,
        link_bytes_per_cycle=4.0,
        ramp_bytes_per_cycle=4.0,
        hop_latency_cycles=1.0,
        stage_latency_cycles=8.5,
        routes_per_core=21,
        power_w=15_000.0,
        static_power_w=STATIC_POWER_W,
        energy_pj_per_flop=0.2,
        energy_pj_per_sram_byte=0.3,
        energy_pj_per_hop_byte=0.4,
        vector_instr_floor_cycles=8.0,
        step_overhead_cycles=88.0,
        op_overhead_cycles=30.5,
        scalar_cycles_per_element=4.0,
        layer_fixed_cycles=2829.0,
        host_io_bytes_per_s=1.2e12,
        **_system_link(),
    )


# ---- the inter-system link (multi-wafer `fit`) ---------------------------------------------------
def _system_link() -> dict[str, Any]:
    """CS-2 system I/O: 12 x 100 GbE = 1.2 Tbit/s = 150 GB/s; the latency is a placeholder."""
    return dict(system_link_bytes_per_s=150e9, system_link_latency_s=5e-6)


def wse2() -> Device:
    """Cerebras WSE-2 as the paper ran it (PAPER.md §2.1)."""
    return Device(
        name="wse2",
        mesh_rows=994,
        mesh_cols=750,
        flops_per_cycle_per_core=8.0,
        **{**_wse_common(), "vector_instr_floor_cycles": 9.79},
        sources={
            **COMMON_SOURCES,
            "vector_instr_floor_cycles": (
                "calibrated on PAPER.md §3.3's LLaMA3-8B prefill rows (480/600/720, per-layer, "
                "the layer as the public code ran it: one head, estimate/measured.py; fit "
                "residuals +2.0%, -1.1%, -1.3%; benchmarks/calibrate_llm.py): the core's SIMD "
                "pipeline differs from WSE-3's; Table 6 does not see it (SRAM-bound GEMV)"
            ),
            "mesh_rows": "PAPER.md §2.1 usable rectangle (994 rows)",
            "mesh_cols": "PAPER.md §2.1 usable rectangle (750 columns)",
            "flops_per_cycle_per_core": "PAPER.md §2.1 core datapath (4 f16 SIMD lanes x 2 FLOP)",
        },
    )


def wse3() -> Device:
    """Cerebras WSE-3 (PAPER.md §2.1; power assumed equal to WSE-2's, as the vendor says)."""
    return Device(
        name="wse3",
        mesh_rows=1170,
        mesh_cols=755,
        flops_per_cycle_per_core=16.0,
        **{**_wse_common(), "hop_latency_cycles": 3.0},
        sources={
            **COMMON_SOURCES,
            "hop_latency_cycles": (
                "calibrated on PAPER.md §4 WSE-3 MeshGEMV points (M=N=8P, group_num 8; fit "
                "residuals -1.0% to +1.7%; benchmarks/calibrate_wafer.py) with the shared beta: "
                "their ~3 cycles per unit of P is a term per row of the axis, which beta cannot "
                "carry (a separate beta of ~30 with alpha = 1 misses the never-fitted G sweep by "
                "up to +45%; this predicts it, see benchmarks/fidelity.py); the mechanism "
                "behind ~3 cycles per hop against WSE-2's 1 (simd_64 fabric DSDs with "
                "explicit queues, or the mean-over-cores metric) is not identified"
            ),
            "mesh_rows": "PAPER.md §2.1 usable rectangle (1170 rows)",
            "mesh_cols": "PAPER.md §2.1 usable rectangle (755 columns)",
            "flops_per_cycle_per_core": "PAPER.md §2.1 core datapath (8 f16 lanes, simd_64)",
            "power_w": "PAPER.md §2.1 power row ('same power as WSE-2'; figure not published)",
            "system_link_bytes_per_s": (
                "placeholder: the CS-3's system I/O taken equal to the CS-2's 12 x 100 GbE "
                "(150 GB/s); the CS-3 figure was not verified (no download possible)"
            ),
        },
    )


def tiny() -> Device:
    """A 64x64 mesh with WSE-2's clock, latencies and links, 4 MiB SRAM and 32 routes per core.

    For tests and small functional runs: big enough SRAM that small checkpoints fit on few cores.
    """
    base = wse2()
    return dataclasses.replace(
        base,
        name="tiny",
        mesh_rows=64,
        mesh_cols=64,
        sram_bytes_per_core=4 * 1024 * 1024,
        routes_per_core=32,
        sources={
            **base.sources,
            "mesh_rows": "test device: 64 rows",
            "mesh_cols": "test device: 64 columns",
            "sram_bytes_per_core": "test device: 4 MiB so small checkpoints fit",
            "routes_per_core": "PAPER.md §1 R row (5-bit route id: 32)",
        },
    )


PRESETS: dict[str, Callable[[], Device]] = {"wse2": wse2, "wse3": wse3, "tiny": tiny}

_FIELDS = {f.name: f for f in dataclasses.fields(Device)}
_INT_FIELDS = {"mesh_rows", "mesh_cols", "sram_bytes_per_core", "routes_per_core"}
_STR_FIELDS = {"name", "storage_dtype"}


def _coerce(key: str, value: Any) -> Any:
    """Convert a JSON or `--set` value to the field's type, or raise naming the field."""
    if key not in _FIELDS or key == "sources":
        valid = ", ".join(k for k in _FIELDS if k != "sources")
        raise WaferError(f"unknown device field {key!r}; valid fields: {valid}")
    if key in _STR_FIELDS:
        return str(value)
    if isinstance(value, bool):  # JSON true/false would otherwise read as 1/0
        raise WaferError(f"device field {key}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WaferError(f"device field {key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise WaferError(f"device field {key}={value!r} must be a finite number")
    if key in _INT_FIELDS:
        if number != int(number):
            raise WaferError(f"device field {key}={value!r} must be an integer")
        return int(number)
    return number


def with_overrides(
    device: Device, overrides: Mapping[str, Any], *, source: str = "user override (--set)"
) -> Device:
    """A copy of `device` with single constants replaced (`--set key=value`); each changed
    field's source becomes `source`."""
    changes = {key: _coerce(key, value) for key, value in overrides.items()}
    sources = {**device.sources, **{k: source for k in changes}}
    return dataclasses.replace(device, **changes, sources=sources)


def parse_set_options(items: list[str]) -> dict[str, str]:
    """Parse repeated `key=value` strings."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise WaferError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_device(path: str | Path) -> Device:
    """A device from a JSON file: every field, or `"base": "<preset>"` plus the fields to change."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise WaferError(f"device file {str(path)!r} is not a regular file")
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise WaferError(f"cannot read device file {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise WaferError(f"device file {str(path)!r} is not valid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise WaferError(f"device file {str(path)!r} must hold one JSON object")
    raw.pop("sources", None)
    base_name = raw.pop("base", None)
    if base_name is not None:
        if base_name not in PRESETS:
            raise WaferError(
                f"device file {str(path)!r}: base {base_name!r} is not a preset; "
                f"use one of {', '.join(PRESETS)}"
            )
        raw.setdefault("name", path.stem)
        return with_overrides(PRESETS[base_name](), raw, source=f"user file {path.name}")
    missing = [k for k in _FIELDS if k not in raw and k not in ("sources", "name")]
    if missing:
        raise WaferError(
            f"device file {str(path)!r} lacks {', '.join(missing)}; give every field or "
            f'"base": one of {", ".join(PRESETS)}'
        )
    fields = {k: _coerce(k, v) for k, v in raw.items()}
    fields.setdefault("name", path.stem)
    return Device(**fields, sources={k: f"user file {path.name}" for k in fields})


def get_device(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> Device:
    """A preset by name, or a JSON device file by path; then `overrides` applied."""
    if name_or_path in PRESETS:
        device = PRESETS[name_or_path]()
    elif name_or_path.endswith(".json") or Path(name_or_path).is_file():
        device = load_device(name_or_path)
    else:
        raise WaferError(
            f"unknown device {name_or_path!r}; presets: {', '.join(PRESETS)} (or a JSON file)"
        )
    return with_overrides(device, overrides) if overrides else device


def list_devices() -> list[Device]:
    return [factory() for factory in PRESETS.values()]
