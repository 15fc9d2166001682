"""Key-streamed prefill attention in estimate mode from its sizes alone: no meta tensors.

`estimated_streamed_attention` charges what `attention_stream.prefill_attention_streamed`
charges (the same records in the same order through the same pricing primitives, the same SRAM
buffers, routes and output) from (Lt, the head layout); the walk stays the oracle (`walk=True`,
tests/kernels/test_attention_stream_cost.py). `charge_block` and the scratch size are shared.
Legend as in `attention.py`: R rows, C columns, Lt tokens per row, G kv heads per column, n
query heads per kv head, H q/k head-dim slots, Hv v slots per column.
"""

from __future__ import annotations

import torch

from waferllm.kernels.attention import attention_output_layout
from waferllm.kernels.gemm_t import BlockOwners, block_owners, step_owners
from waferllm.kernels.heads import HeadLayout
from waferllm.kernels.vector import (
    EXP_SUB,
    MASK_SELECT,
    MAX_ACC,
    NORMALISE,
    RECIPROCAL,
    SCALE,
    SUM_ACC,
    charge_vector,
)
from waferllm.mesh.charges import charge_multicast, charge_reduce_to_owners
from waferllm.mesh.comm import charge_ring_shift
from waferllm.mesh.compute import charge_matmul
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh


def streamed_attention_numel(heads: HeadLayout, lt: int) -> int:
    """Per-core scratch of `prefill_attention_streamed` beside its output [Lt, G*n*Hv]: K's
    and V's ring copies, two partial blocks (this step's and the one being reduced), the
    received probability block, the running max and sum per query row."""
    g, n = heads.kv_per_tile, heads.n_rep
    ring = g * (heads.head_slots + heads.value_slots) * lt
    return ring + 3 * g * n * lt * lt + 2 * g * n * lt


def estimated_streamed_attention(
    mesh: Mesh, *, q: DistTensor, heads: HeadLayout, ledger: Ledger
) -> DistTensor:
    """`prefill_attention_streamed` of q (tile [Lt, G*n*H]) from the sizes: the output attn
    [L_y, (C*G*n*Hv)_x] (meta, q's dtype) and `streamed_attention_numel` of scratch; R steps
    of {local Q K^T [G, n, Lt, H] @ [H, Lt], K's shift along Y, `charge_block`, local P V
    [G, n, Lt, Lt] @ [Lt, Hv], V's shift along Y}, each one overlapped block (the first R-1
    recorded once with a count, the last paying the reduce chains' latency); one instruction
    of G*n*Lt reciprocals and G*n*Lt of Hv (the normalise)."""
    rows, cols = mesh.shape
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots
    lt, sb = q.tile_shape[0], mesh.device.storage_bytes
    owners = block_owners(heads.group_sizes, rows)
    out_key = mesh.sram.alloc("attn", lt * heads.o_width * sb)
    k_tile = torch.empty((rows, cols, g * h * lt), device="meta")  # one core's k bytes
    v_tile = torch.empty((rows, cols, g * lt * hv), device="meta")  # one core's v bytes
    with mesh.sram.scope():
        mesh.sram.alloc("attn.stream", streamed_attention_numel(heads, lt) * sb)

        def step(*, last: bool) -> None:
            overhead = mesh.device.step_overhead_cycles
            with ledger.overlap("attn.step", step_overhead_cycles=overhead):
                charge_matmul(mesh, ledger, "qk.local", a_shape=(rows, cols, g, n, lt, h), n=lt)
                charge_ring_shift(mesh, k_tile, axis=Axis.Y, ledger=ledger, op="qk.shift")
                charge_block(mesh, owners, heads, lt, ledger, last=last)
                charge_matmul(mesh, ledger, "pv.local", a_shape=(rows, cols, g, n, lt, lt), n=hv)
                charge_ring_shift(mesh, v_tile, axis=Axis.Y, ledger=ledger, op="pv.shift")

        for _ in mesh.steps(rows - 1, ledger):
            step(last=False)
        step(last=True)
        charge_vector(mesh, ledger, "attn.reciprocal", rows=1, length=g * n * lt, cost=RECIPROCAL)
        charge_vector(mesh, ledger, "attn.normalise", rows=g * n * lt, length=hv, cost=NORMALISE)
    out = torch.empty((rows, cols, lt, heads.o_width), dtype=q.data.dtype, device="meta")
    return DistTensor(out, attention_output_layout(q.layout, heads), mesh, "attn", out_key)


def charge_block(
    mesh: Mesh, owners: BlockOwners, heads: HeadLayout, lt: int, ledger: Ledger, *, last: bool
) -> None:
    """One block's reduce, online softmax and multicast (`prefill_attention_streamed`)."""
    rows = mesh.rows
    g, n, hv = heads.kv_per_tile, heads.n_rep, heads.value_slots
    sb = mesh.device.storage_bytes
    r = g * n * lt  # query rows per core
    # every step's roots are a permutation of the first's (same cost); as group offsets
    # (`step_owners`: the owner map's rows in closed form, priced as the map by
    # `group_patterns`) without building the (R, C) map
    owner0 = step_owners(owners, rows, 0)
    if owners.shared:
        charge_reduce_to_owners(
            mesh,
            axis=Axis.X,
            owner=owner0,
            nbytes=r * lt * sb,
            ledger=ledger,
            op="qk.reduce",
            follows_stream=not last,
        )
    for op, cost in (("scale", SCALE), ("mask", MASK_SELECT), ("max", MAX_ACC)):
        charge_vector(mesh, ledger, f"softmax.{op}", rows=r, length=lt, cost=cost)
    charge_vector(mesh, ledger, "softmax.exp", rows=r, length=lt, cost=EXP_SUB)
    charge_vector(mesh, ledger, "softmax.sum", rows=r, length=lt, cost=SUM_ACC)
    if owners.shared:
        charge_multicast(
            mesh, axis=Axis.X, owner=owner0, nbytes=r * (lt + 2) * sb, ledger=ledger, op="pv.bcast"
        )
    charge_vector(mesh, ledger, "online.max", rows=1, length=r, cost=MAX_ACC)
    charge_vector(mesh, ledger, "online.correction", rows=1, length=r, cost=EXP_SUB)
    charge_vector(mesh, ledger, "online.sum", rows=1, length=r, cost=SUM_ACC)
    charge_vector(mesh, ledger, "online.rescale", rows=r, length=hv, cost=SCALE)


__all__ = ["charge_block", "estimated_streamed_attention", "streamed_attention_numel"]
