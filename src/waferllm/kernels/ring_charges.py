"""The ring GEMM's charges (`gemm.py`): Cannon's skew rounds and its compute-shift steps,
from the logical blocks or (estimate mode) their shapes, each step remembered as its record.

A MeshGEMM step, or a round of Cannon's skew, charges the same compute and ring traffic
wherever the same tiles meet on the same grid: the first one is charged and composed into its
overlap record (`cost.Ledger.overlap`); each identical one after (the next layer's, the next
walk's on the grid) configures the same routes and appends that record again under its own
name, tag and count (`Ledger.append_like`) instead of charging and composing it anew. The
records are the ones charging would append: the key holds everything the charges read.
Only for a plain `Ledger`: an `UnpricedLedger` keeps nothing, and a budget's ledger checks
each record as it lands (`budget.BudgetLedger`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from waferllm.kernels.dequant import charge_dequant
from waferllm.mesh import rings
from waferllm.mesh.compute import charge_matmul
from waferllm.mesh.cost import Ledger, Record
from waferllm.mesh.geometry import Axis, RingKind
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.tiling import LogicalGrid
from waferllm.mesh.virtual import Mesh

# Bounded: a record is small, and a grid search prices a few hundred sides' steps.
_MAX_RECORDS = 4096
_records: dict[Hashable, Record] = {}


def charge_steps(
    mesh: Mesh,
    grid: LogicalGrid,
    kind: RingKind,
    ledger: Ledger,
    *,
    op: str,
    count: int,
    key: Hashable | None,
    routes: Sequence[tuple[Axis, bool]],
    charge: Callable[[], None],
) -> None:
    """`count` identical overlapped steps `op` (`Mesh.charged_steps`) whose body is `charge()`;
    with a `key` (estimate mode: the step's device, grid and tiles, all its charges read),
    a step already composed is appended again, configuring `routes` ((axis, skew) of each
    ring the body charges, `rings.require_step_routes`)."""
    if count <= 0:
        return
    memo = key is not None and type(ledger) is Ledger
    known = _records.get((key, op)) if memo else None
    if known is None:
        for _ in mesh.charged_steps(count, ledger):
            with ledger.overlap(op, step_overhead_cycles=mesh.device.step_overhead_cycles):
                charge()
        if memo:
            if len(_records) >= _MAX_RECORDS:
                _records.clear()
            _records[(key, op)] = ledger.records[-1]
        return
    for axis, skew in routes:
        rings.require_step_routes(mesh, grid, axis=axis, kind=kind, skew=skew)
    ledger.append_like(op, known, times=count)


def charge_skew(
    mesh: Mesh,
    grid: LogicalGrid,
    kind: RingKind,
    ledger: Ledger,
    *,
    a: torch.Tensor | torch.Size | None,
    b: torch.Tensor | torch.Size | None,
    closed: bool = False,
) -> None:
    """`_skew`'s charges, from the logical blocks (L, L, *block) or their shape; `closed`
    (estimate mode, shapes given): a round already composed is appended again."""
    if a is None and b is None:
        return

    def charge() -> None:
        for data, axis, name in ((a, Axis.X, "align_a"), (b, Axis.Y, "align_b")):
            if data is not None:
                rings.charge_skew_round(
                    mesh, grid, data, axis=axis, kind=kind, ledger=ledger, op=name
                )

    with ledger.tag("align"):
        charge_steps(
            mesh,
            grid,
            kind,
            ledger,
            op="align",
            count=rings.skew_rounds(grid.size, kind),
            key=(mesh.device, mesh.shape, grid, kind, _block(a), _block(b)) if closed else None,
            routes=[(axis, True) for axis, data in ((Axis.X, a), (Axis.Y, b)) if data is not None],
            charge=charge,
        )


def charge_ring_steps(
    mesh: Mesh,
    grid: LogicalGrid,
    kind: RingKind,
    ledger: Ledger,
    *,
    a_l: torch.Tensor | torch.Size,
    b_l: torch.Tensor | torch.Size,
    b: DistTensor,
    a_blocks: torch.Size,
    b_kt: int,
    b_nt: int,
    closed: bool = False,
) -> None:
    """The P compute-shift steps' charges, from the logical blocks (or their shapes), each
    core's blocks of A (`a_blocks`) and B's padded tile (b_kt, b_nt); `closed` (estimate
    mode, shapes given): a step already composed is appended again."""

    def charge() -> None:
        n = (b_l if isinstance(b_l, torch.Size) else b_l.shape)[-1]
        charge_matmul(mesh, ledger, "mac", a_shape=a_blocks, n=n)
        charge_dequant(mesh, ledger, "dequant_b", b.stored, reduced=b_kt, other=b_nt)
        for data, axis, name, stored in (
            (a_l, Axis.X, "shift_a", StoredDtype.FLOAT16),
            (b_l, Axis.Y, "shift_b", b.stored),
        ):
            rings.charge_ring_step(
                mesh, grid, data, axis=axis, kind=kind, ledger=ledger, op=name, stored=stored
            )

    key = (mesh.device, mesh.shape, grid, kind, a_blocks, b.stored, b_kt, b_nt, a_l, b_l)
    charge_steps(
        mesh,
        grid,
        kind,
        ledger,
        op="step",
        count=grid.size,
        key=key if closed else None,
        routes=[(Axis.X, False), (Axis.Y, False)],
        charge=charge,
    )


def _block(shape: torch.Tensor | torch.Size | None) -> tuple[int, ...] | None:
    """A closed form's logical blocks' shape (L, L, *block) as a key: its block, or None."""
    return None if shape is None else tuple(shape)[2:]


__all__ = ["charge_ring_steps", "charge_skew", "charge_steps"]
