"""Distributed GEMV on the mesh: MeshGEMV (K-tree allreduce) and its two baselines.

Every variant is the same local GEMV followed by an allreduce of the partial sums along the
axis the input vector is split on; only the allreduce differs (paper §6, SPEC.md §4, §10.5).
`registry.GEMV_KERNELS` maps their names to them; attention is in `attention.py`, the other
transformer ops in norm, softmax, rope and elementwise; the dense oracles in `reference.py`;
the allreduced outputs made without per-core partials in `gemv_sums.py`.
Legend: T tokens (a leading batch of vectors), K reduced (input) dim, N output dim;
P cores along the reduce axis, Q along the other axis; Kt = ceil(K/P), Nt = ceil(N/Q).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.kernels.dequant import charge_dequant, dequant_scratch_bytes
from waferllm.kernels.gemv_sums import estimated_sums, summed_products
from waferllm.kernels.result import Charged, KernelResult
from waferllm.mesh.comm import ReduceAlgorithm, allreduce, charge_allreduce, reduce
from waferllm.mesh.compute import charge_matmul, matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.ktree import allreduce_latency_cycles, best_fanouts
from waferllm.mesh.replicas import on_replicas
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode


# ---- the K-tree's default shape -----------------------------------------------------------------
def ktree_latency_cycles(device: Device, num: int, fanouts: tuple[int, ...]) -> float:
    """Latency term of a K-tree allreduce on `num` cores: the reduce's critical message
    (hops * alpha + stages * beta, from the cached plan) plus the broadcast's farthest hop."""
    return allreduce_latency_cycles(
        num, fanouts, device.hop_latency_cycles, device.stage_latency_cycles
    )


def best_ktree_fanouts(device: Device, num: int) -> tuple[int, ...]:
    """Default K = 2 tree for an axis of `num` cores (SPEC.md §10.5): fan-outs (b1, G) with
    G = ceil(P/b1) first-level groups, b1 searched from sqrt(P)/2 to 2 sqrt(P), minimising
    `ktree_latency_cycles`; ties go to G nearest sqrt(P). The size term is the same for every
    candidate (each link carries each stream once), so it does not enter. Cached per axis size
    in `mesh.ktree.best_fanouts`; axes of 2-3 cores use a single chain to the middle.
    """
    return best_fanouts(num, device.hop_latency_cycles, device.stage_latency_cycles)


# ---- checks --------------------------------------------------------------------------------------
def _check_operands(mesh: Mesh, x: DistTensor, ws: Sequence[DistTensor], reduce_axis: Axis) -> None:
    if x.mesh is not mesh or any(w.mesh is not mesh for w in ws):
        raise WaferError("GEMV operands must live on the mesh the kernel runs on")
    _check_layouts((x.name, x.layout), tuple((w.name, w.layout) for w in ws), reduce_axis)


@lru_cache(maxsize=1024)
def _check_layouts(
    x: tuple[str, Layout], ws: tuple[tuple[str, Layout], ...], reduce_axis: Axis
) -> None:
    """The operands' layouts (with their names, for the messages); cached: a decode step
    checks the same few combinations hundreds of times."""
    other = reduce_axis.other
    x_name, x_layout = x
    k_dim = len(x_layout.shape) - 1
    if x_layout.dim_of(reduce_axis) != k_dim or x_layout.dim_of(other) is not None:
        raise WaferError(
            f"GEMV input '{x_name}' must have its last dim split along {reduce_axis.value} and be "
            f"replicated along {other.value} (reduce_axis={reduce_axis.value}); got {x_layout}"
        )
    k = x_layout.shape[k_dim]
    for name, lay in ws:
        if len(lay.shape) != 2 or lay.dim_of(reduce_axis) != 0 or lay.dim_of(other) != 1:
            raise WaferError(
                f"GEMV weight '{name}' must be [in, out] with in split along "
                f"{reduce_axis.value} and out along {other.value}; got {lay}"
            )
        if lay.shape[0] != k:
            raise WaferError(
                f"GEMV weight '{name}' has {lay.shape[0]} input rows but the input vector "
                f"'{x_name}' has {k} entries"
            )
        if lay.tag or x_layout.tag:
            raise WaferError("GEMV operands must use the plain block layout (no tag)")


