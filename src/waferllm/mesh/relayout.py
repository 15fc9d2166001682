"""Re-layouts: data moving between regions and between plans, priced in the message model.

A `Move` lists elements going from one core to another in absolute device coordinates (the
prefill-to-decode hand-off of the KV cache and weights, a region-to-region hop). Unlike the
structured patterns of `patterns` (every message's route known), a bulk re-layout is a
redistribution whose streams the program spreads over every link crossing a cut: its `Traffic`
loads each link with its cut's bytes divided by the links that cross it (the bisection term),
and each ramp with the busiest core's bytes. The same message model (SPEC.md §10.6) prices it,
from each axis's runs of elements that move alike (`runs.py`; the element-by-element pricing,
its oracle, is `relayout_elements.py`).
Which tensors move where is the model's business (`model/transfers.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from waferllm.device import Device
from waferllm.mesh.comm import broadcast
from waferllm.mesh.cost import Charge, Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.run_terms import axis_terms, line_counts, run_ends
from waferllm.mesh.runs import LineShift, Runs
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.traffic import Traffic
from waferllm.mesh.virtual import Mesh


@dataclasses.dataclass(frozen=True, kw_only=True)
class Move:
    """Elements (a, b) of a tensor moving from core (a_row[a], b_col[b]) to
    (a_row2[a], b_col2[b]) when `crossed` is False, or to (b_row2[b], a_col2[a]) when True
    (a transposed placement). `count` copies move at once (layers, K and V)."""

    a_src: np.ndarray
    b_src: np.ndarray
    a_dst: np.ndarray
    b_dst: np.ndarray
    crossed: bool = False
    count: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunMove:
    """A `Move` with each axis run-length coded (`runs.Runs`): `a.length[i] * b.length[j]`
    elements go from core (a.src[i], b.src[j]) to (a.dst[i], b.dst[j]), or with `crossed` to
    (b.dst[j], a.dst[i]). What `relayout_charge` prices: its cost reads lines, not elements."""

    a: Runs
    b: Runs
    crossed: bool = False
    count: int = 1


def run_move(move: Move | RunMove) -> RunMove:
    """A move's runs (`Runs.of` its element arrays)."""
    if isinstance(move, RunMove):
        return move
    a, b = Runs.of(move.a_src, move.a_dst), Runs.of(move.b_src, move.b_dst)
    return RunMove(a=a, b=b, crossed=move.crossed, count=move.count)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Terms:
    """One move's share of a re-layout (`relayout_charge`), once."""

    cut_y: np.ndarray
    cut_x: np.ndarray
    ramp: float  # the busiest core's elements sent or received
    moved: int  # elements that change core
    dist: float  # element hops
    hops: int  # the farthest element's hops


def relayout_charge(
    device: Device, moves: Sequence[Move | RunMove], *, bytes_per_element: float | None = None
) -> Charge:
    """One communication step moving every element of `moves` at once.

    Cost: the farthest element's hops * alpha plus the busiest of (a) a bisection cut, its
    bytes spread over the links that cross it (a redistribution spreads over the whole cut of
    the cores involved), and (b) a core's ramp, sending or receiving its bytes. Elements whose
    core does not change cost nothing. Sizes in the storage dtype, or `bytes_per_element`
    for compressed data (`mesh.storage.bytes_per_element`: codes and their scales' share).
    Priced from each axis's runs: every count is a sum of run lengths, the same integers (and
    floats) as element by element (`relayout_elements.relayout_charge_elements`, the oracle).
    """
    rows, cols = device.mesh_rows, device.mesh_cols
    cut_y = np.zeros((2, max(rows - 1, 0)))
    cut_x = np.zeros((2, max(cols - 1, 0)))
    ramp = moved = byte_hops = 0.0
    hops = 0
    lo_r, hi_r, lo_c, hi_c = rows, 0, cols, 0
    for move in moves:
        m = run_move(move)
        (a_lo, a_hi, a_to_lo, a_to_hi), (b_lo, b_hi, b_to_lo, b_to_hi) = (
            run_ends(m.a),
            run_ends(m.b),
        )
        if m.crossed:  # rows: a's sources, b's destinations; columns the other way round
            a_to_lo, a_to_hi, b_to_lo, b_to_hi = b_to_lo, b_to_hi, a_to_lo, a_to_hi
        lo_r, hi_r = min(lo_r, a_lo, a_to_lo), max(hi_r, a_hi, a_to_hi)
        lo_c, hi_c = min(lo_c, b_lo, b_to_lo), max(hi_c, b_hi, b_to_hi)
        terms = _crossed_terms(m, rows, cols) if m.crossed else _direct_terms(m, rows, cols)
        cut_y += terms.cut_y
        cut_x += terms.cut_x
        if terms.moved == 0:
            continue
        ramp = max(ramp, m.count * terms.ramp)
        moved += m.count * terms.moved
        byte_hops += m.count * terms.dist
        hops = max(hops, terms.hops)
    return _cut_charge(
        device,
        moved=moved,
        byte_hops=byte_hops,
        hops=hops,
        ramp=ramp,
        cut_y=cut_y / (hi_c - lo_c + 1),
        cut_x=cut_x / (hi_r - lo_r + 1),
        bytes_per_element=bytes_per_element,
    )


