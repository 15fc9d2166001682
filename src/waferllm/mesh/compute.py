"""Local compute on every core at once, priced by a per-core roofline (SPEC.md §3).

A vector instruction of length n costs `max(floor, n*flops/F, n*sram_bytes/S)` cycles: F the
packed-f16 SIMD peak, S the SRAM bytes per cycle, `floor` the calibrated minimum of one
instruction (short vectors pay it). A multiply-accumulate moves 3 storage elements (read the
accumulator and one streamed operand, write the accumulator; code notes §1.2, §2.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from waferllm.device import Device
from waferllm.mesh.cost import Charge, ChargeKind, Ledger
from waferllm.mesh.meta import meta_matmul
from waferllm.mesh.replicas import held_once, on_replicas, once
from waferllm.mesh.virtual import Mesh, Mode

MAC_FLOPS = 2
MAC_SRAM_ELEMENTS = 3


def vector_op_cycles(
    device: Device,
    *,
    num_instructions: int,
    length: int,
    flops_per_element: float,
    sram_elements_per_element: float,
) -> float:
    """Cycles of `num_instructions` vector instructions of `length` elements on one core."""
    if num_instructions == 0 or length == 0:
        return 0.0
    per_instruction = max(
        device.vector_instr_floor_cycles,
        length * flops_per_element / device.flops_per_cycle_per_core,
        length * sram_elements_per_element * device.storage_bytes / device.sram_bytes_per_cycle,
    )
    return num_instructions * per_instruction


def matmul_cycles(device: Device, *, m: int, k: int, n: int, vector: str = "m") -> float:
    """One core's [m, k] @ [k, n]: k*n instructions of length m (GEMM tiles, vector="m") or
    m*k instructions of length n (GEMV, vector="n")."""
    if vector == "m":
        count, length = k * n, m
    else:
        count, length = m * k, n
    return vector_op_cycles(
        device,
        num_instructions=count,
        length=length,
        flops_per_element=MAC_FLOPS,
        sram_elements_per_element=MAC_SRAM_ELEMENTS,
    )


def charge_compute(
    mesh: Mesh,
    ledger: Ledger,
    op: str,
    *,
    cycles: float,
    flops_per_core: float,
    sram_bytes_per_core: float | None = None,
) -> None:
    """Charge local work on every core: `cycles` on the critical path, FLOPs and SRAM bytes
    summed over cores (the energy events). `sram_bytes_per_core` defaults to a stream of
    multiply-accumulates (3 storage elements per 2 FLOPs), what callers without their own
    count (the baselines' plans) issue."""
    if not ledger.prices:
        return
    if sram_bytes_per_core is None:
        sram_bytes_per_core = (
            flops_per_core / MAC_FLOPS * MAC_SRAM_ELEMENTS * mesh.device.storage_bytes
        )
    ledger.charge(
        op,
        Charge(
            kind=ChargeKind.COMPUTE,
            cycles=cycles,
            flops=int(flops_per_core * mesh.num_cores),
            sram_bytes=int(sram_bytes_per_core * mesh.num_cores),
            overhead_cycles=mesh.device.op_overhead_cycles,
        ),
    )


def charge_inline_compute(ledger: Ledger, op: str, *, cycles: float) -> None:
    """Compute that runs inside another operation's loop or hand-off (dequantising a weight
    chunk, quantising a cache entry): no operation start of its own and no model FLOPs."""
    if cycles and ledger.prices:
        ledger.charge(op, Charge(kind=ChargeKind.COMPUTE, cycles=cycles))


def charge_fixed(ledger: Ledger, op: str, *, cycles: float) -> None:
    """A fixed cost on the critical path that is no operation's work (a decoder layer's
    `layer_fixed_cycles`): an overhead record, no FLOPs, no start of its own."""
    if cycles and ledger.prices:
        ledger.charge(op, Charge(kind=ChargeKind.OVERHEAD, cycles=cycles))


def matmul_values(mesh: Mesh, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-core a @ b exactly as `matmul` computes it, uncharged (for kernels that charge the
    multiply themselves, see `charge_matmul`)."""
    return _accumulating_matmul(mesh, a, b)


# torch's CPU batched matmul multiplies matrices of fewer than this many multiply-accumulates
# in a plain loop (per output: sum over k in order, one rounding per product and per add)
NAIVE_BMM_MACS = 400
# ... which `_looped_products` reproduces with k whole-mesh multiplies and adds: faster when
# there are many small matrices (one per core) and k is short
LOOPED_MAX_K = 8
LOOPED_MIN_MATRICES = 4096


def _accumulating_matmul(mesh: Mesh, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the compute dtype; float16 accumulates in float32 unless f16_accumulate."""
    if mesh.mode is Mode.ESTIMATE:
        return meta_matmul(a, b)
    if a.dtype == torch.float32:
        per_line = _line_products(a, b)
        if per_line is not None:
            return per_line
        return _looped_products(a, b) if _loops(a, b) else a @ b
    if a.dtype != torch.float16:
        return a @ b
    if not mesh.f16_accumulate:
        return (a.float() @ b.float()).to(torch.float16)
    # the hardware's order: one rank-1 update per k, rounded to f16 each time
    acc = torch.zeros((*a.shape[:-1], b.shape[-1]), dtype=torch.float16, device=a.device)
    for k in range(a.shape[-1]):
        acc = acc + a[..., k : k + 1] * b[..., k : k + 1, :]
    return acc


def _line_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """Per-core a @ b as one product per line of cores, (m, k) @ (k, cores x n), where every
    core of a line holds the same `a` tile (held once along the other mesh dim: a GEMV's
    replicated input) and `b`'s tiles lie k-major along the line (a matrix scattered from the
    host, `tensor.split_host`). Each output is still one core's k products summed; only the
    summation order inside the library's product may differ in the last bit from a product per
    core. None where the operands are not so arranged."""
    if a.dim() != 4 or b.dim() != 4:
        return None
    for line, other in ((0, 1), (1, 0)):
        if not held_once(a, other):
            continue
        by_line = b.permute(line, 2, other, 3)  # (lines, k, cores of a line, n)
        if not by_line.is_contiguous():
            continue
        lines, k, across, n = by_line.shape
        a_line = once(a, (other,)).squeeze(other)  # (lines or 1, m, k)
        out = (a_line @ by_line.reshape(lines, k, across * n)).reshape(lines, -1, across, n)
        return out.permute(0, 2, 1, 3) if line == 0 else out.permute(2, 0, 1, 3)
    return None


def _loops(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether torch would multiply a @ b as many small matrices in its plain loop (CPU,
    batched operands of one rank) with a short k: `_looped_products` gives its numbers."""
    if a.device.type != "cpu" or b.dtype != a.dtype or a.dim() != b.dim() or a.dim() < 3:
        return False
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    matrices = math.prod(max(x, y) for x, y in zip(a.shape[:-2], b.shape[:-2], strict=True))
    return k <= LOOPED_MAX_K and m * k * n < NAIVE_BMM_MACS and matrices >= LOOPED_MIN_MATRICES


def _looped_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b as torch's plain loop computes it, every matrix at once: the k products
    added in order, each rounded (bitwise its result, `tests/mesh/test_compute.py`)."""
    acc = a[..., 0:1] * b[..., 0:1, :]
    for k in range(1, a.shape[-1]):
        acc = acc + a[..., k : k + 1] * b[..., k : k + 1, :]
    return acc


def matmul(
    mesh: Mesh,
    *,
    a: torch.Tensor,
    b: torch.Tensor,
    ledger: Ledger,
    op: str,
    vector: str = "m",
    accumulate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-core `a @ b` over tiles (rows, cols, ..., m, k) @ (rows, cols, ..., k, n)."""
    out = _accumulating_matmul(mesh, a, b)
    if accumulate is not None:
        out = accumulate + out
    charge_matmul(mesh, ledger, op, a_shape=a.shape, n=b.shape[-1], vector=vector)
    return out


def charge_matmul(
    mesh: Mesh, ledger: Ledger, op: str, *, a_shape: tuple[int, ...], n: int, vector: str = "m"
) -> None:
    """What `matmul` charges for per-core a tiles of `a_shape` (rows, cols, ..., m, k) times
    [k, n]: the roofline of every (..) repetition."""
    if not ledger.prices:
        return
    *batch, m, k = a_shape[2:]
    reps = math.prod(batch) if batch else 1
    cycles = reps * matmul_cycles(mesh.device, m=m, k=k, n=n, vector=vector)
    charge_compute(mesh, ledger, op, cycles=cycles, flops_per_core=reps * MAC_FLOPS * m * k * n)


def elementwise(
    mesh: Mesh,
    fn: Callable[..., torch.Tensor],
    *inputs: torch.Tensor,
    ledger: Ledger,
    op: str,
    flops_per_element: float = 1.0,
    num_elements: int | None = None,
) -> torch.Tensor:
    """Apply `fn` on every core (once per line where the inputs are held once, `replicas`:
    `fn` must round alike whatever the tensor's size, e.g. add, mul; not exp); priced as one
    vector instruction per input-tile pass.

    SRAM traffic: every input element read once, every output element written once.
    """
    out = on_replicas(fn, *inputs)
    if not ledger.prices:
        return out
    n = num_elements if num_elements is not None else math.prod(out.shape[2:])
    cycles = vector_op_cycles(
        mesh.device,
        num_instructions=1,
        length=n,
        flops_per_element=flops_per_element,
        sram_elements_per_element=len(inputs) + 1,
    )
    charge_compute(
        mesh,
        ledger,
        op,
        cycles=cycles,
        flops_per_core=flops_per_element * n,
        sram_bytes_per_core=(len(inputs) + 1) * n * mesh.device.storage_bytes,
    )
    return out
