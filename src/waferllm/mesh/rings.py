"""Ring movement of tiles for the Cannon-style GEMM kernels, on physical or logical grids.

`ring_step` advances every logical block one position along its line's ring (interleaved or
plain) and charges the physical traffic that causes; `skew_round` is one round of Cannon's
initial skew written in ring positions. Data moves in one vectorised index operation per call
(index tensors cached per source map); traffic is priced once per shape and cached, and not at
all for a ledger that does not price (`Ledger.prices`), so nothing here loops over cores.
`charge_ring_step`, `charge_skew_round`, `skew_moved` and `ring_index` let a kernel charge
every step but move data by index, or all at once (the schedule does not depend on the data).
Legend: L logical cores along the axis (tiling.LogicalGrid), P physical cores along it,
per = L / P; a "line" is one row (axis X) or one column (axis Y).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from waferllm.device import Device
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import (
    Axis,
    RingKind,
    ring_order,
    ring_position,
    ring_successor,
    shorter_way,
)
from waferllm.mesh.loads import line_rows
from waferllm.mesh.ring_traffic import unit_traffic
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes
from waferllm.mesh.tiling import LogicalGrid
from waferllm.mesh.traffic import Traffic, on_grid, one_line
from waferllm.mesh.virtual import Mesh


def ring_routes_per_core(kind: RingKind, per: int) -> int:
    """Colour entries one ring direction configures on a core (SPEC.md §10.7, code notes §1.4).

    Interleaved ring on physical cores: send, receive, transit (3). When a core plays several
    logical cores (per >= 2) every crossing is a one-hop exchange with a neighbour in both
    directions, each direction alternating two colours by parity (4). Plain ring: send,
    receive, and the wrap-around stream's transit (3).
    """
    if kind is RingKind.INTERLEAVED and per >= 2:
        return 4
    return 3


@lru_cache(maxsize=64)
def _route_name(axis: Axis, kind: RingKind, steps: int) -> str:
    return f"{axis.value}_ring_{kind.value}_{'fwd' if steps > 0 else 'rev'}"


@lru_cache(maxsize=1024)
def _ring_traffic(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    size: int,
    kind: RingKind,
    counts_key: bytes,
    nbytes: int,
) -> Traffic:
    """Every physical line carries counts[0] logical lines moving forward and counts[1]
    moving backward (counts: (2, lines)); their loads add up. Loads are computed once per
    distinct (forward, backward) pair, (U, P) arrays, and gathered onto the lines: uniform
    counts keep (1, P) arrays, so a whole-mesh step costs O(P) to price, not O(P^2), and a
    skew round's few distinct pairs cost one gather per array."""
    lines = shape[axis.other.tensor_dim]
    counts = np.frombuffer(counts_key, dtype=np.int64).reshape(2, lines)
    uniform = bool((counts == counts[:, :1]).all())
    # the distinct (forward, backward) pairs (2, U) and each line's: one 1-D key per pair
    span = int(counts[1].max(initial=0)) + 1
    keys, line_pair = np.unique(counts[0] * span + counts[1], return_inverse=True)
    pairs = np.stack([keys // span, keys % span])
    links: dict[tuple[Axis, int], np.ndarray] = {}
    ramp_in = np.zeros((1, 1))
    ramp_out = np.zeros((1, 1))
    injected = byte_hops = hops = 0
    for steps, weights, distinct in ((1, counts[0], pairs[0]), (-1, counts[1], pairs[1])):
        if not weights.any():  # no line moves this way: no unit to price
            continue
        unit = unit_traffic(device, shape, axis, size, kind, steps, nbytes)
        if unit.bytes_injected == 0:
            continue
        hops = max(hops, unit.critical_hops)
        w = distinct.astype(np.float64)
        for key, load in unit.links.items():
            links[key] = links.get(key, 0.0) + w[:, None] * np.asarray(load)
        # ramp arrays are oriented (rows, cols): lines are rows on X, columns on Y
        w_ramp = w[:, None] if axis is Axis.X else w[None, :]
        ramp_in = ramp_in + w_ramp * np.asarray(unit.ramp_in)
        ramp_out = ramp_out + w_ramp * np.asarray(unit.ramp_out)
        injected += unit.bytes_injected // lines * int(weights.sum())
        byte_hops += unit.link_byte_hops // lines * int(weights.sum())
    if uniform:
        return Traffic(
            device=device,
            shape=shape,
            critical_hops=hops,
            bytes_injected=injected,
            link_byte_hops=byte_hops,
            links=dict(links),
            ramp_in=ramp_in,
            ramp_out=ramp_out,
        )
    index = line_pair.reshape(-1)  # each line takes its pair's loads (computed once)
    across = 0 if axis is Axis.X else 1
    return Traffic(
        device=device,
        shape=shape,
        critical_hops=hops,
        bytes_injected=injected,
        link_byte_hops=byte_hops,
        links={k: line_rows(v, index) for k, v in links.items()},
        ramp_in=line_rows(ramp_in, index, across) if ramp_in.shape[across] > 1 else ramp_in,
        ramp_out=line_rows(ramp_out, index, across) if ramp_out.shape[across] > 1 else ramp_out,
    )


@lru_cache(maxsize=1024)
def _ring_step_traffic(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    size: int,
    kind: RingKind,
    counts_key: bytes,
    nbytes: int,
) -> Traffic:
    """`_ring_traffic` at `nbytes` from its pricing at 1 byte, scaled (`Traffic.scaled`):
    exact, as every load, byte count and byte-hop is a whole multiple of the block's bytes
    and the hops do not depend on them; a new grid's GEMMs shift blocks of many sizes along
    a few ring patterns, each then priced once."""
    if nbytes <= 1:
        return _priced_ring(device, shape, axis, size, kind, counts_key, nbytes)
    return _priced_ring(device, shape, axis, size, kind, counts_key, 1).scaled(nbytes)


@lru_cache(maxsize=1024)
def _priced_ring(
    device: Device,
    shape: tuple[int, int],
    axis: Axis,
    size: int,
    kind: RingKind,
    counts_key: bytes,
    nbytes: int,
) -> Traffic:
    """`_ring_traffic`; when every line moves alike (a MeshGEMM step), priced once on
    `traffic.one_line(P)` and put on the grid by `traffic.on_grid` (exact: a uniform step's
    arrays are the line's and its sums the line's times the lines, as `pattern_cache.per_line`
    prices patterns; tests/mesh/test_ring_lines.py), so a square grid's X and Y steps and any
    grid sharing the side share one pricing. Cached: each new block size scales it."""
    lines = shape[axis.other.tensor_dim]
    counts = np.frombuffer(counts_key, dtype=np.int64).reshape(2, lines)
    if lines > 1 and bool((counts == counts[:, :1]).all()):
        line_key = np.ascontiguousarray(counts[:, :1]).tobytes()
        num = shape[axis.tensor_dim]
        line = _ring_traffic(device, one_line(num), Axis.X, size, kind, line_key, nbytes)
        return on_grid(line, shape, axis)
    return _ring_traffic(device, shape, axis, size, kind, counts_key, nbytes)


@lru_cache(maxsize=1024)
def _index_tensor(shape: tuple[int, ...], raw: bytes, transpose: bool, device: str) -> torch.Tensor:
    """The int64 index tensor of a source map given as (shape, bytes); callers only read it."""
    src_of = np.frombuffer(raw, dtype=np.int64).reshape(shape)
    return torch.tensor(src_of.T if transpose else src_of, device=device)


def _permuted_meta(data: torch.Tensor) -> torch.Tensor:
    """A permutation of meta `data` (estimate mode): its shape and dtype, no data (torch.empty,
    not empty_like: its stride logic costs 10x, thousands per placement)."""
    return torch.empty(data.shape, dtype=data.dtype, device="meta")


def _gather_lines(data: torch.Tensor, axis: Axis, src_of: np.ndarray) -> torch.Tensor:
    """Position i of every line receives from src_of[i] ((L,)) or src_of[line, i] ((L, L))."""
    if data.is_meta:  # estimate mode: a permutation keeps the shape and there is no data
        return _permuted_meta(data)
    dim = axis.tensor_dim
    src_of = np.ascontiguousarray(src_of, dtype=np.int64)
    transpose = src_of.ndim == 2 and axis is not Axis.X
    index = _index_tensor(src_of.shape, src_of.tobytes(), transpose, data.device.type)
    if src_of.ndim == 1:
        return data.index_select(dim, index)
    index = index.reshape(*index.shape, *([1] * (data.dim() - 2))).expand_as(data)
    return torch.gather(data, dim, index)


@lru_cache(maxsize=1024)
def _directions(forward_key: bytes, lines: int, across: int) -> tuple[tuple[int, ...], bytes]:
    """(the ring directions used, counts as `_ring_traffic` keys them) of a step in which
    logical line j moves forward if forward[j] (a bool array's bytes), else backward."""
    forward = np.frombuffer(forward_key, dtype=bool)
    used = tuple(steps for steps, moving in ((1, forward), (-1, ~forward)) if moving.any())
    fwd = forward.reshape(lines, across).sum(axis=1).astype(np.int64)
    return used, np.stack([fwd, across - fwd]).tobytes()


@lru_cache(maxsize=1024)
def _step_directions(
    skew: bool, size: int, kind: RingKind, lines: int, across: int
) -> tuple[tuple[int, ...], bytes]:
    """`_directions` of a ring step (every logical line forward) or of a skew round (line j
    forward if its offset is positive), found once per grid and axis: every GEMM step and
    skew round asks, and building and hashing the L-byte key cost more than the charge."""
    forward = skew_offsets(size, kind) > 0 if skew else np.ones(size, dtype=bool)
    return _directions(forward.tobytes(), lines, across)


def require_step_routes(
    mesh: Mesh, grid: LogicalGrid, *, axis: Axis, kind: RingKind, skew: bool
) -> bytes:
    """Configure the routes a ring step (or, with `skew`, a skew round) along `axis` uses, as
    charging it does; its counts key (`_ring_traffic`)."""
    lines = mesh.size(axis.other)
    used, counts_key = _step_directions(skew, grid.size, kind, lines, grid.across(axis))
    if mesh.size(axis) > 1:
        for steps in used:
            mesh.routes.require(
                _route_name(axis, kind, steps), ring_routes_per_core(kind, grid.per(axis))
            )
    return counts_key


def _charge(
    mesh: Mesh,
    grid: LogicalGrid,
    data: torch.Tensor | torch.Size,
    *,
    axis: Axis,
    kind: RingKind,
    skew: bool,
    ledger: Ledger,
    op: str,
    phase: int,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> None:
    """Charge a ring step (every logical line forward) or, with `skew`, a skew round; each
    block's bytes as `stored` (compressed weights move as codes and scales)."""
    counts_key = require_step_routes(mesh, grid, axis=axis, kind=kind, skew=skew)
    if not ledger.prices:
        return
    shape = data if isinstance(data, torch.Size) else data.shape
    nbytes = tile_stored_bytes(stored, tuple(shape[2:]), mesh.device.storage_bytes)
    traffic = _ring_step_traffic(mesh.device, mesh.shape, axis, grid.size, kind, counts_key, nbytes)
    ledger.charge(op, Charge.comm(traffic), phase=phase)


def ring_step(
    mesh: Mesh,
    grid: LogicalGrid,
    data: torch.Tensor,
    *,
    axis: Axis,
    kind: RingKind,
    ledger: Ledger,
    op: str,
    phase: int = 0,
) -> torch.Tensor:
    """Advance every logical block (data: (L, L, *block)) one ring position along `axis`.

    On a square mesh this is exactly `comm.ring_shift`: interleaved, 2 hops and one block per
    link; plain, P-1 hops for the wrap-around. On a logical grid only the blocks whose
    successor lives on another core cross a link.
    """
    _charge(mesh, grid, data, axis=axis, kind=kind, skew=False, ledger=ledger, op=op, phase=phase)
    return _gather_lines(data, axis, ring_successor(grid.size, kind, -1))


def charge_ring_step(
    mesh: Mesh,
    grid: LogicalGrid,
    data: torch.Tensor | torch.Size,
    *,
    axis: Axis,
    kind: RingKind,
    ledger: Ledger,
    op: str,
    phase: int = 0,
    stored: StoredDtype = StoredDtype.FLOAT16,
) -> None:
    """Configure and charge `ring_step` of `data` without moving it: for a kernel that tracks
    where the ring has taken the blocks by index (`ring_index`) instead of copying them, or
    that knows only their shape (`data` a torch.Size: a closed form)."""
    _charge(
        mesh,
        grid,
        data,
        axis=axis,
        kind=kind,
        skew=False,
        ledger=ledger,
        op=op,
        phase=phase,
        stored=stored,
    )


@lru_cache(maxsize=1024)
def ring_index(size: int, kind: RingKind, steps: int, device: str) -> torch.Tensor:
    """`ring_successor(size, kind, steps)` as a cached int64 index tensor. After s ring steps,
    line position i holds the block that started at ring_index(.., -s)[i], and the block that
    started at position r is at ring_index(.., s)[r]."""
    dst = ring_successor(size, kind, steps)
    return _index_tensor(dst.shape, dst.tobytes(), False, device)


@lru_cache(maxsize=1024)
def skew_offsets(size: int, kind: RingKind) -> np.ndarray:
    """Signed ring steps that apply Cannon's skew to line j (rotate it back by pos(j)), the
    shorter way round: in (-L/2, L/2]. Cached, read-only: every skew round and every
    `align_a` of a grid asks for it (a function of its arguments only)."""
    offsets = shorter_way(-ring_position(size, kind), size)
    offsets.setflags(write=False)
    return offsets


@lru_cache(maxsize=1024)
def skew_rounds(size: int, kind: RingKind) -> int:
    """Rounds of the skew: the longest line's |offset|, floor(L/2) for L >= 2."""
    return int(np.abs(skew_offsets(size, kind)).max(initial=0))


def charge_skew_round(
    mesh: Mesh,
    grid: LogicalGrid,
    data: torch.Tensor | torch.Size,
    *,
    axis: Axis,
    kind: RingKind,
    ledger: Ledger,
    op: str,
    phase: int = 0,
) -> None:
    """Configure and charge one round of the skew along `axis` (data: (L, L, *block), or
    its shape).

    Logical line j (a row of blocks for axis X) moves one position in the direction of its
    offset while the round index < |offset_j|. As in the public code (code notes §1.5) every
    line keeps its collective going for all floor(L/2) rounds, finished lines re-sending a
    stale buffer, so every round is charged alike: the critical path is the same as stopping
    early (the longest line needs floor(L/2) rounds either way), and identical rounds are
    one ledger record with a count in estimate mode. `skew_moved` moves the data of all
    rounds at once.
    """
    _charge(mesh, grid, data, axis=axis, kind=kind, skew=True, ledger=ledger, op=op, phase=phase)


def skew_round(
    mesh: Mesh,
    grid: LogicalGrid,
    data: torch.Tensor,
    *,
    axis: Axis,
    kind: RingKind,
    round_index: int,
    ledger: Ledger,
    op: str,
) -> torch.Tensor:
    """Round `round_index` of the skew along `axis`, charged and moved (`charge_skew_round`)."""
    charge_skew_round(mesh, grid, data, axis=axis, kind=kind, ledger=ledger, op=op)
    if data.is_meta:  # estimate mode: no source map needed (`_gather_lines`)
        return _permuted_meta(data)
    return _gather_lines(data, axis, _skew_round_sources(grid.size, kind, round_index))


def skew_moved(data: torch.Tensor, *, axis: Axis, kind: RingKind) -> torch.Tensor:
    """The blocks after every round of the skew along `axis`, in one gather (uncharged): the
    rounds applied one after the other are the complete skew (`skew_sources`; a test composes
    the rounds for every size up to 80)."""
    if data.is_meta:  # estimate mode: no source map needed (`_gather_lines`)
        return _permuted_meta(data)
    return _gather_lines(data, axis, skew_sources(data.shape[axis.tensor_dim], kind))


@lru_cache(maxsize=1024)
def _skew_round_sources(size: int, kind: RingKind, round_index: int) -> np.ndarray:
    """src_of[j, i] of one skew round: lines still moving read from their ring neighbour on
    the side their offset points to, the others keep their blocks."""
    offsets = skew_offsets(size, kind)
    forward = offsets > 0
    moving = np.abs(offsets) > round_index
    pos = np.arange(size)
    src_of = np.where(
        moving[:, None],
        np.where(
            forward[:, None],
            ring_successor(size, kind, -1)[None, :],
            ring_successor(size, kind, 1)[None, :],
        ),
        pos[None, :],
    )
    src_of.setflags(write=False)
    return src_of


@lru_cache(maxsize=64)
def skew_sources(size: int, kind: RingKind) -> np.ndarray:
    """src_of[j, i]: where position i of line j reads from once the skew is complete,
    ringinv((r(i) + r(j)) mod L) (code notes §1.5, §1.6). Cached: every weight placed on a
    grid shares it (callers only read it)."""
    order, pos = ring_order(size, kind), ring_position(size, kind)
    return order[(pos[None, :] + pos[:, None]) % size]


def skewed(data: torch.Tensor, *, axis: Axis, kind: RingKind) -> torch.Tensor:
    """The complete skew along `axis` in one step, uncharged: for weights skewed on the host
    (meta weights, estimate mode: their shape, without the source map)."""
    if data.is_meta:
        return _permuted_meta(data)
    return _gather_lines(data, axis, skew_sources(data.shape[axis.tensor_dim], kind))
