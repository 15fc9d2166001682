"""dist-GEMM-T (paper §5.4, code notes §4.3): A @ B^T without moving B to its transpose.

One implementation, grouped: the columns are split into consecutive groups (prefill attention's
kv-groups; one group of every column is the plain kernel). A stays in place; B circulates on
the Y ring; each step's partial block is reduced within its group onto the column that owns
that block of B's rows, the reduces of consecutive steps streaming through the same chains.
`gemm_t` is the kernel on distributed tensors; `gemm_t_steps` is its loop on per-core tiles,
which `attention.py` calls with Q and K in the head layout.
Legend: R rows, C columns, Mt, Kt, Nt one core's tiles of M, K and N (Nt = ceil(N/R)); Kc
blocks of B's rows owned per column; s storage bytes; F flops/cycle, S SRAM bytes/cycle, W link
(= ramp) bytes/cycle; alpha per hop, beta per stage; d the farthest column from its owner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from functools import lru_cache

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.operands import batch_shape, batch_tiles, check_operand
from waferllm.kernels.result import Charged, KernelResult
from waferllm.kernels.ring_sum import active_rows, homes, small_tiles, step_batches
from waferllm.mesh.charges import Owners, charge_reduce_to_owners
from waferllm.mesh.comm import charge_ring_shift, ring_shift
from waferllm.mesh.compute import charge_matmul, matmul, matmul_values
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis, RingKind, ring_order, ring_position
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode


# ---- who owns which block of B's rows ----------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class BlockOwners:
    """Which column of each group owns each of the R blocks of B's rows, and in which slot."""

    column: np.ndarray  # (Ng, R) absolute column owning block j in group g
    slot: np.ndarray  # (Ng, R) its slot among that column's blocks
    group_of: np.ndarray  # (C,) group of every column
    first_block: np.ndarray  # (C,) first block a column owns
    num_blocks: np.ndarray  # (C,) blocks a column owns
    per_col: int  # Kc = max blocks on one column
    group_sizes: tuple[int, ...]

    @property
    def shared(self) -> bool:
        """Whether some group spans several columns (partial blocks then move)."""
        return max(self.group_sizes) > 1


