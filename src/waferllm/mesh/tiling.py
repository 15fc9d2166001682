"""Tiling for the distributed GEMM kernels: the logical square grid a ring algorithm runs on,
local tile padding, and the views between physical tiles and logical blocks.

Cannon-style kernels need a square grid of blocks. On an R x C mesh they run on a logical
L x L grid, L = lcm(R, C) (SPEC.md §4): physical core (y, x) plays the a x b logical cores
(y*a + i, x*b + j), a = L/R, b = L/C, each owning one block of its tile. Only shapes and index
arithmetic live here: no communication, no cost.
Legend: R, C physical rows and columns; L the logical side; a, b logical rows per physical row
and logical columns per physical column; p, q the last two tile dims (split over Y and X).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from waferllm.errors import GridError
from waferllm.mesh.geometry import Axis

# SPEC.md §4: a logical grid is used only while lcm(R, C) <= LCM_FACTOR * max(R, C), which
# bounds the logical cores one physical core plays along its longer axis.
LCM_FACTOR = 4


@dataclasses.dataclass(frozen=True)
class LogicalGrid:
    """The L x L logical grid played by a rows x cols mesh (sizes computed once: a prefill
    reads them thousands of times)."""

    rows: int
    cols: int

    @functools.cached_property
    def size(self) -> int:
        return math.lcm(self.rows, self.cols)

    @functools.cached_property
    def per_row(self) -> int:
        """a: logical rows played by one physical row."""
        return self.size // self.rows

    @functools.cached_property
    def per_col(self) -> int:
        """b: logical columns played by one physical column."""
        return self.size // self.cols

    def per(self, axis: Axis) -> int:
        """Logical cores per physical core along `axis`."""
        return self.per_row if axis is Axis.Y else self.per_col

    def across(self, axis: Axis) -> int:
        """Logical lines along `axis` that one physical line carries."""
        return self.per(axis.other)


def grid_works(rows: int, cols: int) -> bool:
    return math.lcm(rows, cols) <= LCM_FACTOR * max(rows, cols)


def nearby_grids(
    rows: int, cols: int, *, max_rows: int, max_cols: int, count: int = 4
) -> list[tuple[int, int]]:
    """Up to `count` grids within two rows/columns of rows x cols that a ring kernel accepts,
    closest first (then the closest core count)."""
    found = [
        (r, c)
        for r in range(max(1, rows - 2), min(max_rows, rows + 2) + 1)
        for c in range(max(1, cols - 2), min(max_cols, cols + 2) + 1)
        if (r, c) != (rows, cols) and grid_works(r, c)
    ]
    found.sort(key=lambda g: (abs(g[0] - rows) + abs(g[1] - cols), abs(g[0] * g[1] - rows * cols)))
    return found[:count]


def logical_grid(
    rows: int, cols: int, *, algo: str, max_rows: int | None = None, max_cols: int | None = None
) -> LogicalGrid:
    """The logical grid `algo` runs on, or a GridError naming nearby grids that work."""
    if grid_works(rows, cols):
        return LogicalGrid(rows, cols)
    size = math.lcm(rows, cols)
    near = nearby_grids(
        rows, cols, max_rows=max_rows or rows + 2, max_cols=max_cols or cols + 2, count=4
    )
    listed = ", ".join(f"{r}x{c}" for r, c in near) or "a square grid"
    raise GridError(
        f"{algo} on a non-square {rows}x{cols} mesh pads to a logical {size}x{size} grid "
        f"(K padded to a multiple of lcm({rows}, {cols})), refused: lcm({rows}, {cols}) = "
        f"{size} > {LCM_FACTOR} x max({rows}, {cols}); nearby grids that work: {listed}"
    )


def padded_k(rows: int, cols: int, k: int) -> int:
    """The inner dimension a ring GEMM needs on a rows x cols mesh: k rounded up to a multiple
    of lcm(rows, cols), so that A's K tiles (over columns) and B's (over rows) cut K alike."""
    size = math.lcm(rows, cols)
    return -(-k // size) * size


# ---- tile padding and logical blocks -----------------------------------------------------------
def pad_last2(data: torch.Tensor, p_multiple: int, q_multiple: int) -> torch.Tensor:
    """Zero-pad the last two tile dims up to multiples (a local, per-core operation)."""
    p, q = data.shape[-2], data.shape[-1]
    extra_p = -p % p_multiple
    extra_q = -q % q_multiple
    if extra_p == 0 and extra_q == 0:
        return data
    return torch.nn.functional.pad(data, (0, extra_q, 0, extra_p))


def to_logical(data: torch.Tensor, grid: LogicalGrid) -> torch.Tensor:
    """(R, C, *t, a*p, b*q) physical tiles -> (L, L, *t, p, q) logical blocks.

    Logical row y*a + i takes the i-th slice of the tile's second-to-last dim, logical column
    x*b + j the j-th slice of its last dim. A view (no copy) on a square grid.
    """
    a, b = grid.per_row, grid.per_col
    if a == b == 1:
        return data
    rows, cols, *rest = data.shape
    *batch, ap, bq = rest
    assert ap % a == 0 and bq % b == 0, (data.shape, a, b)
    nb = len(batch)
    x = data.reshape(rows, cols, *batch, a, ap // a, b, bq // b)
    # dims: 0 R, 1 C, 2..2+nb batch, 2+nb a, 3+nb p, 4+nb b, 5+nb q
    perm = [0, 2 + nb, 1, 4 + nb, *range(2, 2 + nb), 3 + nb, 5 + nb]
    return x.permute(perm).reshape(grid.size, grid.size, *batch, ap // a, bq // b)


def to_blocks(logical: torch.Tensor, grid: LogicalGrid) -> torch.Tensor:
    """(L, L, *t, p, q) -> (R, C, a, b, *t, p, q): each core's logical blocks as batch dims
    (a view), the form per-core compute takes."""
    a, b = grid.per_row, grid.per_col
    rest = logical.shape[2:]
    x = logical.reshape(grid.rows, a, grid.cols, b, *rest)
    return x.permute(0, 2, 1, 3, *range(4, 4 + len(rest)))


def from_blocks(blocks: torch.Tensor, grid: LogicalGrid) -> torch.Tensor:
    """(R, C, a, b, *t, p, q) -> (R, C, *t, a*p, b*q) physical tiles."""
    rows, cols, a, b, *rest = blocks.shape
    *batch, p, q = rest
    nb = len(batch)
    perm = [0, 1, *range(4, 4 + nb), 2, 4 + nb, 3, 5 + nb]
    return blocks.permute(perm).reshape(rows, cols, *batch, a * p, b * q)
