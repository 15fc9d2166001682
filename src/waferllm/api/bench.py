"""Benchmark one distributed GEMM or GEMV on the virtual wafer: the kernel report of SPEC.md
§10.3 (`waferllm bench`).

`bench_gemm` / `bench_gemv` build the mesh and seeded operands, run the kernel in estimate
mode (shapes only) or functional mode (real numbers, checked against the dense oracle) and
return a `KernelReport`. A point that does not fit in SRAM is a result, not an error. Every
cycle and second is modelled; `host_wall_s` is the only measured time. No printing here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from waferllm.api.bench_systems import SYSTEM_GEMM_KERNELS, SYSTEM_GEMV_KERNELS, system_weights
from waferllm.api.provenance import collected_warnings, make_provenance
from waferllm.device import Device, get_device
from waferllm.errors import SramOverflowError, WaferError
from waferllm.kernels.reference import compare, gemm_reference, gemv_reference
from waferllm.kernels.registry import GEMM_KERNELS as _WAFERLLM_GEMMS
from waferllm.kernels.registry import GEMV_KERNELS as _WAFERLLM_GEMVS
from waferllm.kernels.registry import WEIGHT_SKEW, store_b_for
from waferllm.kernels.result import KernelResult
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import fanouts_from_groups
from waferllm.mesh.storage import StoredDtype, parse_stored_dtype
from waferllm.mesh.tensor import Layout
from waferllm.mesh.tiling import padded_k
from waferllm.mesh.virtual import (
    COMPUTE_DTYPES,
    GridLike,
    Mesh,
    Mode,
    as_grid,
    resolve_torch_device,
)
from waferllm.model.quant import fake_quantise
from waferllm.model.report import Provenance

SCHEMA_VERSION = 1
_UNLIMITED_SRAM_BYTES = 1 << 60  # to measure what a point that does not fit would need
MAX_DIM = 1 << 24  # any LLM dimension fits (vocabularies are < 2**18); beyond, int64 overflows
# Host bytes a functional run holds per operand element, an estimate: float32 (4 bytes) times
# about 8 live copies (the host operand and its padded copy, the scattered tiles, the logical
# blocks and the receive buffers, the output, its gather and the dense oracle's).
_FUNCTIONAL_HOST_BYTES_PER_ELEMENT = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelReport:
    """One kernel run (SPEC.md §10.3). Cycle, time and ratio fields are None when `fits` is
    false; `max_abs_error` and `max_rel_error` (over the oracle's largest magnitude) are None
    in estimate mode."""

    kind: str  # "gemm" | "gemv"
    algo: str
    mode: str
    device: str
    grid: tuple[int, int]
    m: int
    k: int
    n: int
    fits: bool
    message: str | None = None
    latency_cycles: float | None = None
    latency_s: float | None = None
    mean_core_cycles: float | None = None
    compute_cycles: float | None = None
    comm_cycles: float | None = None
    overhead_cycles: float | None = None
    align_cycles: float | None = None
    comm_busy_cycles: float | None = None
    utilization: float | None = None
    compute_fraction: float | None = None
    routes_per_core: int | None = None
    peak_sram_bytes_per_core: int | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    host_wall_s: float = 0.0
    warnings: tuple[str, ...] = ()
    provenance: Provenance | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": self.kind}
        out["modelled"] = True
        for field in dataclasses.fields(self):
            if field.name != "kind":
                out[field.name] = getattr(self, field.name)
        out["grid"] = list(self.grid)
        out["warnings"] = list(self.warnings)
        out["provenance"] = self.provenance.to_dict() if self.provenance else None
        return out


def _with_warnings(bench: Callable[..., KernelReport]) -> Callable[..., KernelReport]:
    """Run a bench function collecting its warnings into the report's `warnings`."""

    @functools.wraps(bench)
    def run(**kwargs: Any) -> KernelReport:
        with collected_warnings() as caught:
            report = bench(**kwargs)
        return dataclasses.replace(report, warnings=tuple(caught))

    return run


@dataclasses.dataclass(frozen=True)
class _Setup:
    device: Device
    rows: int
    cols: int
    mode: Mode
    dtype: torch.dtype
    f16_accumulate: bool
    torch_device: torch.device

    def mesh(self, device: Device | None = None, mode: Mode | None = None) -> Mesh:
        return Mesh(
            device or self.device,
            self.rows,
            self.cols,
            mode=mode or self.mode,
            compute_dtype=self.dtype,
            f16_accumulate=self.f16_accumulate,
            torch_device=self.torch_device,
        )


@dataclasses.dataclass(frozen=True)
class _Run:
    """What one kernel run leaves behind: the mesh (SRAM peak, routes), the result, and the
    error against the oracle (functional mode)."""

    mesh: Mesh
    result: KernelResult
    error: tuple[float, float] | None


GEMM_KERNELS = {**_WAFERLLM_GEMMS, **SYSTEM_GEMM_KERNELS}  # + the paper's T10 and Ladder
GEMV_KERNELS = {**_WAFERLLM_GEMVS, **SYSTEM_GEMV_KERNELS}
# The kernel names `bench_gemm` and `bench_gemv` accept (kernels.registry + the baselines).
GEMM_ALGOS = tuple(GEMM_KERNELS)
GEMV_ALGOS = tuple(GEMV_KERNELS)


def _setup(
    device: str | Device,
    grid: GridLike,
    mode: str,
    dtype: str,
    f16_accumulate: bool,
    torch_device: str,
) -> _Setup:
    dev = device if isinstance(device, Device) else get_device(device)
    parsed = as_grid(grid, "grid")
    if parsed is None:
        raise WaferError("bench needs a grid")
    rows, cols = parsed
    try:
        run_mode = Mode(mode)
    except ValueError:
        raise WaferError(f"unknown mode {mode!r}; choose estimate or functional") from None
    if dtype not in COMPUTE_DTYPES:
        raise WaferError(f"unknown dtype {dtype!r}; choose from {', '.join(COMPUTE_DTYPES)}")
    if f16_accumulate and dtype != "float16":
        warnings.warn("--f16-accumulate has no effect unless --dtype float16", stacklevel=3)
    tiles = resolve_torch_device(torch_device)
    return _Setup(dev, rows, cols, run_mode, COMPUTE_DTYPES[dtype], f16_accumulate, tiles)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WaferError(f"--{name} must be a positive integer, got {value!r}")
        if value > MAX_DIM:
            raise WaferError(f"--{name}={value} is larger than the supported {MAX_DIM}")


def available_host_bytes() -> int:
    """Memory this machine can still give (MemAvailable on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_host_memory(setup: _Setup, elements: int, what: str) -> None:
    """Functional mode: refuse up front a run whose operands would not fit in host memory
    (estimate mode holds shapes only and is never refused)."""
    if setup.mode is not Mode.FUNCTIONAL:
        return
    needed = elements * _FUNCTIONAL_HOST_BYTES_PER_ELEMENT
    available = available_host_bytes()
    if needed > available:
        raise WaferError(
            f"functional {what} needs about {needed / 1e9:.3g} GB of host memory (estimated) "
            f"and {available / 1e9:.3g} GB are available; use --mode estimate (shapes only) "
            "or smaller sizes"
        )


def _host(
    mesh: Mesh, shape: tuple[int, ...], valid: tuple[int, ...], gen: torch.Generator
) -> torch.Tensor:
    """Seeded normal operand of `valid` size, zero-padded to `shape`; meta in estimate mode.
    Rounded to the compute dtype so the oracle sees what the mesh sees."""
    if mesh.mode is Mode.ESTIMATE:
        return torch.empty(shape, device="meta")
    data = torch.zeros(shape)
    data[tuple(slice(0, v) for v in valid)] = torch.randn(valid, generator=gen)
    return data.to(mesh.compute_dtype).float()


def _quantised(host: torch.Tensor, stored: StoredDtype) -> torch.Tensor:
    """A [K, N] weight quantised along K (its reduced axis) and dequantised, as compressed
    weights are computed with; unchanged for float16 and in estimate mode."""
    if not stored.compressed or host.device.type == "meta":
        return host
    return fake_quantise(host.T, stored).T.contiguous()


def _bench(
    setup: _Setup, run: Callable[[Mesh], _Run], base: dict[str, Any], start: float
) -> KernelReport:
    """Run, or on SRAM overflow re-run shapes only without the SRAM limit to say what the
    point needs; then fill the report (`base`: kind, algo, sizes)."""
    base = dict(
        base,
        mode=setup.mode.value,
        device=setup.device.name,
        grid=(setup.rows, setup.cols),
        provenance=make_provenance(device=setup.device, config=None),
    )
    try:
        done = run(setup.mesh())
    except SramOverflowError:
        roomy = dataclasses.replace(setup.device, sram_bytes_per_core=_UNLIMITED_SRAM_BYTES)
        needed = run(setup.mesh(roomy, Mode.ESTIMATE)).mesh.sram.peak_bytes
        return KernelReport(
            **base,
            fits=False,
            message=f"does not fit (needs {needed} bytes per core)",
            host_wall_s=time.perf_counter() - start,
        )
    totals = done.result.cost
    latency = totals.latency_cycles
    dev = setup.device
    flops = 2 * base["m"] * base["k"] * base["n"]  # unpadded sizes (SPEC.md §10.3)
    peak = latency * setup.rows * setup.cols * dev.flops_per_cycle_per_core
    return KernelReport(
        **base,
        fits=True,
        latency_cycles=latency,
        latency_s=dev.cycles_to_seconds(latency),
        mean_core_cycles=done.result.mean_core_cycles,
        compute_cycles=totals.compute_cycles,
        comm_cycles=totals.comm_cycles,
        overhead_cycles=totals.overhead_cycles,
        align_cycles=totals.align_cycles,
        comm_busy_cycles=totals.comm_busy_cycles,
        utilization=flops / peak if peak > 0 else None,
        compute_fraction=totals.compute_fraction,
        routes_per_core=done.mesh.routes.routes_per_core,
        peak_sram_bytes_per_core=done.mesh.sram.peak_bytes,
        max_abs_error=done.error[0] if done.error else None,
        max_rel_error=done.error[1] if done.error else None,
        host_wall_s=time.perf_counter() - start,
    )


@_with_warnings
def bench_gemm(
    *,
    algo: str,
    grid: GridLike,
    m: int,
    k: int,
    n: int,
    device: str | Device = "wse2",
    mode: str = "estimate",
    dtype: str = "float32",
    f16_accumulate: bool = False,
    align_both: bool = False,
    seed: int = 0,
    weight_dtype: str = "float16",
    torch_device: str = "cpu",
) -> KernelReport:
    """C[m, n] = A[m, k] @ B[k, n] with `algo` (meshgemm, cannon, summa, allgather) on a grid
    of the device. B is stored as weights (pre-skewed for the ring kernels, untimed) unless
    `align_both`, which skews it on the device beside A (timed). Ring kernels on a non-square
    grid get K zero-padded to a multiple of lcm(rows, cols). `weight_dtype` int8/int4 stores B
    compressed (meshgemm and cannon, B stored as weights): functional runs quantise it and
    compare with the oracle on the same dequantised B. `torch_device`: where functional tiles
    live (cpu or cuda)."""
    start = time.perf_counter()
    stored = parse_stored_dtype(weight_dtype, what="weight_dtype")
    if algo not in GEMM_KERNELS:
        raise WaferError(f"unknown GEMM algorithm {algo!r}; choose from {', '.join(GEMM_KERNELS)}")
    _check_sizes(m=m, k=k, n=n)
    setup = _setup(device, grid, mode, dtype, f16_accumulate, torch_device)
    ring = algo in WEIGHT_SKEW or algo == "t10"
    if align_both and not ring:
        warnings.warn(f"--align-both has no effect on {algo} (it skews nothing)", stacklevel=2)
    if stored.compressed and (align_both or algo not in WEIGHT_SKEW):
        raise WaferError(
            f"weight_dtype={stored.value} applies to B stored as weights by "
            f"{' or '.join(WEIGHT_SKEW)} (without --align-both), not to {algo}"
        )
    k_stored = padded_k(setup.rows, setup.cols, k) if ring else k
    _check_host_memory(setup, m * k_stored + k_stored * n + m * n, f"gemm {m}x{k}x{n}")

    def run(mesh: Mesh) -> _Run:
        gen = torch.Generator().manual_seed(seed)
        host_a = _host(mesh, (m, k_stored), (m, k), gen)
        host_b = _quantised(_host(mesh, (k_stored, n), (k, n), gen), stored)
        a = mesh.scatter(host_a, Layout((m, k_stored), y_dim=0, x_dim=1), "a")
        if align_both or not ring:
            b = mesh.scatter(host_b, Layout((k_stored, n), y_dim=0, x_dim=1), "b")
        elif algo in SYSTEM_GEMM_KERNELS:
            b = system_weights(mesh, host_b, algo=algo) or mesh.scatter(
                host_b, Layout((k_stored, n), y_dim=0, x_dim=1), "b"
            )
        else:
            b = store_b_for(mesh, host_b, algo=algo, name="b", stored=stored)
        result = GEMM_KERNELS[algo](mesh, a=a, b=b, ledger=Ledger())
        error = None
        if mesh.mode is Mode.FUNCTIONAL:
            got = compare(mesh.gather(result.out), gemm_reference(host_a, host_b))
            error = (got.max_abs_error, got.relative_error)
        return _Run(mesh, result, error)

    return _bench(setup, run, dict(kind="gemm", algo=algo, m=m, k=k, n=n), start)


@_with_warnings
def bench_gemv(
    *,
    algo: str,
    grid: GridLike,
    m: int,
    n: int,
    fanouts: Sequence[int] | None = None,
    groups: int | None = None,
    broadcast: bool = True,
    device: str | Device = "wse2",
    mode: str = "estimate",
    dtype: str = "float32",
    f16_accumulate: bool = False,
    seed: int = 0,
    weight_dtype: str = "float16",
    torch_device: str = "cpu",
) -> KernelReport:
    """y[n] = x[m] @ W[m, n] with `algo` (meshgemv, pipeline, ring): x split along Y and
    replicated along X, W tiled over the cores, the partial sums allreduced along Y.
    `fanouts` (bottom level first) or `groups` shape meshgemv's K-tree; `broadcast=False`
    stops after the reduce. The report has m = 1, k = the reduced length, n (SPEC.md §10.3).
    `weight_dtype` int8/int4 stores W compressed (the oracle runs the same dequantised W)."""
    start = time.perf_counter()
    stored = parse_stored_dtype(weight_dtype, what="weight_dtype")
    if algo not in GEMV_KERNELS:
        raise WaferError(f"unknown GEMV algorithm {algo!r}; choose from {', '.join(GEMV_KERNELS)}")
    _check_sizes(m=m, n=n)
    setup = _setup(device, grid, mode, dtype, f16_accumulate, torch_device)
    if fanouts is not None and groups is not None:
        raise WaferError("give --fanouts or --groups, not both")
    tree = fanouts_from_groups(setup.rows, groups) if groups is not None else fanouts
    if stored.compressed and algo not in _WAFERLLM_GEMVS:
        raise WaferError(
            f"weight_dtype={stored.value} is modelled for {', '.join(_WAFERLLM_GEMVS)}, not {algo}"
        )
    _check_host_memory(setup, m * n + m + n, f"gemv {m}x{n}")

    def run(mesh: Mesh) -> _Run:
        gen = torch.Generator().manual_seed(seed)
        host_x = _host(mesh, (m,), (m,), gen)
        host_w = _quantised(_host(mesh, (m, n), (m, n), gen), stored)
        x = mesh.scatter(host_x, Layout((m,), y_dim=0), "x")
        w = mesh.scatter(host_w, Layout((m, n), y_dim=0, x_dim=1), "w", stored=stored)
        kernel = GEMV_KERNELS[algo]
        result = kernel(mesh, x=x, w=w, ledger=Ledger(), fanouts=tree, broadcast=broadcast)
        error = None
        if mesh.mode is Mode.FUNCTIONAL:
            out = result.out
            if result.root is not None:  # only line `root` holds y: read it there
                line = out.data.narrow(0, result.root, 1).expand_as(out.data)
                out = dataclasses.replace(out, data=line, layout=out.layout.with_tag(""))
            got = compare(mesh.gather(out), gemv_reference(host_x, host_w))
            error = (got.max_abs_error, got.relative_error)
        return _Run(mesh, result, error)

    return _bench(setup, run, dict(kind="gemv", algo=algo, m=1, k=m, n=n), start)