@lru_cache(maxsize=256)
def block_owners(group_sizes: tuple[int, ...], rows: int) -> BlockOwners:
    """Block j of a group of s columns goes to its column floor(j * s / R) (contiguous runs of
    blocks, sizes within one)."""
    sizes = np.asarray(group_sizes)
    starts = np.cumsum(sizes) - sizes
    blocks = np.arange(rows)
    local = (blocks[None, :] * sizes[:, None]) // rows  # (Ng, R)
    col_local = np.concatenate([np.arange(s) for s in sizes])
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    s_of = sizes[group_of]
    first = -((-col_local * rows) // s_of)  # ceil(l * R / s)
    last = -((-(col_local + 1) * rows) // s_of)
    first_of_owner = -((-local * rows) // sizes[:, None])
    return BlockOwners(
        column=starts[:, None] + local,
        slot=blocks[None, :] - first_of_owner,
        group_of=group_of,
        first_block=first,
        num_blocks=last - first,
        per_col=int((last - first).max()),
        group_sizes=group_sizes,
    )


def block_at(rows: int, step: int) -> np.ndarray:
    """(R,): the block of B's rows that row y holds after `step` interleaved-ring shifts."""
    return ring_order(rows)[(ring_position(rows) - step) % rows]


@lru_cache(maxsize=256)
def owner_map(owners: BlockOwners, rows: int, step: int) -> np.ndarray:
    """(R, C): each core's root in step `step` (the owner column of its row's block); read
    only, cached: every step of a kernel charges the same map (`mesh.charges`)."""
    block = block_at(rows, step)  # (R,)
    owner = owners.column[owners.group_of[None, :], block[:, None]]
    owner.setflags(write=False)
    return owner


@lru_cache(maxsize=256)
def step_owners(owners: BlockOwners, rows: int, step: int) -> Owners:
    """The owners of `owner_map(owners, rows, step)` as group rows (`Owners.of_group_rows`),
    without the (R, C) map: row y's owners are its block's owner column in each group
    (`owners.column[:, block]`), so two rows have the same owners exactly when their blocks
    do. A group's owner column grows with the block (floor(j*s/R)), so the blocks of one
    owner row are a run of consecutive blocks: the runs are numbered along the blocks, each
    row takes its block's run, and the distinct rows in order of first appearance come from
    those (R,) numbers (tests/kernels/test_gemm_t_owners.py compares with the map's rows)."""
    column = owners.column  # (Ng, R), non-decreasing along the blocks
    new_run = np.concatenate([[True], (column[:, 1:] != column[:, :-1]).any(axis=0)])
    run_of_block = np.cumsum(new_run) - 1
    run_starts = np.flatnonzero(new_run)
    run = run_of_block[block_at(rows, step)]  # (R,): each row's run
    _, first, inverse = np.unique(run, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    starts = np.cumsum(owners.group_sizes) - np.asarray(owners.group_sizes)
    offsets = column[:, run_starts[run[first[order]]]].T - starts[None, :]  # (U, Ng)
    return Owners.of_group_rows(owners.group_sizes, offsets, rank[inverse.reshape(-1)])


# ---- the kernel ----------------------------------------------------------------------------------
def gemm_t(
    mesh: Mesh,
    *,
    a: DistTensor,
    b: DistTensor,
    ledger: Ledger,
    group_sizes: tuple[int, ...] | None = None,
    op: str = "gemm_t",
) -> KernelResult:
    """dist-GEMM-T: A[M_y, K_x] @ B[N_y, K_x]^T -> C[M_y, N owned along X].

    Sharding: a [*, Mt, Kt], b [*, Nt, Kt] (leading batch dims broadcast: q [H, Mt, Kt]
    against k [1, Nt, Kt]); within each group of consecutive columns (`group_sizes`, default
    one group of all C) the columns split K and own the R blocks of N in contiguous runs:
    block j of a group of s columns lives on its column floor(j*s/R), so c's tile is
    [*, Mt, Kc*Nt], Kc = ceil(R/s). When C divides R (square meshes included) and N = R*Nt,
    that is C[M_y, N_x]; otherwise `out` carries layout tag "owned_blocks" (column x holds
    blocks `block_owners(...).first_block[x]` onwards).
    Schedule: A stays; R steps of {partial = a @ b^T; shift b one interleaved-ring position
    along Y; the previous step's partial chain-reduced within the group to its owner column,
    the root differing per row and per step}, overlapped; the reduce streams follow each other
    through the same chains, so a middle step exposes only their size term and the chains'
    latency is paid once, by the last reduce.
    Cost (every step's roots are a permutation of the blocks: each step costs the same):
      first:  max(Nt*Kt*max(floor, 2*Mt/F, 3*Mt*s/S), 2*alpha + Nt*Kt*s/W) + overhead
      middle: max(same multiply, 2*alpha + (m*Mt*Nt + Nt*Kt)*s/W) + overhead
              [m = 2 when an owner has group columns on both sides: two partials in its ramp]
      last:   d*alpha + (d-1)*beta + m*Mt*Nt*s/W  (only when a group spans 2+ columns)
    (2*alpha is 1*alpha on 2 rows.) Routes: Y ring forward (3) + X chain (4) = 7.
    SRAM: a, b, b's circulating copy, two partials, c.
    """
    check_operand(mesh, a, op=op, role="A", dims="A[M_y, K_x]", tags={""})
    check_operand(mesh, b, op=op, role="B", dims="B[N_y, K_x]", tags={""})
    if a.layout.shape[-1] != b.layout.shape[-1]:
        raise WaferError(f"{op}: A {a.layout.shape} and B {b.layout.shape} differ in K")
    groups = (mesh.cols,) if group_sizes is None else tuple(int(g) for g in group_sizes)
    if any(g < 1 for g in groups) or sum(groups) != mesh.cols:
        raise WaferError(f"{op}: group sizes {groups} must cover the {mesh.cols} columns")
    batch = batch_shape(op, a, b)
    owners = block_owners(groups, mesh.rows)
    m, nt = a.layout.shape[-2], b.data.shape[-2]
    a_t = batch_tiles(a, len(batch))  # a_tile: [*, Mt, Kt]
    b_t = batch_tiles(b, len(batch)).transpose(-1, -2)  # b^T: [*, Kt, Nt], a view
    width = mesh.cols * owners.per_col * nt
    regular = mesh.rows % mesh.cols == 0 and b.layout.shape[-2] == mesh.rows * nt
    n_out = b.layout.shape[-2] if regular else width
    out_layout = Layout(
        (*batch, m, n_out),
        y_dim=len(batch),
        x_dim=len(batch) + 1,
        tag="" if regular else "owned_blocks",
    )
    with Charged(ledger) as charged:
        out_key = mesh.sram.alloc(
            f"{op}.c", math.prod(out_layout.tile_shape(*mesh.shape)) * mesh.device.storage_bytes
        )
        with mesh.sram.scope():
            c = gemm_t_steps(mesh, a_t=a_t, b_t=b_t, owners=owners, ledger=ledger, op=op)
    c = c.to(mesh.compute_dtype)
    out = DistTensor(
        c.contiguous() if mesh.mode is Mode.FUNCTIONAL else c, out_layout, mesh, f"{op}.c", out_key
    )
    return KernelResult(out=out, records=charged.records)


def gemm_t_steps(
    mesh: Mesh,
    *,
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    owners: BlockOwners,
    ledger: Ledger,
    op: str,
) -> torch.Tensor:
    """The R steps of `gemm_t` on per-core tiles a_t (R, C, *, Mt, Kt) and b_t (R, C, *, Kt,
    Nt) (B^T's tiles, as views): step t computes its block and shifts b while step t-1's block
    streams down the group's chains behind the previous one. Records `{op}.step` (R times)
    and `{op}.reduce_last`; counts b's circulating copy and the two partials in the current
    SRAM scope. Returns c (R, C, *, Mt, Kc*Nt)."""
    rows = mesh.rows
    nt = b_t.shape[-1]
    batch = tuple(int(d) for d in np.broadcast_shapes(a_t.shape[2:-2], b_t.shape[2:-2]))
    lead = (*batch, a_t.shape[-2])  # (*, Mt)
    shape = (*a_t.shape[:2], *lead, owners.per_col, nt)  # (R, C, *, Mt, Kc, Nt)
    meta = a_t.is_meta and b_t.is_meta  # estimate mode: shapes only, no dispatches
    c = (
        meta_empty(shape, a_t.dtype)
        if meta
        else torch.zeros(shape, dtype=a_t.dtype, device=a_t.device)
    )
    block_numel = math.prod(lead) * nt
    _scratch(mesh, f"{op}.b_ring", math.prod(b_t.shape[2:]))  # b stays for the caller
    _scratch(mesh, f"{op}.partial", 2 * block_numel)  # this step's block and the last one's
    # every step's roots cost the same (a permutation of the blocks): price step 0's
    owner0 = step_owners(owners, rows, 0)
    nbytes = block_numel * mesh.device.storage_bytes
    overhead = mesh.device.step_overhead_cycles
    # small tiles: every step's numbers at once (`_all_steps`), the loop only charges
    batched = mesh.mode is Mode.ESTIMATE or small_tiles(a_t, b_t)
    if batched and mesh.mode is Mode.FUNCTIONAL:
        _all_steps(mesh, c, a_t, b_t, owners)

    def reduce(part: torch.Tensor | None, step: int, *, follows: bool) -> None:
        if owners.shared:
            charge_reduce_to_owners(
                mesh,
                axis=Axis.X,
                owner=owner0,
                nbytes=nbytes,
                ledger=ledger,
                op=f"{op}.reduce",
                follows_stream=follows,
            )
        if part is not None:
            _place_blocks(c, part, owners, step)

    def step(t: int, b_cur: torch.Tensor, prev: torch.Tensor | None, first: bool):
        with ledger.overlap(f"{op}.step", step_overhead_cycles=overhead):
            if batched:
                charge_matmul(mesh, ledger, f"{op}.local", a_shape=a_t.shape, n=b_t.shape[-1])
                charge_ring_shift(mesh, b_cur, axis=Axis.Y, ledger=ledger, op=f"{op}.shift")
                part = None
            else:
                part = matmul(mesh, a=a_t, b=b_cur, ledger=ledger, op=f"{op}.local")
                b_cur = ring_shift(mesh, b_cur, axis=Axis.Y, ledger=ledger, op=f"{op}.shift")
            if not first:
                reduce(prev, t - 1, follows=True)
        return b_cur, part

    b_cur, part = step(0, b_t, None, True)
    # batched, the steps only charge: run one, count it (`charged_steps`)
    loop = mesh.charged_steps if batched else mesh.steps
    for i in loop(rows - 1, ledger):
        b_cur, part = step(i + 1, b_cur, part, False)
    with ledger.overlap(f"{op}.reduce_last") if owners.shared else contextlib.nullcontext():
        reduce(part, rows - 1, follows=False)
    return meta_empty((*shape[:-2], shape[-2] * nt), c.dtype) if meta else c.flatten(-2)


def _all_steps(
    mesh: Mesh, c: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor, owners: BlockOwners
) -> None:
    """Every step's group-summed blocks placed in c, a few steps per batched multiply: only
    the rows of A up to its last nonzero one (the others place zeros, which c holds)."""
    rows = c.shape[0]
    active = active_rows(a_t)
    if active == 0:
        return
    table = homes(rows, RingKind.INTERLEAVED, a_t.device.type)[:, :active]  # block_at
    group_of = torch.as_tensor(owners.group_of, device=c.device)
    column = torch.as_tensor(owners.column, device=c.device)
    slot = torch.as_tensor(owners.slot, device=c.device)
    y = torch.arange(active, device=c.device)[None, :, None]
    per_step = active * (math.prod(b_t.shape[1:]) + 2 * math.prod(c.shape[1:]))
    for batch in step_batches(rows, per_step, a_t.element_size()):
        idx = table[batch]  # (S, active): the block each row holds at each step
        steps = idx.shape[0]
        b_all = b_t.index_select(0, idx.reshape(-1)).reshape(steps, active, *b_t.shape[1:])
        part = matmul_values(mesh, a_t[:active], b_all)  # (S, active, C, *, Mt, Nt)
        summed = part.new_zeros((steps, active, column.shape[0], *part.shape[3:]))
        summed.index_add_(2, group_of, part)
        cols, slots = column[:, idx].permute(1, 2, 0), slot[:, idx].permute(1, 2, 0)
        c[y, cols, ..., slots, :] = summed


def _scratch(mesh: Mesh, name: str, numel: int) -> None:
    mesh.sram.alloc(name, numel * mesh.device.storage_bytes)


def _place_blocks(c: torch.Tensor, part: torch.Tensor, owners: BlockOwners, step: int) -> None:
    """Sum each row's partial within its group and store it at the block's owner."""
    rows = c.shape[0]
    num_groups = owners.column.shape[0]
    summed = part.new_zeros((rows, num_groups, *part.shape[2:]))
    on = c.device
    summed.index_add_(1, torch.as_tensor(owners.group_of, device=on), part)
    block = block_at(rows, step)
    y = torch.arange(rows, device=on)[:, None]
    col = torch.as_tensor(owners.column[:, block].T, device=on)  # (R, Ng)
    slot = torch.as_tensor(owners.slot[:, block].T, device=on)
    c[y, col, ..., slot, :] = summed