def _resolve_fanouts(
    mesh: Mesh, axis: Axis, algorithm: ReduceAlgorithm, fanouts: Sequence[int] | None
) -> tuple[int, ...] | None:
    if algorithm is not ReduceAlgorithm.KTREE:
        if fanouts is not None:
            raise WaferError(f"fan-outs apply to the K-tree (meshgemv) only, not {algorithm}")
        return None
    num = mesh.size(axis)
    if fanouts is None:
        return best_ktree_fanouts(mesh.device, num)
    tree = tuple(int(b) for b in fanouts)
    if not tree or any(b < 1 for b in tree):
        raise WaferError(f"fan-outs must be positive integers, got {','.join(map(str, tree))}")
    if math.prod(tree) < num:
        raise WaferError(
            f"fan-outs {','.join(map(str, tree))} cover {math.prod(tree)} cores; the "
            f"{axis.value} axis has {num}: their product must be at least {num}"
        )
    return tree


# ---- the kernel ----------------------------------------------------------------------------------
def _gemv(
    mesh: Mesh,
    *,
    x: DistTensor,
    w: DistTensor | Sequence[DistTensor],
    ledger: Ledger,
    reduce_axis: Axis,
    algorithm: ReduceAlgorithm,
    fanouts: Sequence[int] | None,
    broadcast: bool,
    op: str,
) -> KernelResult:
    ws = [w] if isinstance(w, DistTensor) else list(w)
    if not ws:
        raise WaferError("a GEMV needs at least one weight")
    _check_operands(mesh, x, ws, reduce_axis)
    if algorithm is ReduceAlgorithm.RING and not broadcast:
        raise WaferError(
            "the ring allreduce ends replicated; no-broadcast applies to meshgemv and pipeline only"
        )
    tree = _resolve_fanouts(mesh, reduce_axis, algorithm, fanouts)
    lead = x.layout.shape[:-1]
    rows, cols = mesh.shape
    kt = x.data.shape[-1]
    # x_tile: [T, Kt]; w_tile: [Kt, Nt_i]
    x_tile = x.data if len(lead) == 1 else x.data.reshape(rows, cols, math.prod(lead), kt)
    summed = None
    if broadcast:
        sums = estimated_sums if mesh.mode is Mode.ESTIMATE else summed_products
        summed = sums(mesh, x_tile, ws, reduce_axis)
    with Charged(ledger) as charged:
        _dequantise_weights(mesh, ws, ledger, op)
        if summed is None:
            outs, root = _partial_sums(
                mesh, x_tile, ws, ledger, reduce_axis, algorithm, tree, op, broadcast
            )
        else:  # the sums are known: the partials' shapes price the products and the allreduce
            for wi in ws:
                n = wi.data.shape[-1]
                charge_matmul(mesh, ledger, f"{op}.local", a_shape=x_tile.shape, n=n, vector="n")
            charge_allreduce(
                mesh,
                numel=x_tile.shape[-2] * sum(wi.data.shape[-1] for wi in ws),
                axis=reduce_axis,
                ledger=ledger,
                op=f"{op}.allreduce",
                algorithm=algorithm,
                root=0 if algorithm is ReduceAlgorithm.PIPELINE else None,
                fanouts=tree,
            )
            outs, root = summed, None
    results = _outputs(mesh, outs, ws, lead, reduce_axis, op, root, placed=summed is not None)
    return KernelResult(out=results[0], outs=results, records=charged.records, root=root)


def _partial_sums(
    mesh: Mesh,
    x_tile: torch.Tensor,
    ws: Sequence[DistTensor],
    ledger: Ledger,
    reduce_axis: Axis,
    algorithm: ReduceAlgorithm,
    tree: tuple[int, ...] | None,
    op: str,
    broadcast: bool,
) -> tuple[list[torch.Tensor], int | None]:
    """Every core's partial products, their one fused allreduce (or reduce to a root line):
    per weight (R, C, T, Nt_i), and the root without broadcast."""
    partials = [
        matmul(mesh, a=x_tile, b=wi.values(), ledger=ledger, op=f"{op}.local", vector="n")
        for wi in ws
    ]
    # one fused allreduce of the concatenated partials: [T, sum_i Nt_i]
    fused = torch.cat(partials, dim=-1) if len(partials) > 1 else partials[0]
    root: int | None = None
    if broadcast:
        total = allreduce(
            mesh,
            fused,
            axis=reduce_axis,
            ledger=ledger,
            op=f"{op}.allreduce",
            algorithm=algorithm,
            root=0 if algorithm is ReduceAlgorithm.PIPELINE else None,
            fanouts=tree,
        )
    else:
        total, root = _reduce_to_root(mesh, fused, reduce_axis, ledger, op, algorithm, tree)
    if len(ws) == 1:
        return [total], root
    return list(total.split_with_sizes([wi.data.shape[-1] for wi in ws], dim=-1)), root


