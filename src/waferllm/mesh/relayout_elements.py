"""The element-by-element pricing of a re-layout: the oracle of `relayout.relayout_charge`.

Every element's source and destination line as arrays (`relayout.Move`): cuts by running sums
over the elements, counts per line by bincount, the cores where elements stay by their keys.
`relayout_charge` prices the same moves from their runs (`runs.py`); a test compares the two
charge for charge. Nothing in the package prices with this one.
"""

from __future__ import annotations

import numpy as np

from waferllm.device import Device
from waferllm.mesh.cost import Charge
from waferllm.mesh.relayout import (
    Move,
    _busiest,
    _Cells,
    _cross_cuts,
    _cut_charge,
    _pair_distance,
    _span,
)


def relayout_charge_elements(
    device: Device, moves: list[Move], *, bytes_per_element: float | None = None
) -> Charge:
    """`relayout.relayout_charge` of `moves`, element by element (its oracle): the same
    cost model over every element's source and destination line."""
    rows, cols = device.mesh_rows, device.mesh_cols
    cut_y = np.zeros((2, max(rows - 1, 0)))
    cut_x = np.zeros((2, max(cols - 1, 0)))
    ramp = moved = byte_hops = 0.0
    hops = 0
    lo_r, hi_r, lo_c, hi_c = rows, 0, cols, 0
    for m in moves:
        dst_r, dst_c = (m.b_dst, m.a_dst) if m.crossed else (m.a_dst, m.b_dst)
        src_r, src_c = m.a_src, m.b_src
        lo_r, hi_r = min(lo_r, src_r.min(), dst_r.min()), max(hi_r, src_r.max(), dst_r.max())
        lo_c, hi_c = min(lo_c, src_c.min(), dst_c.min()), max(hi_c, src_c.max(), dst_c.max())
        if m.crossed:
            # rows: source follows a, destination follows b; columns the other way round
            # elements per row and column at each end, counted once
            n_src_r, n_dst_r = _counts(src_r, rows), _counts(dst_r, rows)
            n_src_c, n_dst_c = _counts(src_c, cols), _counts(dst_c, cols)
            cut_y += m.count * _cross_cuts(n_src_r, n_dst_r)
            cut_x += m.count * _cross_cuts(n_src_c, n_dst_c)
            # element (a, b) stays home when a's (src row, dst col) equals b's (dst row, src col)
            stay = _stay_cells(src_r, dst_c, dst_r, src_c, cols)
            sent = _busiest(n_src_r, n_src_c, stay)
            received = _busiest(n_dst_r, n_dst_c, stay)
            count = len(src_r) * len(src_c) - int(stay.count.sum())
            dist = _pair_distance(n_src_r, n_dst_r) + _pair_distance(n_src_c, n_dst_c)
        else:
            cut_y += m.count * len(src_c) * _direct_cuts(src_r, dst_r, rows)
            cut_x += m.count * len(src_r) * _direct_cuts(src_c, dst_c, cols)
            stay_r, stay_c = src_r == dst_r, src_c == dst_c
            home = (_counts(src_r[stay_r], rows), _counts(src_c[stay_c], cols))
            sent = _busiest(_counts(src_r, rows), _counts(src_c, cols), home)
            home = (_counts(dst_r[stay_r], rows), _counts(dst_c[stay_c], cols))
            received = _busiest(_counts(dst_r, rows), _counts(dst_c, cols), home)
            count = len(src_r) * len(src_c) - int(stay_r.sum()) * int(stay_c.sum())
            dist = (
                len(src_c) * np.abs(src_r - dst_r).sum() + len(src_r) * np.abs(src_c - dst_c).sum()
            )
        if count == 0:
            continue
        ramp = max(ramp, m.count * max(sent, received))
        moved += m.count * count
        byte_hops += m.count * float(dist)
        if m.crossed:
            hops = max(hops, _span(src_r, dst_r) + _span(src_c, dst_c))
        else:
            hops = max(hops, int(np.abs(src_r - dst_r).max()) + int(np.abs(src_c - dst_c).max()))
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


def _direct_cuts(src: np.ndarray, dst: np.ndarray, length: int) -> np.ndarray:
    """(2, length-1): elements crossing each cut i|i+1 towards + and towards -."""
    up, down = dst > src, dst < src
    # +1 where a run of crossed cuts starts, -1 where it ends, then a running sum (integers)
    diff = np.stack(
        [
            np.bincount(src[up], minlength=length + 1) - np.bincount(dst[up], minlength=length + 1),
            np.bincount(dst[down], minlength=length + 1)
            - np.bincount(src[down], minlength=length + 1),
        ]
    )
    return np.cumsum(diff, axis=1)[:, : length - 1].astype(np.float64)


def _stay_cells(
    src_r: np.ndarray, dst_c: np.ndarray, dst_r: np.ndarray, src_c: np.ndarray, cols: int
) -> _Cells:
    """Elements (a, b) of a crossed move that stay home, per core: a's (src row, dst col)
    pairs times b's (dst row, src col) pairs on the same core."""
    first, first_count = _distinct_counts(src_r * cols + dst_c)
    second, second_count = _distinct_counts(dst_r * cols + src_c)
    cores, i, j = np.intersect1d(first, second, assume_unique=True, return_indices=True)
    count = first_count[i].astype(np.float64) * second_count[j].astype(np.float64)
    return _Cells(row=cores // cols, col=cores % cols, count=count)


def _distinct_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_counts=True) without its sort when `keys` is already in order
    (a block-split feature axis on both plans: the vocabulary table's 128K rows)."""
    if keys.size and bool((keys[1:] >= keys[:-1]).all()):
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        return keys[starts], np.diff(np.append(starts, keys.size))
    return np.unique(keys, return_counts=True)


def _counts(coords: np.ndarray, length: int) -> np.ndarray:
    return np.bincount(coords, minlength=length).astype(np.float64)
