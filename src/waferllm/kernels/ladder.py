"""Ladder (OSDI'24) ported to the mesh as the WaferLLM paper ran it (§7, §9): the wafer's SRAM
as one unified memory, GPU-style tile-based load-compute-store (reference/t10-ladder-baselines.md
§3, §5 (3)-(4)). Same signature as `gemm.py`/`gemv.py`.

Every tensor is striped in equal contiguous chunks over the cores in row-major ID order. A core
computes one output tile, walking K in chunks; each chunk's operands are fetched by a blocking
collective that spans the cores the data may sit on (a stream through S cores, `snake_chain`):
S = the region for GEMM operands, one line in decode. Every active core's collective crosses
the same routers at once, so they are relayed (half the free routes go to the loads, half to
the store). At the end the tile is stored to its owners. Numerics run the same tile schedule
(chunk by chunk, every tile at once).
Legend: t_m, t_n, t_k the tile and chunk; N_L active cores; N_c the region's cores; S span.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from waferllm.errors import SramOverflowError, WaferError
from waferllm.kernels.result import Charged, KernelResult
from waferllm.mesh.blind_rings import free_routes
from waferllm.mesh.compute import charge_compute, matmul_cycles
from waferllm.mesh.cost import Ledger
from waferllm.mesh.remote import Flows, flows, point_to_point, snake_chain
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode

GPU_TILE = 128  # Ladder's output tile side (tensor-core friendly, LadderPolicy)
GEMV_FEATURES_PER_CORE = 64  # n_b: output features one core owns in decode (note §5 (4))
GEMV_CHUNK = 16  # t_k of a GEMV chunk (one MMA k-step)
STORE = "ladder_store"  # the route set of the tiles' stores


@dataclasses.dataclass(frozen=True)
class LadderTiles:
    """One active core's output tile t_m x t_n and K chunk t_k, and how many cores work."""

    t_m: int
    t_n: int
    t_k: int
    num_active: int  # N_L = ceil(M/t_m) * ceil(N/t_n)

    def chunks(self, k: int) -> int:
        return -(-k // self.t_k)


def gemm_tiles(mesh: Mesh, *, m: int, k: int, n: int, tile: int = GPU_TILE) -> LadderTiles:
    """128 x 128 tiles (shrunk to the matrix), t_k the largest chunk whose double-buffered A
    and B chunks fit beside the C tile in the core's free SRAM (16 on an empty WSE-2 core)."""
    s = mesh.device.storage_bytes
    free = mesh.device.sram_bytes_per_core - mesh.sram.live_bytes_max
    t_m, t_n = min(tile, m), min(tile, n)
    t_k = (free - t_m * t_n * s) // (2 * (t_m + t_n) * s)
    if t_k < 1:
        raise SramOverflowError(
            tensor="ladder.c_tile",
            core=mesh.origin,
            needed_bytes=t_m * t_n * s + 2 * (t_m + t_n) * s,
            available_bytes=free,
            hint="Ladder's output tile and one K chunk do not fit",
        )
    return LadderTiles(t_m, t_n, min(t_k, k), -(-m // t_m) * -(-n // t_n))


def _host(t: DistTensor) -> torch.Tensor:
    return t.mesh.gather(t)


def _chunked_product(
    a: torch.Tensor, b: torch.Tensor, tiles: LadderTiles, k: int, dtype: torch.dtype
) -> torch.Tensor:
    """C = A @ B as Ladder's cores compute it: every tile accumulates chunk after chunk."""
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    for k0 in range(0, k, tiles.t_k):
        acc += a[:, k0 : k0 + tiles.t_k].float() @ b[k0 : k0 + tiles.t_k].float()
    return acc.to(dtype)


def _store(mesh: Mesh, *, tiles: LadderTiles, m: int, n: int, ledger: Ledger, op: str) -> None:
    """Every active core writes its C tile to the core owning the tile's first element under
    the row-major striping (one concurrent set of XY-routed flows per wave)."""
    flows_key = (mesh.device.storage_bytes, mesh.shape, tiles, m, n)
    f = _store_flows(*flows_key)
    point_to_point(mesh, f, ledger=ledger, op=op, route_name=STORE, cache_key=("ladder", flows_key))


@functools.lru_cache(maxsize=256)
def _store_flows(
    storage_bytes: int, shape: tuple[int, int], tiles: LadderTiles, m: int, n: int
) -> Flows:
    """The store's flows (cached: they depend on shapes only)."""
    rows, cols = shape
    cores = rows * cols
    ids = np.arange(min(tiles.num_active, cores))
    tiles_n = -(-n // tiles.t_n)
    first = (ids // tiles_n) * tiles.t_m * n + (ids % tiles_n) * tiles.t_n
    owner = np.minimum(first // -(-(m * n) // cores), cores - 1)
    nbytes = tiles.t_m * tiles.t_n * storage_bytes
    return flows(np.divmod(ids, cols), np.divmod(owner, cols), nbytes)


def ladder_gemm(
    mesh: Mesh,
    *,
    a: DistTensor,
    b: DistTensor,
    ledger: Ledger,
    op: str = "ladder",
    span_fraction: float = 1.0,
) -> KernelResult:
    """Ladder's tile-based GEMM on unified memory.

    Sharding: A[M, K] @ B[K, N] -> C[M_y, N_x] (inputs in any layout: unified memory).
    Schedule: N_L = ceil(M/t_m) * ceil(N/t_n) active cores, one output tile each, in
    ceil(N_L/N_c) waves; per K chunk: load the A chunk (t_m x t_k), then the B chunk
    (t_k x t_n), each by a collective through S = span_fraction * N_c cores, then multiply;
    after the last chunk store the tile to its owners.
    Cost (note §5 (3), loads overlapped with the multiply: the chunks are double-buffered):
      waves * (ceil(K/t_k) * [max(T_mm(t_m, t_k, t_n), 2*T_coll(S)) + o_s] + T_store),
      T_coll(S) = (S-1)*alpha + sigma*beta + chunk bytes/W, sigma = ceil((S-1)/(F/2-2)) - 1
      the relays of N_L concurrent collectives on half of the F free routes,
      T_store = XY-routed tiles to owners (longest flow's hops, owner ramps).
    Routes: chain 2 + the store's flows (relayed when over budget). SRAM: the C tile and
    double-buffered A and B chunks (this fixes t_k).
    """
    if len(a.layout.shape) != 2 or len(b.layout.shape) != 2:
        raise WaferError(f"{op}: Ladder's GEMM takes 2D operands A[M, K] and B[K, N]")
    (m, k), (k_b, n) = a.layout.shape, b.layout.shape
    if k != k_b:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    tiles = gemm_tiles(mesh, m=m, k=k, n=n)
    s_bytes = mesh.device.storage_bytes
    loads = (
        ("load_a", tiles.t_m * tiles.t_k * s_bytes),
        ("load_b", tiles.t_k * tiles.t_n * s_bytes),
    )
    span = max(2, round(span_fraction * mesh.num_cores))
    with Charged(ledger) as charged, ledger.scope(op), mesh.sram.scope():
        compute = matmul_cycles(mesh.device, m=tiles.t_m, k=tiles.t_k, n=tiles.t_n)
        charge_tile_loop(
            mesh,
            tiles=tiles,
            k=k,
            n=n,
            m=m,
            loads=loads,
            span=span,
            compute_cycles=compute,
            flops=2 * m * k * n,
            ledger=ledger,
        )
    if mesh.mode is Mode.FUNCTIONAL:
        host = _chunked_product(_host(a), _host(b), tiles, k, mesh.compute_dtype)
    else:
        host = torch.empty((m, n), device="meta")
    out = mesh.scatter(host, Layout((m, n), y_dim=0, x_dim=1), f"{op}.c")
    return KernelResult(out=out, records=charged.records)


def charge_tile_loop(
    mesh: Mesh,
    *,
    tiles: LadderTiles,
    m: int,
    k: int,
    n: int,
    loads: tuple[tuple[str, int], ...],
    span: int,
    compute_cycles: float,
    flops: int,
    ledger: Ledger,
) -> None:
    """The ledger of Ladder's load-compute-store loop: per wave, ceil(K/t_k) identical chunks
    of {the loads of chunk i+1, one chain through `span` cores after the other, while chunk
    i is multiplied (double-buffered)}, then the store. The working buffers (C tile or
    accumulators, double-buffered chunks) are charged to SRAM."""
    cores = mesh.num_cores
    waves = -(-tiles.num_active // cores)
    chunk_bytes = sum(nbytes for _, nbytes in loads)
    mesh.sram.alloc(
        "ladder.tiles", tiles.t_m * tiles.t_n * mesh.device.storage_bytes + 2 * chunk_bytes
    )
    chunks = tiles.chunks(k)
    overhead = mesh.device.step_overhead_cycles
    budget = _load_budget(mesh)
    streams = min(tiles.num_active, cores)
    with ledger.repeat(waves):
        with ledger.repeat(chunks), ledger.overlap("chunk", step_overhead_cycles=overhead):
            for phase, (name, nbytes) in enumerate(loads):
                snake_chain(
                    mesh,
                    nbytes=nbytes,
                    ledger=ledger,
                    op=name,
                    cores=span,
                    streams=streams,
                    route_budget=budget,
                    phase=phase,
                )
            charge_compute(
                mesh,
                ledger,
                "mac",
                cycles=compute_cycles,
                flops_per_core=flops / cores / chunks / waves,
            )
        _store(mesh, tiles=tiles, m=m, n=n, ledger=ledger, op="store")


def _load_budget(mesh: Mesh) -> int:
    """Routes the load collectives may use: half of what is free, counting the loads' and the
    store's own sets when an earlier call of this program configured them already."""
    own = sum(int(np.max(mesh.routes.sets.get(name, 0))) for name in ("snake_chain", STORE))
    return (free_routes(mesh) + own) // 2


def ladder_gemv(
    mesh: Mesh,
    *,
    x: DistTensor,
    w: DistTensor,
    ledger: Ledger,
    op: str = "ladder_gemv",
    span_fraction: float = 1.0,
    features_per_core: int = GEMV_FEATURES_PER_CORE,
    chunk: int = GEMV_CHUNK,
) -> KernelResult:
    """Ladder's GEMV (decode): a core owns n_b output features and walks K in chunks of t_k,
    loading the x chunk and its W rows together by one collective along its line
    (S = span_fraction * cols: the <= N/n_b active cores, their x chunk and W rows sit in one
    row), then multiply-accumulates; at the end y is stored to its owners.

    Sharding: x[*T, K] @ W[K, N] -> y[*T, N_x] (inputs in any layout: unified memory).
    Cost (note §5 (4), overlapped as the GEMM):
      waves * (ceil(K/t_k) * [max(T_mv(t_k, n_b), T_coll(S)) + o_s] + T_store),
      T_mv = T*t_k instructions of length n_b, T_coll(S) = (S-1)*alpha + sigma*beta
      + (T + n_b)*t_k*s/W (sigma as `ladder_gemm`: N/n_b concurrent collectives).
    Routes: chain 2 + the store's flows. SRAM: accumulators and double-buffered chunks.
    """
    if not x.layout.shape or len(w.layout.shape) != 2:
        raise WaferError(f"{op}: Ladder's GEMV takes x[*T, K] and W[K, N]")
    *lead, k = x.layout.shape
    k_w, n = w.layout.shape
    t = math.prod(lead)
    if k != k_w:
        raise WaferError(f"{op}: x {x.layout.shape} and W {w.layout.shape} differ in K")
    n_b = min(features_per_core, n)
    tiles = LadderTiles(t, n_b, min(chunk, k), -(-n // n_b))
    s_bytes = mesh.device.storage_bytes
    span = max(2, round(span_fraction * mesh.cols))
    loads = (("load", (t + n_b) * tiles.t_k * s_bytes),)
    with Charged(ledger) as charged, ledger.scope(op), mesh.sram.scope():
        compute = matmul_cycles(mesh.device, m=t, k=tiles.t_k, n=n_b, vector="n")
        charge_tile_loop(
            mesh,
            tiles=tiles,
            m=t,
            k=k,
            n=n,
            loads=loads,
            span=span,
            compute_cycles=compute,
            flops=2 * t * k * n,
            ledger=ledger,
        )
    if mesh.mode is Mode.FUNCTIONAL:
        host = _chunked_product(_host(x).reshape(t, k), _host(w), tiles, k, mesh.compute_dtype)
    else:
        host = torch.empty((t, n), device="meta")
    shape = (*lead, n)
    out = mesh.scatter(host.reshape(shape), Layout(shape, x_dim=len(lead)), f"{op}.out")
    return KernelResult(out=out, records=charged.records)
