"""T10's layer plans on a wafer region (reference/t10-ladder-baselines.md §2, §5, §6).

Prefill: every GEMM is `t10_gemm` on a busy square sub-grid of side sqrt(N_T10) (the
"thousands, not millions, of cores" of the paper, a calibrated cap: `T10Constants`), on
position-blind stride rings, a BSP barrier over the region after every superstep (a reduction
tree, `kernels.t10.region_barrier`); operands too big for a core's free SRAM are cut by T10's
rotating pace (N into r_n passes, K into r_k, each pass P supersteps). Q @ K^T
transposes K explicitly first. Decode: WaferLLM's decode layer with each of its 10 allreduces
a direct fan-in to the line's end plus a multicast back; the KV cache is statically
block-partitioned over the request's whole context. Norms and elementwise ops as WaferLLM.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from waferllm.device import Device
from waferllm.errors import SramOverflowError
from waferllm.estimate.systems.common import (
    LayerShapes,
    charge_elementwise,
    estimate_mesh,
    hold_resident,
    meta,
    meta_tiles,
    plan_cost,
)
from waferllm.kernels.t10 import t10_gemm, t10_gemv, t10_load_weights, t10_transpose
from waferllm.mesh.blind_rings import fan_in_reduce
from waferllm.mesh.comm import ReduceAlgorithm, allreduce, broadcast
from waferllm.mesh.compute import matmul
from waferllm.mesh.cost import Ledger, PhaseLedger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.virtual import Mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class T10Constants:
    """T10's fitted constants, one per phase (SPEC.md §8): `busy_cores` N_T10 (prefill) and
    `per_partial_cycles` c_p, the fan-in root's cost per arriving partial (decode)."""

    busy_cores: int
    per_partial_cycles: float


@dataclasses.dataclass(frozen=True)
class Pace:
    """T10's rotating pace: the GEMM runs r_b * r_n * r_k passes of P supersteps each (the
    batch, N and K cut into that many sequential pieces)."""

    r_b: int
    r_n: int
    r_k: int

    @property
    def passes(self) -> int:
        return self.r_b * self.r_n * self.r_k


CROSSBAR_SYNC_CYCLES = 211.0  # a superstep's fixed cost in T10's own model: o_op + o_s (WSE-2)


