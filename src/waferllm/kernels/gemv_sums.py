"""The allreduced outputs of a GEMV without its per-core partials (`gemv._gemv`).

`summed_products`: functional float32 GEMVs whose inputs are so arranged take one library
product per weight; `estimated_sums`: estimate mode's meta tiles of the outputs, made past the
shape-only mode (`meta.native`). Both give the outputs held once along the reduce axis, as the
allreduce leaves them; the kernel prices the products and the allreduce from their shapes.
Legend: T tokens, P cores along the reduce axis, Q along the other, Kt and Nt the tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import native
from waferllm.mesh.replicas import held_once, once, spread
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mesh, Mode


def summed_products(
    mesh: Mesh, x_tile: torch.Tensor, ws: Sequence[DistTensor], reduce_axis: Axis
) -> list[torch.Tensor] | None:
    """Functional float32 GEMVs whose allreduced result is one product per weight: where x is
    held once along the other axis (`replicas`) and every weight's tiles lie in its host order
    (`tensor.split_host`), the sum over the reduce axis of the cores' partials x_p @ W_p is
    x[T, P*Kt] @ W[P*Kt, Q*Nt], the whole (padded) matrix in one library product: no per-core
    partials, no allreduce sum. Each output is still the K products summed; only their order
    differs (in the last bit) from the partials' sum. Per weight (R, C, T, Nt_i), held once
    along the reduce axis; None where the operands are not so arranged."""
    line, other = reduce_axis.tensor_dim, reduce_axis.other.tensor_dim
    if mesh.mode is not Mode.FUNCTIONAL or mesh.compute_dtype != torch.float32:
        return None
    if x_tile.dtype != torch.float32 or not held_once(x_tile, other):
        return None
    if not all(_host_matrix(wi.data, line, other) is not None for wi in ws):
        return None
    x_line = once(x_tile, (other,)).squeeze(other)  # (P, T, Kt)
    t = x_line.shape[1]
    x_host = x_line.transpose(0, 1).reshape(t, -1)  # [T, P*Kt]
    sizes = {line: mesh.size(reduce_axis)}
    outs = []
    for wi in ws:
        w_host = _host_matrix(wi.values(), line, other)  # [P*Kt, Q*Nt] (a view)
        assert w_host is not None, "a widened weight keeps its tiles' memory order"
        y = (x_host @ w_host).reshape(t, mesh.size(reduce_axis.other), -1)  # (T, Q, Nt)
        tile = y.transpose(0, 1).contiguous().unsqueeze(line)  # (1, Q, T, Nt) or (Q, 1, T, Nt)
        outs.append(spread(tile, sizes))
    return outs


def estimated_sums(
    mesh: Mesh, x_tile: torch.Tensor, ws: Sequence[DistTensor], reduce_axis: Axis
) -> list[torch.Tensor] | None:
    """Estimate mode: the allreduced outputs' meta tiles without the partials, per weight (R,
    C, T, Nt_i) held once along the reduce axis as `allreduce` leaves them (priced as for
    `summed_products`); None unless x is in the weights' compute dtype (`values`)."""
    if x_tile.dtype != mesh.compute_dtype:
        return None
    line = reduce_axis.tensor_dim
    sizes = {line: mesh.size(reduce_axis)}
    tile = [mesh.rows, mesh.cols, x_tile.shape[-2]]
    tile[line] = 1
    with native():  # factory and view ops: torch's C++ meta kernels, past `shape_only`'s mode
        return [
            spread(
                torch.empty((*tile, wi.data.shape[-1]), dtype=x_tile.dtype, device="meta"), sizes
            )
            for wi in ws
        ]


def _host_matrix(w: torch.Tensor, line: int, other: int) -> torch.Tensor | None:
    """Tiles (R, C, Kt, Nt) whose reduce-axis lines hold consecutive Kt rows and whose other
    axis consecutive Nt columns of one strided matrix, as that matrix [P*Kt, Q*Nt] (a view);
    None otherwise."""
    if w.dim() != 4:
        return None
    by_line = w.permute(line, 2, other, 3)  # (P, Kt, Q, Nt)
    p, kt, q, nt = by_line.shape
    sp, sk, sq, sn = by_line.stride()
    row, col = sk if kt > 1 else sp, sn if nt > 1 else sq  # a size-1 dim's stride is free
    if (p > 1 and sp != kt * row) or (q > 1 and sq != nt * col):
        return None
    return by_line.as_strided((p * kt, q * nt), (row, col))


__all__ = ["estimated_sums", "summed_products"]
