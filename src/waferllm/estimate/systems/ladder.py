"""Ladder's layer plans on a wafer region (reference/t10-ladder-baselines.md §3, §5, §6).

Prefill: every projection is Ladder's tile GEMM (128 x 128 output tiles, K chunks fetched by
collectives through S = span * N_c cores); attention's Q @ K^T and P @ V run every head's
tiles at once. Decode: Ladder's GEMV (64 features per core, chunks of 16, collectives along
a line of S = span * cols cores) for the seven projections and both attention products. The
KV cache is striped over the region with the weights (unified memory, no concatenation).
Norms and softmax as WaferLLM does them (K-tree allreduces of one scalar per row).
"""

from __future__ import annotations

import dataclasses
import math

from waferllm.device import Device
from waferllm.estimate.systems.common import (
    LayerShapes,
    charge_elementwise,
    estimate_mesh,
    hold_resident,
    meta_tiles,
    plan_cost,
)
from waferllm.kernels.ladder import (
    GEMV_CHUNK,
    GEMV_FEATURES_PER_CORE,
    LadderTiles,
    charge_tile_loop,
    gemm_tiles,
)
from waferllm.mesh.comm import ReduceAlgorithm, allreduce
from waferllm.mesh.compute import matmul_cycles
from waferllm.mesh.cost import Ledger, PhaseLedger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.virtual import Mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class LadderConstants:
    """Ladder's fitted constants, one per phase (SPEC.md §8): the share of the region a
    prefill collective spans (`prefill_span`, of N_c) and of a line a decode one spans
    (`decode_span`, of the columns): the least certain part of the port (note §6.8)."""

    prefill_span: float
    decode_span: float


def _gemm(
    mesh: Mesh, *, shape: tuple[int, int, int], heads: int, span: float, ledger: Ledger, op: str
) -> None:
    """`heads` independent (M, K, N) tile GEMMs sharing the region's cores (one program)."""
    m, k, n = shape
    tiles = gemm_tiles(mesh, m=m, k=k, n=n)
    tiles = dataclasses.replace(tiles, num_active=tiles.num_active * heads)
    s = mesh.device.storage_bytes
    loads = (("load_a", tiles.t_m * tiles.t_k * s), ("load_b", tiles.t_k * tiles.t_n * s))
    with ledger.scope(op), mesh.sram.scope():
        charge_tile_loop(
            mesh,
            tiles=tiles,
            m=m,
            k=k,
            n=n * heads,
            loads=loads,
            span=max(2, round(span * mesh.num_cores)),
            compute_cycles=matmul_cycles(mesh.device, m=tiles.t_m, k=tiles.t_k, n=tiles.t_n),
            flops=2 * m * k * n * heads,
            ledger=ledger,
        )