def _dequantise_weights(mesh: Mesh, ws: Sequence[DistTensor], ledger: Ledger, op: str) -> None:
    """Compressed weights (`DistTensor.stored`) are expanded chunk by chunk inside the local
    GEMV's loop: their cost (`kernels.dequant`) and the largest float16 chunk's SRAM."""
    compressed = [w for w in ws if w.stored.compressed]
    if not compressed:
        return
    sb = mesh.device.storage_bytes
    chunk = max(
        dequant_scratch_bytes(w.stored, reduced=w.tile_shape[0], other=w.tile_shape[1], sb=sb)
        for w in compressed
    )
    mesh.sram.free(mesh.sram.alloc(f"{op}.dequant_chunk", chunk))  # transient: the peak
    for w in compressed:
        kt, nt = w.tile_shape
        charge_dequant(mesh, ledger, f"{op}.dequant", w.stored, reduced=kt, other=nt)


def _reduce_to_root(
    mesh: Mesh,
    fused: torch.Tensor,
    axis: Axis,
    ledger: Ledger,
    op: str,
    algorithm: ReduceAlgorithm,
    tree: tuple[int, ...] | None,
) -> tuple[torch.Tensor, int]:
    """Reduce only: the sum lands on line `root`; the other lines hold zeros (nothing arrived)."""
    line, root = reduce(
        mesh,
        fused,
        axis=axis,
        ledger=ledger,
        op=f"{op}.reduce",
        algorithm=algorithm,
        root=0,
        fanouts=tree,
    )
    root = int(np.asarray(root).reshape(-1)[0])
    placed = torch.zeros_like(fused)
    index = torch.tensor([root], device=fused.device)
    return placed.index_copy(axis.tensor_dim, index, line), root


def _outputs(
    mesh: Mesh,
    totals: Sequence[torch.Tensor],
    ws: Sequence[DistTensor],
    lead: tuple[int, ...],
    reduce_axis: Axis,
    op: str,
    root: int | None,
    *,
    placed: bool,
) -> tuple[DistTensor, ...]:
    """One output per weight from its reduced tiles (R, C, T, N_i): [*lead, N_i], N_i split
    along the other axis, replicated along the reduce axis (or, without broadcast, only on line
    `root`). `placed`: the tiles are the sums' own (`gemv_sums`:
    dense, held once along the reduce axis), taken as they are when already [*lead, N_i]
    (one lead dim: the reshape and the dense copy per line would return the same view)."""
    rows, cols = mesh.shape
    outs = []
    for i, (wi, part) in enumerate(zip(ws, totals, strict=True)):
        layout = _out_layout(lead, wi.layout.shape[1], reduce_axis, root)
        if placed and len(lead) == 1:
            data = part
        else:
            data = on_replicas(_dense, part.reshape(rows, cols, *lead, part.shape[-1]))
        name = f"{op}.out" if len(ws) == 1 else f"{op}.out{i}"
        outs.append(mesh.register(data, layout, name))
    return tuple(outs)


def _dense(data: torch.Tensor) -> torch.Tensor:
    return data if data.is_contiguous() else data.contiguous()


@lru_cache(maxsize=1024)
def _out_layout(lead: tuple[int, ...], n: int, reduce_axis: Axis, root: int | None) -> Layout:
    """A GEMV output [*lead, N], N split along the axis other than `reduce_axis`."""
    dims = {"y_dim": len(lead)} if reduce_axis is Axis.X else {"x_dim": len(lead)}
    return Layout((*lead, n), **dims, tag="" if root is None else f"root_line_{root}")


_SHARDING = """
    Sharding (reduce_axis=Y): x[*T, K_y] (replicated along X) @ W[K_y, N_x] -> y[*T, N_x]
    (replicated along Y); reduce_axis=X is the transposed placement: x[*T, K_x] @ W[K_x, N_y]
    -> y[*T, N_y]. `w` may be several weights with the same K: their partials are concatenated
    and reduced by ONE allreduce (the decode plan's fused q/k/v and up/gate); `outs` holds one
    output per weight. Sizes that do not divide the grid are zero-padded (counted in SRAM and
    cost). `broadcast=False` stops after the reduce: only line `root` holds y (`result.root`).

    Schedule: local GEMV (per weight, T*Kt vector MACs of length Nt_i: code notes §2.2), then
    the allreduce; the two run one after the other (the collectives are synchronous).
    Local cycles per weight: T*Kt*max(floor, 2*Nt/F, 3*Nt*s/S) (s storage bytes, F peak FLOP,
    S SRAM bytes per cycle). The allreduce moves n = T*sum(Nt_i)*s bytes per core."""


