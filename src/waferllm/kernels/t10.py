"""T10 (SOSP'24) ported to the mesh as the WaferLLM paper ran it (§7): compute-shift GEMM on
position-blind rings, GEMV with a direct fan-in, the explicit transpose its attention needs and
its BSP barrier (reference/t10-ladder-baselines.md §2, §5 (1)-(2)). Same signature as
`gemm.py`/`gemv.py`.

T10 plans with a crossbar cost model (every core one hop from every other), so its rings follow
core IDs, not positions: the ring of a line visits cores 0, s, 2s, ... (stride s coprime to P,
default near P/2, `mesh.blind_rings.default_stride`); `stride=1` is the plain ring (Cannon, T10's
best case). Supersteps are bulk-synchronous: compute, then shift (no overlap), and with a
barrier region every superstep ends with a sync of that region (`region_barrier`).
Legend: P cores per side; m, k, n one core's tile of M, K, N; s storage bytes; W link bytes
per cycle; alpha per hop, beta per relay stage; d, lambda, sigma of the ring step (blind_rings.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.result import Charged, KernelResult
from waferllm.mesh.blind_rings import (
    default_stride,
    fan_in_reduce,
    free_routes,
    permuted_shift,
    stride_position,
    stride_successor,
)
from waferllm.mesh.comm import ReduceAlgorithm, allreduce, broadcast
from waferllm.mesh.compute import matmul
from waferllm.mesh.cost import Ledger, UnpricedLedger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.remote import flows, point_to_point
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh

B_ALIGNED = "t10_b_aligned"
BARRIER_WORDS = 2  # f16 words of a barrier token: one 4-byte wavelet, it carries no data


# ---- ring arithmetic -----------------------------------------------------------------------
def _skew_dst(num: int, stride: int) -> np.ndarray:
    """(lines, P) destinations of Cannon's skew in stride-ring positions: line l (position
    u = pos[l]) rotates back by u places, so core j ends holding block order[(pos[j]+u) % P]."""
    pos = stride_position(num, stride)
    order = np.argsort(pos)
    src_of = order[(pos[None, :] + pos[:, None]) % num]  # src_of[l, j]
    dst = np.empty_like(src_of)
    np.put_along_axis(dst, src_of, np.broadcast_to(np.arange(num), src_of.shape), axis=1)
    return dst


def _step_dst(num: int, stride: int) -> np.ndarray:
    """One superstep: every tile moves one ring place back (core c -> c - s mod P)."""
    return stride_successor(num, (num - stride) % num if num > 1 else 0)


def _square(mesh: Mesh, op: str) -> int:
    if mesh.rows != mesh.cols:
        raise WaferError(
            f"{op}: T10's 2D split runs on a square grid, got {mesh.rows}x{mesh.cols}; "
            f"use a {min(mesh.shape)}x{min(mesh.shape)} region"
        )
    return mesh.rows


def _check_split(t: DistTensor, mesh: Mesh, op: str, role: str, tags: set[str]) -> None:
    nd = len(t.layout.shape)
    if t.mesh is not mesh or (t.layout.y_dim, t.layout.x_dim) != (nd - 2, nd - 1):
        raise WaferError(f"{op}: {role} must live on this mesh split by its last two dims")
    if t.layout.tag not in tags:
        raise WaferError(f"{op}: {role} has layout tag {t.layout.tag!r}, expected {tags}")


# ---- GEMM ----------------------------------------------------------------------------------
def t10_load_weights(
    mesh: Mesh, host_b: torch.Tensor, *, stride: int | None = None, name: str = "b"
) -> DistTensor:
    """Store B[K, N] pre-skewed along Y for `t10_gemm` (T10's sub-tensor placement at load
    time, untimed, as MeshGEMM's weights)."""
    num = _square(mesh, "t10_load_weights")
    stride = default_stride(num) if stride is None else stride
    nd = host_b.dim()
    plain = mesh.scatter(host_b, Layout(tuple(host_b.shape), y_dim=nd - 2, x_dim=nd - 1), name)
    src_of = np.argsort(_skew_dst(num, stride), axis=1)  # (columns, P): who each core reads
    index = torch.as_tensor(src_of.T, device=plain.data.device)  # (rows, cols)
    index = index.reshape(*index.shape, *([1] * (plain.data.dim() - 2))).expand_as(plain.data)
    skewed = torch.gather(plain.data, 0, index)
    return plain.replace(skewed, plain.layout.with_tag(B_ALIGNED))


def t10_gemm(
    mesh: Mesh,
    *,
    a: DistTensor,
    b: DistTensor,
    ledger: Ledger,
    op: str = "t10",
    stride: int | None = None,
    barrier: Mesh | None = None,
) -> KernelResult:
    """T10's compute-shift GEMM (a 2D split, K rotated with pace 1) on a stride-s ring.

    Sharding: A[M_y, K_x] @ B[K_y, N_x] -> C[M_y, N_x] on a P x P mesh; tiles a [m, k],
    b [k, n], c [m, n] (+ leading batch dims that broadcast). K tiles must match (pad K to a
    multiple of P). Schedule: skew A along X (timed, tag "align") and B along Y unless
    `t10_load_weights` stored it skewed; then P supersteps of {c += a @ b; shift a one ring
    place along X and b along Y, concurrently}, compute and shift one after the other (BSP).
    With `barrier`, every superstep ends with `region_barrier` over that region.
    Cost (note §5 (1), pace r = 1; o_op the op overhead, o_s the step overhead):
      align: per skewed operand, one shift: max hop distance * alpha + relays * beta +
             busiest link / W
      steps: P * (T_mm(m, k, n) + o_op + d*alpha + sigma*beta + lambda*max(m*k, k*n)*s/W + o_s
                  [+ T_bar of the barrier region, `region_barrier`])
      with d = max(s, P-s), lambda = min(s, P-s), sigma = ceil(d/g) - 1 when relayed
      (g = free routes / 2 - 2 per axis).
    Routes: transit + 2 per axis direct (about P); relayed: all free routes, split by axis,
    after the barrier's chain and multicast colours (configured on this mesh too).
    SRAM: a, b, their receive buffers, c.
    """
    num = _square(mesh, op)
    stride = default_stride(num) if stride is None else stride
    _check_split(a, mesh, op, "A", {""})
    _check_split(b, mesh, op, "B", {"", B_ALIGNED})
    if a.data.shape[-1] != b.data.shape[-2] or a.layout.shape[-1] != b.layout.shape[-2]:
        raise WaferError(
            f"{op}: A {a.layout.shape} and B {b.layout.shape} must agree in K and K must be "
            f"a multiple of {num} (pad it)"
        )
    batch = tuple(np.broadcast_shapes(a.layout.shape[:-2], b.layout.shape[:-2]))
    m, n = a.layout.shape[-2], b.layout.shape[-1]
    out_layout = Layout((*batch, m, n), y_dim=len(batch), x_dim=len(batch) + 1)
    with Charged(ledger) as charged, ledger.scope(op):
        c_shape = (*batch, a.data.shape[-2], b.data.shape[-1])
        out_key = mesh.sram.alloc(f"{op}.c", math.prod(c_shape) * mesh.device.storage_bytes)
        with mesh.sram.scope():
            mesh.sram.alloc(f"{op}.recv", (a.tile_numel + b.tile_numel) * mesh.device.storage_bytes)
            if barrier is not None:  # its colours sit on these cores' routers too
                region_barrier(mesh, ledger=UnpricedLedger())
            budget = _ring_budget(mesh)
            a_data, b_data = _skew(mesh, a, b, stride, ledger, budget)
            acc = torch.zeros((num, num, *c_shape), dtype=torch.float32, device=a.data.device)
            step = _step_dst(num, stride)
            for _ in mesh.steps(num, ledger):
                acc.add_(matmul(mesh, a=a_data, b=b_data, ledger=ledger, op="mac"))
                with ledger.overlap("shift", step_overhead_cycles=mesh.device.step_overhead_cycles):
                    a_data = _shift(mesh, a_data, Axis.X, step, ledger, "shift_a", budget)
                    b_data = _shift(mesh, b_data, Axis.Y, step, ledger, "shift_b", budget)
                if barrier is not None:
                    region_barrier(barrier, ledger=ledger)
    c = DistTensor(acc.to(mesh.compute_dtype), out_layout, mesh, f"{op}.c", out_key)
    return KernelResult(out=c, records=charged.records)


def region_barrier(region: Mesh, *, ledger: Ledger, op: str = "barrier") -> None:
    """T10's BSP sync on the mesh: every core of `region` must have finished the superstep
    before any starts the next exchange. The platform's own allreduce (Cerebras' pipeline:
    a forward-add chain to the root, then a multicast back) of one token, along X (every row
    at once), then along Y; its root is core 0, the region's corner (T10 is position-blind:
    the first core ID is the master). A reduction tree, so it costs about the region's side,
    not its core count (no token visits every core one after the other).

    Cost, per axis of P cores: reduce (P-1)*alpha + (P-2)*beta + 4/W + o_op, multicast back
    (P-1)*alpha + 4/W + o_op (`comm.allreduce`, pipeline, root 0). Routes: the chain's and the
    multicast's, per axis.
    """
    token = torch.empty((region.rows, region.cols, BARRIER_WORDS), device="meta")
    for axis in (Axis.X, Axis.Y):
        allreduce(
            region,
            token,
            axis=axis,
            ledger=ledger,
            op=f"{op}.{axis.value}",
            algorithm=ReduceAlgorithm.PIPELINE,
            root=0,
        )


def _ring_budget(mesh: Mesh) -> int:
    """Routes each axis's ring may use: half of what is free, counting the rings' own routes
    when an earlier call of this program configured them already."""
    own = sum(int(np.max(mesh.routes.sets.get(f"t10_{a.value}_ring", 0))) for a in Axis)
    return (free_routes(mesh) + own) // 2


def _shift(
    mesh: Mesh,
    data: torch.Tensor,
    axis: Axis,
    dst: np.ndarray,
    ledger: Ledger,
    op: str,
    budget: int,
) -> torch.Tensor:
    """A permutation along `axis` on the axis's ring colours (`budget` routes at most)."""
    return permuted_shift(
        mesh,
        data,
        axis=axis,
        dst=dst,
        ledger=ledger,
        op=op,
        route_name=f"t10_{axis.value}_ring",
        route_budget=budget,
    )


def _skew(
    mesh: Mesh, a: DistTensor, b: DistTensor, stride: int, ledger: Ledger, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cannon's skew in stride-ring positions: A along X always, B along Y unless stored
    skewed; the two at the same time, tag "align"."""
    num = mesh.rows
    dst = _skew_dst(num, stride)
    b_data = b.data
    with ledger.tag("align"), ledger.overlap("align"):
        a_data = _shift(mesh, a.data, Axis.X, dst, ledger, "align_a", budget)
        if not b.layout.tag:
            b_data = _shift(mesh, b.data, Axis.Y, dst, ledger, "align_b", budget)
    return a_data, b_data


def t10_transpose(
    mesh: Mesh, *, t: DistTensor, ledger: Ledger, op: str = "transpose"
) -> KernelResult:
    """X[R_y, C_x] -> X^T[C_y, R_x] on a P x P mesh: core (y, x) sends its tile to (x, y),
    XY-routed (T10 has no dist-GEMM-T: K is transposed before Q @ K^T). Cost: the corner
    flows' 2(P-1) hops * alpha + relays * beta + the busiest link's tiles * tile / W (up to
    P-1 tiles through the links next to the diagonal) + o_op.
    """
    num = _square(mesh, op)
    _check_split(t, mesh, op, "the operand", {""})
    y, x = np.meshgrid(np.arange(num), np.arange(num), indexing="ij")
    with Charged(ledger) as charged:
        point_to_point(
            mesh,
            flows((y, x), (x, y), t.tile_bytes),
            ledger=ledger,
            op=op,
            route_name="t10_transpose",
        )
    data = t.data.transpose(0, 1).transpose(-1, -2).contiguous()
    shape = (*t.layout.shape[:-2], t.layout.shape[-1], t.layout.shape[-2])
    out = mesh.register(
        data, Layout(shape, y_dim=len(shape) - 2, x_dim=len(shape) - 1), f"{op}.out"
    )
    return KernelResult(out=out, records=charged.records)


# ---- GEMV ----------------------------------------------------------------------------------
def t10_gemv(
    mesh: Mesh,
    *,
    x: DistTensor,
    w: DistTensor,
    ledger: Ledger,
    reduce_axis: Axis = Axis.Y,
    per_partial_cycles: float,
    op: str = "t10_gemv",
) -> KernelResult:
    """T10's GEMV: W tiles stay, x replicated; the partials of a line go straight to the
    line's end core, which adds them in arrival order, then multicasts the sum back.

    Sharding (reduce_axis=Y): x[*T, K_y] (replicated along X) @ W[K_y, N_x] -> y[*T, N_x]
    (replicated along Y); reduce_axis=X transposes the placement, as `meshgemv`.
    Cost (note §5 (2), n = T*Nt*s bytes of a partial, c_p = `per_partial_cycles`):
      T_mv + o_op + (P-1)*alpha + (P-1)*max(n/W, c_p) + o_op + (P-1)*alpha + n/W + o_op
    Routes: fan-in 1 + broadcast 2 per axis.
    """
    other = reduce_axis.other
    xl, wl = x.layout, w.layout
    if (
        x.mesh is not mesh
        or w.mesh is not mesh
        or xl.dim_of(reduce_axis) != len(xl.shape) - 1
        or xl.dim_of(other) is not None
        or (wl.dim_of(reduce_axis), wl.dim_of(other)) != (0, 1)
        or wl.shape[0] != xl.shape[-1]
    ):
        raise WaferError(
            f"{op}: x[*T, K] must be split along {reduce_axis.value} and replicated along "
            f"{other.value}, W[K, N] split K along {reduce_axis.value}, N along {other.value}"
        )
    lead = xl.shape[:-1]
    rows, cols = mesh.shape
    with Charged(ledger) as charged:
        x_tile = x.data.reshape(rows, cols, math.prod(lead), x.data.shape[-1])
        partial = matmul(mesh, a=x_tile, b=w.values(), ledger=ledger, op=f"{op}.local", vector="n")
        line = fan_in_reduce(
            mesh,
            partial,
            axis=reduce_axis,
            root=0,
            ledger=ledger,
            op=f"{op}.fan_in",
            per_partial_cycles=per_partial_cycles,
        )
        full = line.expand_as(partial).contiguous()
        total = broadcast(mesh, full, axis=reduce_axis, root=0, ledger=ledger, op=f"{op}.bcast")
    split = len(lead)  # y[*T, N]: N split along the axis that was not reduced
    layout = Layout(
        (*lead, wl.shape[1]),
        y_dim=split if reduce_axis is Axis.X else None,
        x_dim=split if reduce_axis is Axis.Y else None,
    )
    out = mesh.register(total.reshape(rows, cols, *lead, total.shape[-1]), layout, f"{op}.out")
    return KernelResult(out=out, records=charged.records)