def plan_gemv(
    mesh: Mesh, *, k: int, n: int, heads: int, span: float, ledger: Ledger, op: str
) -> None:
    """`heads` independent x[1, K] @ W[K, N] GEMVs at once (Ladder's GEMV, one program)."""
    n_b = min(GEMV_FEATURES_PER_CORE, n)
    tiles = LadderTiles(1, n_b, min(GEMV_CHUNK, k), -(-n // n_b) * heads)
    s = mesh.device.storage_bytes
    with ledger.scope(op), mesh.sram.scope():
        charge_tile_loop(
            mesh,
            tiles=tiles,
            m=1,
            k=k,
            n=n * heads,
            loads=(("load", (1 + n_b) * tiles.t_k * s),),
            span=max(2, round(span * mesh.cols)),
            compute_cycles=matmul_cycles(mesh.device, m=1, k=tiles.t_k, n=n_b, vector="n"),
            flops=2 * k * n * heads,
            ledger=ledger,
        )


def _row_allreduce(mesh: Mesh, rows: int, ledger: Ledger, op: str) -> None:
    """WaferLLM's reduction of one scalar per row: a K-tree allreduce along X."""
    allreduce(
        mesh,
        meta_tiles(mesh, rows),
        axis=Axis.X,
        ledger=ledger,
        op=op,
        algorithm=ReduceAlgorithm.KTREE,
    )


def _norm(mesh: Mesh, *, rows: int, numel: int, ledger: Ledger, op: str) -> None:
    charge_elementwise(mesh, numel_per_core=numel, ledger=ledger, op=f"{op}.square")
    _row_allreduce(mesh, rows, ledger, f"{op}.allreduce")
    charge_elementwise(mesh, numel_per_core=numel, ledger=ledger, op=f"{op}.scale")


def _softmax(mesh: Mesh, *, rows: int, numel: int, ledger: Ledger) -> None:
    for step in ("max", "sum"):
        _row_allreduce(mesh, rows, ledger, f"softmax.{step}")
        charge_elementwise(mesh, numel_per_core=numel, ledger=ledger, op=f"softmax.{step}_op")


def ladder_prefill(
    device: Device, grid: tuple[int, int], shapes: LayerShapes, prompt_len: int, c: LadderConstants
) -> PhaseLedger:
    """One layer's prefill of `prompt_len` tokens on `grid` (see the module docstring)."""
    mesh = estimate_mesh(device, grid)
    hold_resident(mesh, shapes, prompt_len)
    ledger = Ledger()
    cores, L = mesh.num_cores, prompt_len
    rows = math.ceil(L / mesh.rows)
    act = math.ceil(L * shapes.d / cores)
    span = c.prefill_span
    with ledger.scope("ladder"):
        _norm(mesh, rows=rows, numel=act, ledger=ledger, op="input_norm")
        for name, m, k, n in shapes.projections(L)[:3]:
            _gemm(mesh, shape=(m, k, n), heads=1, span=span, ledger=ledger, op=name)
        charge_elementwise(
            mesh, numel_per_core=math.ceil(L * shapes.q / cores), ledger=ledger, op="rope"
        )
        _gemm(
            mesh,
            shape=(L, shapes.head_dim, L),
            heads=shapes.heads,
            span=span,
            ledger=ledger,
            op="scores",
        )
        scores = math.ceil(shapes.heads * L * L / cores)
        _softmax(mesh, rows=shapes.heads * rows, numel=scores, ledger=ledger)
        _gemm(
            mesh,
            shape=(L, L, shapes.head_dim),
            heads=shapes.heads,
            span=span,
            ledger=ledger,
            op="pv",
        )
        for name, m, k, n in shapes.projections(L)[3:]:
            _gemm(mesh, shape=(m, k, n), heads=1, span=span, ledger=ledger, op=name)
            if name == "o_proj":
                charge_elementwise(mesh, numel_per_core=act, ledger=ledger, op="residual", inputs=2)
                _norm(mesh, rows=rows, numel=act, ledger=ledger, op="post_norm")
        charge_elementwise(
            mesh,
            numel_per_core=math.ceil(L * shapes.f / cores),
            ledger=ledger,
            op="silu_mul",
            inputs=2,
        )
        charge_elementwise(mesh, numel_per_core=act, ledger=ledger, op="residual", inputs=2)
    return plan_cost(ledger, [mesh])


def ladder_decode(
    device: Device, grid: tuple[int, int], shapes: LayerShapes, context: int, c: LadderConstants
) -> PhaseLedger:
    """One layer's decode step over `context` cached positions (see the module docstring)."""
    mesh = estimate_mesh(device, grid)
    hold_resident(mesh, shapes, context)
    ledger = Ledger()
    span = c.decode_span
    vec = math.ceil(shapes.d / mesh.num_cores)
    with ledger.scope("ladder"):
        _norm(mesh, rows=1, numel=vec, ledger=ledger, op="input_norm")
        for name, _, k, n in shapes.projections(1)[:3]:
            plan_gemv(mesh, k=k, n=n, heads=1, op=name, span=span, ledger=ledger)
        charge_elementwise(mesh, numel_per_core=vec, ledger=ledger, op="rope")
        plan_gemv(
            mesh,
            k=shapes.head_dim,
            n=context,
            heads=shapes.heads,
            op="scores",
            span=span,
            ledger=ledger,
        )
        _softmax(mesh, rows=shapes.heads, numel=vec, ledger=ledger)
        plan_gemv(
            mesh,
            k=context,
            n=shapes.head_dim,
            heads=shapes.heads,
            op="pv",
            span=span,
            ledger=ledger,
        )
        for name, _, k, n in shapes.projections(1)[3:]:
            plan_gemv(mesh, k=k, n=n, heads=1, op=name, span=span, ledger=ledger)
            if name == "o_proj":
                charge_elementwise(mesh, numel_per_core=vec, ledger=ledger, op="residual", inputs=2)
                _norm(mesh, rows=1, numel=vec, ledger=ledger, op="post_norm")
        charge_elementwise(mesh, numel_per_core=vec, ledger=ledger, op="silu_mul", inputs=2)
        charge_elementwise(mesh, numel_per_core=vec, ledger=ledger, op="residual", inputs=2)
    return plan_cost(ledger, [mesh])
