"""Index arithmetic on the lines of a mesh for the communication primitives (`comm`).

Validated roots (one per line or one for all) and permutations, and the vectorised gathers
that move every line's tiles at once (index tensors cached per source map). No cost and no
routes live here.
Legend: P cores along the axis; a "line" is one row (axis X) or one column (axis Y).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.mesh.geometry import Axis
from waferllm.mesh.patterns import ArrayKey, key, unkey
from waferllm.mesh.virtual import Mesh


@lru_cache(maxsize=1024)
def _index_tensor(src_key: ArrayKey, transpose: bool, device: str) -> torch.Tensor:
    """The index tensor of a cached source map (callers only read it)."""
    src_of = unkey(src_key)
    return torch.tensor(src_of.T if transpose else src_of, device=device)


def line_index(mesh: Mesh, axis: Axis, src_of: np.ndarray, data: torch.Tensor) -> torch.Tensor:
    """Gather along `axis` so that position i receives from src_of[i] (per line if 2D)."""
    dim = axis.tensor_dim
    device = data.device.type
    if src_of.ndim == 1:
        return data.index_select(dim, _index_tensor(key(src_of), False, device))
    index = _index_tensor(key(src_of), axis is not Axis.X, device)
    index = index.reshape(*index.shape, *([1] * (data.dim() - 2))).expand_as(data)
    return torch.gather(data, dim, index)


def from_line(data: torch.Tensor, axis: Axis, source: int) -> torch.Tensor:
    """Every position of every line receives line position `source`'s tile: a copy of that
    tile held once for the line (a stride-0 view along `axis`, `mesh.replicas`)."""
    return data.narrow(axis.tensor_dim, source, 1).clone().expand_as(data)


def check_data(mesh: Mesh, data: torch.Tensor) -> None:
    if tuple(data.shape[:2]) != mesh.shape:
        raise WaferError(
            f"per-core data of shape {tuple(data.shape)} does not start with the mesh's "
            f"{mesh.rows}x{mesh.cols} cores"
        )


@lru_cache(maxsize=4096)
def _single_root(root: int) -> np.ndarray:
    roots = np.array([root], dtype=np.int64)
    roots.setflags(write=False)
    return roots


def line_roots(mesh: Mesh, axis: Axis, root: int | np.ndarray) -> np.ndarray:
    """`root` as an (1,) array (every line alike) or (L,) (one root per line), checked."""
    num = mesh.size(axis)
    if type(root) is int and 0 <= root < num:  # the common case, cached
        return _single_root(root)
    roots = np.asarray(root)
    lines = mesh.size(axis.other)
    if roots.dtype.kind not in "iu" or roots.ndim > 1:
        raise WaferError(f"a root is an int or one int per line, got {root!r}")
    if roots.ndim == 1 and roots.shape[0] not in (1, lines):
        raise WaferError(
            f"per-line roots along axis {axis.value} need one root for each of the {lines} "
            f"lines, got {roots.shape[0]}"
        )
    roots = np.atleast_1d(roots).astype(np.int64)
    if roots.min() < 0 or roots.max() >= num:
        raise WaferError(f"root out of range 0..{num - 1} along axis {axis.value}: {root!r}")
    return roots


def permutation(mesh: Mesh, axis: Axis, dst: np.ndarray) -> np.ndarray:
    """`dst` checked to be a permutation of the line's cores, (P,) or (lines, P)."""
    dst = np.asarray(dst)
    lines, num = mesh.size(axis.other), mesh.size(axis)
    if dst.dtype.kind not in "iu" or dst.shape not in ((num,), (lines, num)):
        raise WaferError(
            f"a shift along axis {axis.value} needs integer destinations shaped ({num},) or "
            f"({lines}, {num}), got {dst.dtype} {dst.shape}"
        )
    dst = dst.astype(np.int64)
    if not (np.sort(dst, axis=-1) == np.arange(num)).all():
        raise WaferError(f"shift destinations must be a permutation of 0..{num - 1}: {dst}")
    return dst