def _direct_terms(m: RunMove, rows: int, cols: int) -> _Terms:
    """A move that keeps its axes (a along Y, b along X): `_pair_terms` with the count."""
    terms, scale_y, scale_x = _pair_terms(m.a, m.b, rows, cols)
    return _Terms(
        cut_y=m.count * scale_y * terms.cut_y,
        cut_x=m.count * scale_x * terms.cut_x,
        ramp=terms.ramp,
        moved=terms.moved,
        dist=terms.dist,
        hops=terms.hops,
    )


@functools.lru_cache(maxsize=128)  # moves repeat axes (every matmul's K) and pairs (gate, up)
def _pair_terms(a: Runs, b: Runs, rows: int, cols: int) -> tuple[_Terms, int, int]:
    """A direct move's terms of one copy, each axis's cuts unscaled, and their scales (the
    other axis's elements): each axis's cuts, counts per line and the lines where its
    elements stay. Reads only the two axes (immutable, keyed by identity) and the mesh's
    sides: the key is complete."""
    ya, xb = axis_terms(a, rows), axis_terms(b, cols)
    len_a, len_b = ya.total, xb.total
    home = (ya.home, xb.home)
    sent = _busiest(ya.per_src, xb.per_src, home)
    received = _busiest(ya.per_dst, xb.per_dst, home)
    stayed = ya.stayed * xb.stayed
    terms = _Terms(
        cut_y=ya.cuts,
        cut_x=xb.cuts,
        ramp=max(sent, received),
        moved=len_a * len_b - stayed,
        dist=float(len_b * ya.dist + len_a * xb.dist),
        hops=ya.hops + xb.hops,
    )
    return terms, len_b, len_a


def _crossed_terms(m: RunMove, rows: int, cols: int) -> _Terms:
    """A transposed move: rows follow a at the source and b at the destination, columns the
    other way round; every (a, b) pair's lines, from the elements per line at each end."""
    a, b = m.a, m.b
    n_src_r, n_dst_r = line_counts(a.src, a.length, rows), line_counts(b.dst, b.length, rows)
    n_src_c, n_dst_c = line_counts(b.src, b.length, cols), line_counts(a.dst, a.length, cols)
    # element (a, b) stays home when a's (src row, dst col) equals b's (dst row, src col)
    stay = _run_stay_cells(a, b, cols)
    return _Terms(
        cut_y=m.count * _cross_cuts(n_src_r, n_dst_r),
        cut_x=m.count * _cross_cuts(n_src_c, n_dst_c),
        ramp=max(_busiest(n_src_r, n_src_c, stay), _busiest(n_dst_r, n_dst_c, stay)),
        moved=a.total * b.total - int(stay.count.sum()),
        dist=float(_pair_distance(n_src_r, n_dst_r) + _pair_distance(n_src_c, n_dst_c)),
        hops=_span(a.src, b.dst) + _span(b.src, a.dst),
    )


