"""Segmented allreduce: every line's consecutive groups of cores (kv-groups) reduced each onto
its own root, then multicast back within the group, by the axis's chain colours.

`segmented_allreduce` moves the data and charges `charge_segmented_allreduce`, which an
estimate that knows only the sizes calls alone; whole-line collectives live in `comm`.
`charge_owned` charges a chain to, or a multicast from, owners that are the same on every line
(these groups' roots, decode attention's head spread): outside overlap blocks from the line
priced once at 1 byte (`line_charges.line_terms`, cached per device, kind and owners), so a new
grid side prices each such pattern once, and each further size or side is a few products, not
a grid traffic. Exact as `line_charges` says (whole bytes: every load and count at n bytes is
n times its value at 1 byte); tests/mesh/test_comm_groups_charges.py compares each charge with
`Charge.comm` of the plain pattern on the grid.
Legend: P cores along the axis.
"""

from __future__ import annotations

import math

import torch

from waferllm.errors import WaferError
from waferllm.mesh.comm import ReduceOp, as_enum, combine_lines
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.line_charges import line_charge
from waferllm.mesh.lines import check_data
from waferllm.mesh.patterns import Owners, chain_traffic, multicast_traffic
from waferllm.mesh.routes import BROADCAST_ROUTES, CHAIN_ROUTES
from waferllm.mesh.virtual import Mesh


def segmented_allreduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    group_sizes: tuple[int, ...],
    ledger: Ledger,
    op: str,
    reduce_op: ReduceOp = ReduceOp.SUM,
    broadcast_result: bool = True,
) -> torch.Tensor:
    """Reduce over consecutive groups of cores of every line (sizes `group_sizes`, summing to
    P), each onto its group root at offset g // 2, then multicast back within the group.

    Uses the axis's chain colours (static routes serve any root). Critical path: the longest
    group side d: d hops and d-1 stages, plus the broadcast's d hops. With
    `broadcast_result=False` the result is meaningful at the group roots only.
    """
    check_data(mesh, data)
    reduce_op = as_enum(ReduceOp, reduce_op)
    sizes = _group_sizes(mesh, axis, group_sizes)
    dim = axis.tensor_dim
    parts = torch.split(data, list(sizes), dim=dim)
    if data.is_meta:  # estimate mode, shapes only: one output in the combined dtype
        dtype = combine_lines(parts[0], dim, reduce_op).dtype
        result = torch.empty(data.shape, dtype=dtype, device="meta")
    else:
        result = torch.cat([combine_lines(p, dim, reduce_op).expand_as(p) for p in parts], dim=dim)
    charge_segmented_allreduce(
        mesh,
        axis=axis,
        group_sizes=sizes,
        numel=math.prod(data.shape[2:]),
        ledger=ledger,
        op=op,
        broadcast_result=broadcast_result,
    )
    return result


def charge_segmented_allreduce(
    mesh: Mesh,
    *,
    axis: Axis,
    group_sizes: tuple[int, ...],
    numel: int,
    ledger: Ledger,
    op: str,
    broadcast_result: bool = True,
) -> None:
    """What `segmented_allreduce` of tiles of `numel` elements configures (routes) and charges,
    without data (`charge_allreduce`'s counterpart)."""
    sizes = _group_sizes(mesh, axis, group_sizes)
    if max(sizes) == 1:
        return
    mesh.routes.require(f"{axis.value}_chain", CHAIN_ROUTES)
    if broadcast_result:
        mesh.routes.require(f"{axis.value}_bcast", BROADCAST_ROUTES)
    owners, nbytes = Owners.of_groups(sizes), numel * mesh.device.storage_bytes
    charge_owned(mesh, ledger, "chain", axis=axis, owners=owners, nbytes=nbytes, op=f"{op}.reduce")
    if broadcast_result:
        charge_owned(
            mesh,
            ledger,
            "multicast",
            axis=axis,
            owners=owners,
            nbytes=nbytes,
            op=f"{op}.bcast",
            phase=1,
        )


_ROUTES = {True: CHAIN_ROUTES, False: BROADCAST_ROUTES}  # chain or not: the colours


def charge_owned(
    mesh: Mesh,
    ledger: Ledger,
    kind: str,
    *,
    axis: Axis,
    owners: Owners,
    nbytes: int,
    op: str,
    phase: int = 0,
) -> None:
    """Configure the axis's chain (`kind` "chain") or broadcast ("multicast") colours, as
    `charges.charge_reduce_to_owners` and `charges.charge_multicast` do, and charge a chain to
    or a multicast from `owners` along `axis`, of `nbytes` per core: when they are the same on
    every line (one root, groups, one owner row), outside an overlap block and for `nbytes` >=
    1 from the line priced once (`line_charges.line_charge`, no traffic), else `Charge.comm`
    of the pattern on the grid (an overlap block merges traffics)."""
    chain = kind == "chain"
    mesh.routes.require(f"{axis.value}_{'chain' if chain else 'bcast'}", _ROUTES[chain])
    if not ledger.prices:
        return
    alike = all(k is None or k[0] == (1,) for k in (owners.roots, owners.row_of_line))
    if nbytes >= 1 and alike and not ledger.in_overlap:
        lines = mesh.size(axis.other)
        charge = line_charge(mesh.device, kind, owners.num, owners, nbytes, lines)
        ledger.charge(op, charge, phase=phase)
        return
    pattern = chain_traffic if chain else multicast_traffic
    traffic = pattern(mesh.device, mesh.shape, axis, owners, nbytes)
    ledger.charge(op, Charge.comm(traffic), phase=phase)


def _group_sizes(mesh: Mesh, axis: Axis, group_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """`group_sizes` as ints, checked to be positive and to cover the axis."""
    sizes = tuple(int(g) for g in group_sizes)
    if any(g < 1 for g in sizes) or sum(sizes) != mesh.size(axis):
        raise WaferError(
            f"group sizes {group_sizes} must be positive and cover the {mesh.size(axis)} cores "
            f"of axis {axis.value}"
        )
    return sizes
