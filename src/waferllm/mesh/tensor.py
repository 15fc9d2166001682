"""Distributed tensors: every core's tile in one torch tensor shaped (rows, cols, *tile).

Core (y, x) owns `data[y, x]`. A `Layout` says which logical dimension is split along Y (over
rows) and which along X (over columns); an axis with no dimension holds replicas (the paper's
`L_y E_x`, `E_y L^x`). Logical sizes that do not divide the grid are padded with zeros at the
end of the split dimension; `Layout.shape` keeps the true sizes. No communication here.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import TYPE_CHECKING

import torch

from waferllm.errors import WaferError
from waferllm.mesh.geometry import Axis
from waferllm.mesh.storage import StoredDtype, tile_stored_bytes

if TYPE_CHECKING:
    from waferllm.mesh.virtual import Mesh


@dataclasses.dataclass(frozen=True)
class Layout:
    """Logical shape and which of its dimensions is split over each mesh axis.

    `tag` names a kernel-specific arrangement of the tiles (e.g. "meshgemm_b_aligned": the
    tiles of B pre-skewed for MeshGEMM), empty for the plain block layout.
    """

    shape: tuple[int, ...]
    y_dim: int | None = None
    x_dim: int | None = None
    tag: str = ""

    def __post_init__(self) -> None:
        for dim in (self.y_dim, self.x_dim):
            if dim is not None and not 0 <= dim < len(self.shape):
                raise WaferError(f"layout dim {dim} out of range for shape {self.shape}")
        if self.y_dim is not None and self.y_dim == self.x_dim:
            raise WaferError(f"layout splits dim {self.y_dim} over both axes")

    def dim_of(self, axis: Axis) -> int | None:
        return self.y_dim if axis is Axis.Y else self.x_dim

    def tile_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        tile = list(self.shape)
        for dim, parts in ((self.y_dim, rows), (self.x_dim, cols)):
            if dim is not None:
                tile[dim] = math.ceil(self.shape[dim] / parts)
        return tuple(tile)

    def padded_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        tile = list(self.tile_shape(rows, cols))
        for dim, parts in ((self.y_dim, rows), (self.x_dim, cols)):
            if dim is not None:
                tile[dim] *= parts
        return tuple(tile)

    def with_tag(self, tag: str) -> Layout:
        return dataclasses.replace(self, tag=tag)


@dataclasses.dataclass
class DistTensor:
    """All tiles of one logical tensor on a mesh, with its layout and SRAM registration."""

    data: torch.Tensor  # (rows, cols, *tile)
    layout: Layout
    mesh: Mesh
    name: str
    sram_key: str | None = None
    stored: StoredDtype = StoredDtype.FLOAT16  # how its tiles are stored (compressed weights)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:])

    @property
    def tile_numel(self) -> int:
        return math.prod(self.tile_shape)

    @property
    def tile_bytes(self) -> int:
        """Bytes of one tile as stored (the device's storage dtype, or compressed codes and
        scales: `mesh.storage`)."""
        return tile_stored_bytes(self.stored, self.tile_shape, self.mesh.device.storage_bytes)

    def values(self) -> torch.Tensor:
        """The tiles in the mesh's compute dtype, what kernels compute with: weights may be
        held narrower where that is exact (`Mesh.scatter`'s `dtype`), widened here per use.
        A no-op for everything else; a widened weight is valid until the next one is widened
        (a kernel computes with one weight at a time)."""
        dtype = self.mesh.compute_dtype
        return self.data if self.data.dtype == dtype else _widened(self.data, dtype)

    def free(self) -> None:
        if self.sram_key is not None:
            self.mesh.sram.free(self.sram_key)
            self.sram_key = None

    def replace(self, data: torch.Tensor, layout: Layout | None = None) -> DistTensor:
        """Same registration, new contents (an in-place update on every core)."""
        assert data.shape[:2] == self.data.shape[:2]
        layout = layout or self.layout
        return DistTensor(data, layout, self.mesh, self.name, self.sram_key, self.stored)


_WORKSPACE = threading.local()  # per thread: the CPU buffer weights are widened into


def _widened(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`data` as `dtype`. On the CPU into one reused buffer: a fresh allocation of a weight's
    size costs more in page faults than the conversion itself (4-6x, measured); a GPU's
    caching allocator reuses its blocks anyway."""
    if data.device.type != "cpu":
        return data.to(dtype)
    buffer = getattr(_WORKSPACE, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < data.numel():
        _WORKSPACE.buffer = buffer = None  # free the old one before allocating
        buffer = torch.empty(data.numel(), dtype=dtype)
        _WORKSPACE.buffer = buffer
    flat = buffer[: data.numel()]
    if data.is_contiguous():
        return flat.view(data.shape).copy_(data)
    # a matrix held in its host order (`split_host`): widened in the same order
    strides = data.stride()
    order = sorted(range(data.dim()), key=lambda d: -strides[d])
    dense = data.permute(order)
    if not dense.is_contiguous():  # not one dense block (a stride-0 view): a copy of its own
        return data.to(dtype)
    return flat.view(dense.shape).copy_(dense).permute(_inverse(order))


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return inverse


def split_host(host: torch.Tensor, layout: Layout, rows: int, cols: int) -> torch.Tensor:
    """Host tensor (logical shape) -> (rows, cols, *tile), padding split dims with zeros; an
    axis without a split dim holds one copy (a stride-0 view along it)."""
    if tuple(host.shape) != layout.shape:
        raise WaferError(
            f"tensor of shape {tuple(host.shape)} does not match layout {layout.shape}"
        )
    padded = layout.padded_shape(rows, cols)
    pad: list[int] = []
    for size, target in zip(reversed(host.shape), reversed(padded), strict=True):
        pad += [0, target - size]
    x = torch.nn.functional.pad(host, pad) if any(pad) else host
    tile = layout.tile_shape(rows, cols)
    # view every split dim d as (parts, tile_d), then bring the parts to the front
    view: list[int] = []
    parts_pos: dict[str, int] = {}
    for dim, size in enumerate(tile):
        if dim == layout.y_dim:
            parts_pos["y"] = len(view)
            view += [rows, size]
        elif dim == layout.x_dim:
            parts_pos["x"] = len(view)
            view += [cols, size]
        else:
            view.append(size)
    x = x.reshape(view)
    rest = [i for i in range(len(view)) if i not in parts_pos.values()]
    order = [parts_pos.get("y"), parts_pos.get("x")]
    present = [i for i in order if i is not None]
    x = x.permute(*present, *rest)
    if len(tile) == 2 and len(present) == 2:
        # a matrix split both ways keeps its host order, each line's tiles side by side and
        # k-major along the line: what one product per line reads (`compute`)
        x = x if x.data_ptr() != host.data_ptr() else x.clone()
    else:
        x = x.clone(memory_format=torch.contiguous_format)
    # replicas are one tile held for the line: stride-0 views (`mesh.replicas`)
    if layout.y_dim is None:
        x = x.unsqueeze(0).expand(rows, *x.shape)
    if layout.x_dim is None:
        x = x.unsqueeze(1).expand(x.shape[0], cols, *x.shape[1:])
    return x


def join_tiles(data: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(rows, cols, *tile) -> logical host tensor; replicas read from row/column 0."""
    x = data
    if layout.x_dim is None:
        x = x[:, :1]
    if layout.y_dim is None:
        x = x[:1]
    tile = data.shape[2:]
    # move the part axes next to their dims, then merge
    ndim = len(tile)
    perm: list[int] = []
    for dim in range(ndim):
        if dim == layout.y_dim:
            perm.append(0)
        if dim == layout.x_dim:
            perm.append(1)
        perm.append(dim + 2)
    leftover = [a for a in (0, 1) if a not in perm]
    x = x.permute(*leftover, *perm)
    # the leftover (replica) axes have size 1 and vanish in the reshape
    x = x.reshape(_merged(x.shape[len(leftover) :], layout, ndim))
    index = tuple(slice(0, s) for s in layout.shape)
    return x[index]


def _merged(shape: torch.Size, layout: Layout, ndim: int) -> list[int]:
    out: list[int] = []
    i = 0
    for dim in range(ndim):
        if dim in (layout.y_dim, layout.x_dim):
            out.append(shape[i] * shape[i + 1])
            i += 2
        else:
            out.append(shape[i])
            i += 1
    return out