def meshgemv(
    mesh: Mesh,
    *,
    x: DistTensor,
    w: DistTensor | Sequence[DistTensor],
    ledger: Ledger,
    reduce_axis: Axis = Axis.Y,
    fanouts: Sequence[int] | None = None,
    broadcast: bool = True,
    op: str = "meshgemv",
) -> KernelResult:
    """MeshGEMV (paper §6): local GEMV + K-tree allreduce along `reduce_axis` (SPEC.md §10.5).

    Fan-outs b1, ..., bK (bottom first); default K = 2 with G near sqrt(P) chosen by
    `best_ktree_fanouts`. Allreduce cost: reduce H*alpha + S*beta + size term, with H hops and
    S stages of the tree's critical chain (about P/2 hops and g/2 + G/2 stages for K = 2), the
    size term about 2n/link (a second-level stream shares links with first-level chains); then
    the broadcast max(r, P-1-r)*alpha + n/link from the top root r. Routes: 10 per axis for K=2
    (chain 4, second level 4, broadcast 2), 4 more per extra level, independent of P.
    A compressed weight (`w.stored` int8/int4) adds its dequantisation before the local GEMV,
    `kernels.dequant.dequant_cycles(Kt, Nt)`, and a float16 chunk of min(Kt, 32) x Nt.
    """
    return _gemv(
        mesh,
        x=x,
        w=w,
        ledger=ledger,
        reduce_axis=reduce_axis,
        algorithm=ReduceAlgorithm.KTREE,
        fanouts=fanouts,
        broadcast=broadcast,
        op=op,
    )


def pipeline_gemv(
    mesh: Mesh,
    *,
    x: DistTensor,
    w: DistTensor | Sequence[DistTensor],
    ledger: Ledger,
    reduce_axis: Axis = Axis.Y,
    fanouts: Sequence[int] | None = None,
    broadcast: bool = True,
    op: str = "pipeline_gemv",
) -> KernelResult:
    """Cerebras' default GEMV: local GEMV + one forward-while-adding chain from the far end
    (core P-1) to the root at core 0, then a multicast broadcast back.

    Allreduce cost: (P-1)*alpha + (P-2)*beta + n/link for the chain, (P-1)*alpha + n/link for
    the broadcast: 2(P-1) hops and P-2 stages (SPEC.md §10.6's worked example). Routes: chain 4
    + broadcast 2 per axis. `fanouts` must be None.
    """
    return _gemv(
        mesh,
        x=x,
        w=w,
        ledger=ledger,
        reduce_axis=reduce_axis,
        algorithm=ReduceAlgorithm.PIPELINE,
        fanouts=fanouts,
        broadcast=broadcast,
        op=op,
    )


def ring_gemv(
    mesh: Mesh,
    *,
    x: DistTensor,
    w: DistTensor | Sequence[DistTensor],
    ledger: Ledger,
    reduce_axis: Axis = Axis.Y,
    fanouts: Sequence[int] | None = None,
    broadcast: bool = True,
    op: str = "ring_gemv",
) -> KernelResult:
    """Local GEMV + ring allreduce on the interleaved ring: P-1 reduce-scatter steps, then P-1
    allgather steps, each moving a chunk of n/P bytes at most 2 hops; every receiver but the
    last processes and re-sends (2P-3 stages in all).

    Allreduce cost: 2(P-1)*(2*alpha + n/(P*link)) + (2P-3)*beta. Routes: one interleaved ring,
    3 per axis. It always ends replicated: `broadcast` must be True and `fanouts` None.
    """
    return _gemv(
        mesh,
        x=x,
        w=w,
        ledger=ledger,
        reduce_axis=reduce_axis,
        algorithm=ReduceAlgorithm.RING,
        fanouts=fanouts,
        broadcast=broadcast,
        op=op,
    )


for _kernel in (meshgemv, pipeline_gemv, ring_gemv):
    _kernel.__doc__ = (_kernel.__doc__ or "") + _SHARDING
del _kernel