def t10_pace(*, m: int, k: int, n: int, batch: int, storage_bytes: int, free_bytes: int) -> Pace:
    """T10's choice among the cuts whose per-core tiles fit (`batch` independent products,
    e.g. heads): C chunk b x m x n/r_n, A (m x k/r_k) and B (k/r_k x n/r_n) chunks with
    their receive buffers; of those, the least costly under T10's own distance-free model
    (bytes shifted per superstep + a fixed sync, per pass, per superstep)."""
    s = storage_bytes
    best: tuple[float, Pace] | None = None
    for r_b in range(1, batch + 1):
        b = math.ceil(batch / r_b)
        r_n_min = max(1, math.ceil(b * m * n * s / free_bytes))
        for r_n in range(r_n_min, 4 * r_n_min + 1):
            n_r = math.ceil(n / r_n)
            k_r = min(k, (free_bytes - b * m * n_r * s) // (2 * b * (m + n_r) * s))
            if k_r < 1:
                continue
            pace = Pace(r_b, r_n, math.ceil(k / k_r))
            cost = pace.passes * (b * k_r * (m + n_r) * s / 4 + CROSSBAR_SYNC_CYCLES)
            if best is None or cost < best[0]:
                best = (cost, pace)
        if best is not None:
            return best[1]
    raise SramOverflowError(
        tensor="t10.pace",
        core=(0, 0),
        needed_bytes=(m * math.ceil(n / 2) + 2 * m) * s,
        available_bytes=free_bytes,
        hint="T10's rotating pace cannot cut this GEMM small enough; use more cores",
    )


def _gemm_passes(
    region: Mesh,
    side: int,
    *,
    shape: tuple[int, int, int],
    batch: tuple[int, ...],
    weights: bool,
    ledger: Ledger,
    op: str,
    meshes: list[Mesh],
) -> None:
    """One T10 GEMM (M, K, N) on the side x side busy grid of `region`, r_n * r_k passes."""
    m, k, n = shape
    sub = region.submesh(side, side)
    sub.sram.alloc("resident", region.sram.live_bytes_max)
    s = region.device.storage_bytes
    free = region.device.sram_bytes_per_core - region.sram.live_bytes_max
    heads = math.prod(batch)
    mt, kt, nt = (math.ceil(v / side) for v in (m, k, n))
    pace = t10_pace(m=mt, k=kt, n=nt, batch=heads, storage_bytes=s, free_bytes=free)
    k_pass, n_pass = side * math.ceil(kt / pace.r_k), side * math.ceil(nt / pace.r_n)
    batch = batch and (math.ceil(heads / pace.r_b),)
    a = meta(sub, (*batch, m, k_pass), f"{op}.a", y_dim=len(batch), x_dim=len(batch) + 1)
    if weights:  # stored skewed at load time, like MeshGEMM's
        b = t10_load_weights(sub, _host(k_pass, n_pass), name=f"{op}.w")
    else:
        b = meta(sub, (*batch, k_pass, n_pass), f"{op}.b", y_dim=len(batch), x_dim=len(batch) + 1)
    # BSP (note §5 (1)): each of the r_n * r_k passes runs P supersteps, every one of them
    # closed by a barrier over the whole region (T10 compiles the region as its chip).
    step = Ledger()
    t10_gemm(sub, a=a, b=b, ledger=step, op=op, barrier=region).out.free()
    ledger.extend(step, count=pace.passes)
    meshes.append(sub)


def _host(rows: int, cols: int) -> torch.Tensor:
    """A shape-only host weight (estimate mode reads only its shape)."""
    return torch.empty((rows, cols), device="meta")


def t10_prefill(
    device: Device, grid: tuple[int, int], shapes: LayerShapes, prompt_len: int, c: T10Constants
) -> PhaseLedger:
    """One layer's prefill of `prompt_len` tokens on `grid` (see the module docstring)."""
    region = estimate_mesh(device, grid)
    hold_resident(region, shapes, prompt_len)
    side = max(1, min(grid[0], grid[1], math.isqrt(c.busy_cores)))
    ledger, meshes = Ledger(), [region]
    busy = region.submesh(side, side)
    L, H, Hd = prompt_len, shapes.heads, shapes.head_dim
    rows_per_core = math.ceil(L / side)

    def gemm(shape: tuple[int, int, int], op: str, heads: tuple[int, ...] = ()) -> None:
        """Projections (weights stored skewed) or, with `heads`, attention's products."""
        _gemm_passes(
            region,
            side,
            shape=shape,
            batch=heads,
            weights=not heads,
            op=op,
            ledger=ledger,
            meshes=meshes,
        )

    with ledger.scope("t10"):
        _norm(busy, rows_per_core, math.ceil(shapes.d / side), ledger, "input_norm")
        for name, m, k, n in shapes.projections(L)[:3]:
            gemm((m, k, n), name)
        charge_elementwise(busy, numel_per_core=rows_per_core * 3 * Hd, ledger=ledger, op="rope")
        _transpose_k(busy, shapes, L, ledger)
        gemm((L, Hd, L), "scores", (H,))
        _softmax(busy, H * rows_per_core, math.ceil(L / side), ledger)
        gemm((L, L, Hd), "pv", (H,))
        for name, m, k, n in shapes.projections(L)[3:]:
            gemm((m, k, n), name)
            if name == "o_proj":
                _residual_and_norm(busy, rows_per_core, math.ceil(shapes.d / side), ledger)
        d_tile = rows_per_core * math.ceil(shapes.f / side)
        charge_elementwise(busy, numel_per_core=d_tile, ledger=ledger, op="silu_mul", inputs=2)
        charge_elementwise(
            busy,
            numel_per_core=rows_per_core * math.ceil(shapes.d / side),
            ledger=ledger,
            op="residual",
            inputs=2,
        )
    meshes.append(busy)
    return plan_cost(ledger, meshes)


def _transpose_k(busy: Mesh, shapes: LayerShapes, length: int, ledger: Ledger) -> None:
    """K[kv_heads, L, Hd] -> K^T on the busy grid, in groups of heads whose tile and its
    transpose fit the free SRAM (one after the other)."""
    side, s = busy.rows, busy.device.storage_bytes
    per_head = math.ceil(length / side) * math.ceil(shapes.head_dim / side) * s
    free = busy.device.sram_bytes_per_core - busy.sram.live_bytes_max
    group = max(1, min(shapes.kv_heads, free // (2 * per_head)))
    part = Ledger()
    with busy.sram.scope():
        k = meta(busy, (group, length, shapes.head_dim), "k", y_dim=1, x_dim=2)
        t10_transpose(busy, t=k, ledger=part, op="k_transpose").out.free()
    ledger.extend(part, count=math.ceil(shapes.kv_heads / group))


def _norm(mesh: Mesh, rows: int, cols: int, ledger: Ledger, op: str) -> None:
    """WaferLLM's RMSNorm: local sum of squares, allreduce of one scalar per token along X
    (chain to the middle column and back), scale."""
    charge_elementwise(mesh, numel_per_core=rows * cols, ledger=ledger, op=f"{op}.square")
    allreduce(
        mesh,
        meta_tiles(mesh, rows),
        axis=Axis.X,
        ledger=ledger,
        op=f"{op}.allreduce",
        algorithm=ReduceAlgorithm.PIPELINE,
        root=mesh.cols // 2,
    )
    charge_elementwise(mesh, numel_per_core=rows * cols, ledger=ledger, op=f"{op}.scale")


def _softmax(mesh: Mesh, rows: int, cols: int, ledger: Ledger) -> None:
    """WaferLLM's softmax along X: allreduce-max, exp, allreduce-sum, divide."""
    for step in ("max", "sum"):
        allreduce(
            mesh,
            meta_tiles(mesh, rows),
            axis=Axis.X,
            ledger=ledger,
            op=f"softmax.{step}",
            algorithm=ReduceAlgorithm.PIPELINE,
            root=mesh.cols // 2,
        )
        charge_elementwise(mesh, numel_per_core=rows * cols, ledger=ledger, op=f"softmax.{step}_op")


def _residual_and_norm(mesh: Mesh, rows: int, cols: int, ledger: Ledger) -> None:
    charge_elementwise(mesh, numel_per_core=rows * cols, ledger=ledger, op="residual", inputs=2)
    _norm(mesh, rows, cols, ledger, "post_norm")


# ---- decode -----------------------------------------------------------------------------------
def _fan_in_allreduce(
    mesh: Mesh, numel: int, axis: Axis, ledger: Ledger, op: str, c: T10Constants
) -> None:
    """T10's order-free exchange: fan-in to the line's end core, multicast back."""
    data = meta_tiles(mesh, numel)
    fan_in_reduce(
        mesh,
        data,
        axis=axis,
        root=0,
        ledger=ledger,
        op=f"{op}.fan_in",
        per_partial_cycles=c.per_partial_cycles,
    )
    broadcast(mesh, data, axis=axis, root=0, ledger=ledger, op=f"{op}.bcast")


def t10_decode(
    device: Device, grid: tuple[int, int], shapes: LayerShapes, context: int, c: T10Constants
) -> PhaseLedger:
    """One layer's decode step with a static KV cache of `context` positions (see module)."""
    mesh = estimate_mesh(device, grid)
    rows, cols = grid
    hold_resident(mesh, shapes, context)
    ledger = Ledger()
    d_y = math.ceil(shapes.d / rows)
    s_y = math.ceil(context / rows)  # cached positions per core (sequence split along Y)
    hd_x = math.ceil(shapes.q / cols)  # q's head dims per core (split along X)
    heads_x = math.ceil(shapes.heads / cols)
    with ledger.scope("t10"):
        _decode_norm(mesh, d_y, Axis.Y, ledger, "input_norm", c)
        plan_gemv(mesh, shapes.d, shapes.q + 2 * shapes.kv, Axis.Y, ledger, "qkv", c)
        charge_elementwise(mesh, numel_per_core=hd_x, ledger=ledger, op="rope")
        _local_gemv(mesh, k=hd_x, n=s_y, ledger=ledger, op="scores.local")
        _fan_in_allreduce(mesh, s_y * heads_x, Axis.X, ledger, "scores", c)
        for step in ("max", "sum"):
            charge_elementwise(
                mesh, numel_per_core=s_y * heads_x, ledger=ledger, op=f"softmax.{step}_op"
            )
            _fan_in_allreduce(mesh, heads_x, Axis.Y, ledger, f"softmax.{step}", c)
        _local_gemv(mesh, k=s_y, n=hd_x, ledger=ledger, op="pv.local")
        _fan_in_allreduce(mesh, hd_x, Axis.Y, ledger, "pv", c)
        plan_gemv(mesh, shapes.q, shapes.d, Axis.X, ledger, "o_proj", c)
        charge_elementwise(mesh, numel_per_core=d_y, ledger=ledger, op="residual", inputs=2)
        _decode_norm(mesh, d_y, Axis.Y, ledger, "post_norm", c)
        plan_gemv(mesh, shapes.d, 2 * shapes.f, Axis.Y, ledger, "gate_up", c)
        charge_elementwise(
            mesh, numel_per_core=math.ceil(shapes.f / cols), ledger=ledger, op="silu_mul", inputs=2
        )
        plan_gemv(mesh, shapes.f, shapes.d, Axis.X, ledger, "down_proj", c)
        charge_elementwise(mesh, numel_per_core=d_y, ledger=ledger, op="residual", inputs=2)
    return plan_cost(ledger, [mesh])


def _local_gemv(mesh: Mesh, *, k: int, n: int, ledger: Ledger, op: str) -> None:
    a = meta_tiles(mesh, k)[..., None, :]
    b = meta_tiles(mesh, k * n).reshape(mesh.rows, mesh.cols, k, n)
    matmul(mesh, a=a, b=b, ledger=ledger, op=op, vector="n")


def _decode_norm(
    mesh: Mesh, numel: int, axis: Axis, ledger: Ledger, op: str, c: T10Constants
) -> None:
    charge_elementwise(mesh, numel_per_core=numel, ledger=ledger, op=f"{op}.square")
    _fan_in_allreduce(mesh, 1, axis, ledger, op, c)
    charge_elementwise(mesh, numel_per_core=numel, ledger=ledger, op=f"{op}.scale")


def plan_gemv(
    mesh: Mesh, k: int, n: int, axis: Axis, ledger: Ledger, op: str, c: T10Constants
) -> None:
    """x[1, K] @ W[K, N] reduced along `axis` (W stays; transposed placement for axis X)."""
    along_y = axis is Axis.Y
    with mesh.sram.scope():
        x = meta(
            mesh, (1, k), f"{op}.x", y_dim=1 if along_y else None, x_dim=None if along_y else 1
        )
        w = meta(mesh, (k, n), f"{op}.w_view", y_dim=0 if along_y else 1, x_dim=1 if along_y else 0)
        w.free()  # the weight itself is part of the resident layer
        out = t10_gemv(
            mesh,
            x=x,
            w=w,
            ledger=ledger,
            reduce_axis=axis,
            per_partial_cycles=c.per_partial_cycles,
            op=op,
        )
        out.out.free()