def _run_stay_cells(a: Runs, b: Runs, cols: int) -> _Cells:
    """Elements (a, b) of a crossed move that stay home, per core: a's (src row, dst col)
    pairs times b's (dst row, src col) pairs on the same core."""
    first, first_count = _summed(a.src * cols + a.dst, a.length)
    second, second_count = _summed(b.dst * cols + b.src, b.length)
    cores, i, j = np.intersect1d(first, second, assume_unique=True, return_indices=True)
    return _Cells(row=cores // cols, col=cores % cols, count=first_count[i] * second_count[j])


def _summed(keys: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys (sorted) and the elements of each (float64, whole numbers); keys
    already distinct and in order (an axis split in blocks on both plans: its lines only
    grow) are their own, each with its run's elements, without a sort."""
    if keys.size and bool((keys[1:] > keys[:-1]).all()):
        return keys, length.astype(np.float64)
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, np.bincount(inverse, weights=length, minlength=distinct.size)


def concurrent_relayout_charge(
    device: Device,
    moves_per_device: Sequence[Sequence[Move | RunMove]],
    *,
    bytes_per_element: float | None = None,
) -> Charge:
    """Re-layouts on separate identical devices at the same time (multi-wafer `fit`): each
    device's moves priced by `relayout_charge` on its own mesh; the slowest is the cost."""
    charges = (
        relayout_charge(device, m, bytes_per_element=bytes_per_element) for m in moves_per_device
    )
    return max(charges, key=lambda c: c.cycles)


def _cut_charge(
    device: Device,
    *,
    moved: float,
    byte_hops: float,
    hops: int,
    ramp: float,
    cut_y: np.ndarray,
    cut_x: np.ndarray,
    bytes_per_element: float | None,
) -> Charge:
    """The re-layout as one step of the message model (elements in, bytes out): each cut's
    elements spread evenly over the links that cross it (`cut_*` already divided by their
    number), every line alike; the busiest ramp sends or receives `ramp` elements of
    `bytes_per_element` each (the storage dtype's size when None). Nothing moved: free."""
    if moved == 0:
        return Charge.comm(Traffic(device=device, shape=(device.mesh_rows, device.mesh_cols)))
    nbytes = float(device.storage_bytes) if bytes_per_element is None else bytes_per_element
    links = {
        (axis, direction): (cut[i] * nbytes)[None, :]
        for axis, cut in ((Axis.Y, cut_y), (Axis.X, cut_x))
        for i, direction in enumerate((+1, -1))
    }
    ramp_bytes = np.array([[ramp * nbytes]])
    return Charge.comm(
        Traffic(
            device=device,
            shape=(device.mesh_rows, device.mesh_cols),
            critical_hops=int(hops),
            bytes_injected=int(moved * nbytes),
            link_byte_hops=int(byte_hops * nbytes),
            links=links,
            ramp_in=ramp_bytes,
            ramp_out=ramp_bytes,
        )
    )


@dataclasses.dataclass(frozen=True)
class _Cells:
    """Elements per core, sparse: `count[i]` on core (row[i], col[i]), none elsewhere."""

    row: np.ndarray
    col: np.ndarray
    count: np.ndarray


def _busiest(
    per_row: np.ndarray, per_col: np.ndarray, home: _Cells | tuple[np.ndarray, np.ndarray]
) -> float:
    """max over cores of outer(per_row, per_col) - home (elements that stay put).

    `home` is sparse (`_Cells`) or a pair of vectors whose outer product it is; it never
    exceeds the outer product, so cores outside the product's support hold 0. The counts are
    integers (exact in float64), and the max is taken over the distinct values only: cores
    grouped by (count, home count) per row and column, or by count where nothing stays.
    First, without grouping: where a core of the largest row count and the largest column
    count keeps nothing home, the max is their product (counts and home counts are
    nonnegative and rounding is monotone: no core's value exceeds it, the same float).
    """
    r, c = np.flatnonzero(per_row), np.flatnonzero(per_col)
    if r.size == 0 or c.size == 0:
        return 0.0
    top = _top_product(per_row, per_col, home)
    if top is not None:
        return top
    if isinstance(home, tuple):
        rows, rows_home = _distinct_pairs(per_row[r], home[0][r])
        cols, cols_home = _distinct_pairs(per_col[c], home[1][c])
        block = np.outer(rows, cols) - np.outer(rows_home, cols_home)
        return float(block.max(initial=0.0))
    # cores where something stays, one by one; the others by (row count, column count) group
    staying = per_row[home.row] * per_col[home.col] - home.count
    row_values, row_group, row_sizes = np.unique(
        per_row[r], return_inverse=True, return_counts=True
    )
    col_values, col_group, col_sizes = np.unique(
        per_col[c], return_inverse=True, return_counts=True
    )
    group_of_row = np.zeros(len(per_row), dtype=np.int64)
    group_of_row[r] = row_group
    group_of_col = np.zeros(len(per_col), dtype=np.int64)
    group_of_col[c] = col_group
    taken = np.zeros((len(row_values), len(col_values)), dtype=np.int64)
    np.add.at(taken, (group_of_row[home.row], group_of_col[home.col]), 1)
    empty = taken < np.outer(row_sizes, col_sizes)  # groups with a core where nothing stays
    block = np.where(empty, np.outer(row_values, col_values), 0.0)
    return float(max(block.max(initial=0.0), staying.max(initial=0.0)))


def _top_product(
    per_row: np.ndarray, per_col: np.ndarray, home: _Cells | tuple[np.ndarray, np.ndarray]
) -> float | None:
    """The product of the largest row and column counts if a core holding both keeps no
    element home (then it is `_busiest`'s max), else None."""
    most_row, most_col = per_row.max(), per_col.max()
    top_r, top_c = per_row == most_row, per_col == most_col
    if isinstance(home, tuple):
        free = not (home[0][top_r].all() and home[1][top_c].all())
    else:  # distinct cores: fewer of them among the top cores than top cores
        tops = int(np.count_nonzero(top_r)) * int(np.count_nonzero(top_c))
        free = int(np.count_nonzero(top_r[home.row] & top_c[home.col])) < tops
    return float(most_row * most_col) if free else None


def _distinct_pairs(count: np.ndarray, home: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (count, home count) pairs of integer-valued float arrays (one sort of
    int64 keys; home <= count < 2**31)."""
    assert count.max(initial=0) < 2**31  # elements per row or column of one tensor
    key = np.unique((count.astype(np.int64) << 31) | home.astype(np.int64))
    return (key >> 31).astype(np.float64), (key & (2**31 - 1)).astype(np.float64)


def _cross_cuts(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Like `_direct_cuts` for every pair (i, j) moving from a source to a destination, given
    the elements per position at each end (whole numbers, the products exact):
    (2, length-1) pairs crossing each cut towards + and towards -."""
    src_before, dst_before = np.cumsum(src)[:-1], np.cumsum(dst)[:-1]  # at or before the cut
    forward = src_before * (dst.sum() - dst_before)
    backward = (src.sum() - src_before) * dst_before
    return np.stack([forward, backward])


def _pair_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Sum over all pairs (i, j) of |p_i - q_j|, given the elements per position."""
    # sum_i sum_j |p_i - q_j| = sum over cuts of (left of a * right of b + right of a * left of b)
    left_a, left_b = np.cumsum(a)[:-1], np.cumsum(b)[:-1]
    return float((left_a * (b.sum() - left_b) + (a.sum() - left_a) * left_b).sum())


def _span(src: np.ndarray, dst: np.ndarray) -> int:
    """Farthest move along one axis over all pairs (src[i], dst[j])."""
    if not len(src) or not len(dst):
        return 0
    return int(max(abs(int(src.max()) - int(dst.min())), abs(int(dst.max()) - int(src.min()))))


# ---- the residual stream between regions (SPEC.md §10.10) -------------------------------------
def _replicated_along_x(x: DistTensor) -> bool:
    return x.layout.x_dim is None and x.mesh.cols > 1


def _entry_columns(x: DistTensor, dst_origin: tuple[int, int]) -> tuple[int, int]:
    """For a hop along X of a tensor replicated along X: the edge column that sends and the
    destination column it enters (nearest the other region), in local coordinates."""
    east = dst_origin[1] > x.mesh.origin[1]
    return (x.mesh.cols - 1, 0) if east else (0, x.mesh.cols - 1)


def hop_charge(device: Device, x: DistTensor, dst_origin: tuple[int, int]) -> Charge:
    """Every core's tile of `x` to the core at the same offset of a region at `dst_origin`;
    a tensor replicated along X hopping along X sends one copy per row from the edge column."""
    edge = None
    if _replicated_along_x(x) and x.mesh.origin[0] == dst_origin[0]:
        edge = _entry_columns(x, dst_origin)
    return _hop_charge(
        device, x.mesh.origin, dst_origin, x.mesh.shape, edge, math.prod(x.tile_shape)
    )


@functools.lru_cache(maxsize=512)  # a walk hops the same regions request after request
def _hop_charge(
    device: Device,
    src_origin: tuple[int, int],
    dst_origin: tuple[int, int],
    shape: tuple[int, int],
    edge: tuple[int, int] | None,
    count: int,
) -> Charge:
    """`hop_charge` of a rows x cols region from `src_origin` to `dst_origin`, `count`
    elements per core, from the `edge` column (sending, entered) or every column: the move
    reads nothing else of the tensor, so the key is complete (the Charge is immutable)."""
    (y0, x0), (y1, x1) = src_origin, dst_origin
    rows, cols = shape
    b = _shift(cols, x0, x1) if edge is None else _shift(1, x0 + edge[0], x1 + edge[1])
    return relayout_charge(device, [RunMove(a=_shift(rows, y0, y1), b=b, count=count)])


@functools.lru_cache(maxsize=256)  # hops share axes: one object each, its terms read once
def _shift(lines: int, src: int, dst: int) -> LineShift:
    """`lines` consecutive lines from `src` on to as many from `dst` on, one element each
    (immutable runs: a function of the three numbers)."""
    return LineShift.moving(lines, src, dst)


def hop(device: Device, x: DistTensor, dst: Mesh, ledger: Ledger, *, op: str) -> DistTensor:
    """Move the residual stream `x` to mesh `dst` (same shape, another region), charged."""
    assert dst.shape == x.mesh.shape
    ledger.charge(op, hop_charge(device, x, dst.origin))
    moved = dst.register(x.data, x.layout, x.name)
    replicated = _replicated_along_x(x) and x.mesh.origin[0] == dst.origin[0]
    entry = _entry_columns(x, dst.origin)[1]
    x.free()
    if replicated:  # the entry column multicasts the copy along its row
        data = broadcast(dst, moved.data, axis=Axis.X, root=entry, ledger=ledger, op=f"{op}.bcast")
        moved = moved.replace(data)
    return moved
