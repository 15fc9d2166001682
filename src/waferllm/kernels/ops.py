"""The transformer's non-GEMM ops on the mesh: RMSNorm, softmax, RoPE, SiLU-gated product,
residual add, attention masks, embedding lookup and the on-mesh argmax.

Each op takes distributed tensors, works in both modes (meta tensors in estimate mode), is
vectorised over the cores, masks the zero padding of ragged splits wherever it could leak, and
charges its local vector instructions and its collectives to the caller's ledger. GEMVs are in
`gemv.py`; which tensor lives where is the model's business (`model/placement.py`).
Legend: T tokens, D hidden, S rotated head-dim slice of one core, V vocab; the "reduce axis" is
the mesh axis a reduced logical dim is split on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from waferllm.errors import WaferError
from waferllm.kernels.gemv import best_ktree_fanouts
from waferllm.mesh.comm import ReduceAlgorithm, ReduceOp, allreduce, broadcast, segmented_allreduce
from waferllm.mesh.compute import charge_compute, vector_op_cycles
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode

# Cost of one element of each op, in FLOPs (exp, rsqrt and division count as one each) and in
# storage elements moved through SRAM (reads + writes of streamed operands).
SQUARE_ACC = (2, 1)  # acc += x*x: read x
SCALE_MUL = (2, 3)  # y = (x * r) * w: read x, w; write y
MAX_ACC = (1, 1)  # m = max(m, x)
EXP_SUB = (2, 2)  # e = exp(s - m): read s, write e
SUM_ACC = (1, 1)  # acc += e
DIVIDE = (1, 2)  # p = e / sum
MASK_SELECT = (1, 3)  # s = keep ? s : -inf: read s, keep; write s
ROTATE = (3, 4)  # x*cos + rot(x)*sin: read x, cos, sin; write
SILU_MUL = (4, 3)  # gate / (1 + exp(-gate)) * up: read gate, up; write
ADD = (1, 3)
SCALE = (1, 2)  # s *= c: read s, write s
COPY = (0, 2)


# ---- shared helpers -----------------------------------------------------------------------------
def _charge(
    mesh: Mesh, ledger: Ledger, op: str, *, rows: int, length: int, cost: tuple[int, int]
) -> None:
    """`rows` vector instructions of `length` elements on every core (SPEC.md §3 roofline)."""
    if not ledger.prices:
        return
    flops, sram = cost
    cycles = vector_op_cycles(
        mesh.device,
        num_instructions=rows,
        length=length,
        flops_per_element=flops,
        sram_elements_per_element=sram,
    )
    charge_compute(mesh, ledger, op, cycles=cycles, flops_per_core=rows * length * flops)


def _as(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`data.to(dtype)` without a call into torch when it already has that dtype."""
    return data if data.dtype == dtype else data.to(dtype)


def _axis_of(layout: Layout, dim: int) -> Axis | None:
    for axis in (Axis.Y, Axis.X):
        if layout.dim_of(axis) == dim:
            return axis
    return None


def _mesh_allreduce(
    mesh: Mesh,
    data: torch.Tensor,
    *,
    axis: Axis,
    ledger: Ledger,
    op: str,
    reduce_op: ReduceOp,
    algorithm: ReduceAlgorithm,
    group_sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Allreduce small per-core vectors: the K-tree (default fan-outs of `gemv`), a chain to the
    middle core then a broadcast (`pipeline`, the prefill plan's X reduce), the ring, or a
    segmented chain per group of consecutive cores (`group_sizes`, per kv-group)."""
    if group_sizes is not None:
        return segmented_allreduce(
            mesh,
            data,
            axis=axis,
            group_sizes=tuple(int(g) for g in group_sizes),
            ledger=ledger,
            op=op,
            reduce_op=reduce_op,
        )
    num = mesh.size(axis)
    fanouts = best_ktree_fanouts(mesh.device, num) if algorithm is ReduceAlgorithm.KTREE else None
    return allreduce(
        mesh,
        data,
        axis=axis,
        ledger=ledger,
        op=op,
        algorithm=algorithm,
        root=num // 2 if algorithm is ReduceAlgorithm.PIPELINE else None,
        fanouts=fanouts,
        reduce_op=reduce_op,
    )


def tile_positions(
    tensor: DistTensor, dim: int, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """int64 tensor broadcastable to `tensor.data`: for every tile entry along logical `dim`,
    `positions[i]` of its logical index i (i itself when `positions` is None), -1 on padding.

    Shape: (rows or 1, cols or 1, 1, ..., tile[dim], ..., 1). In estimate mode the values are
    unknown (meta)."""
    mesh, layout = tensor.mesh, tensor.layout
    ndim = len(layout.shape)
    dim = dim % ndim
    tile = tensor.tile_shape[dim]
    axis = _axis_of(layout, dim)
    shape = [1, 1] + [1] * ndim
    shape[2 + dim] = tile
    if axis is not None:
        shape[axis.tensor_dim] = mesh.size(axis)
    if mesh.mode is Mode.ESTIMATE:
        return torch.empty(shape, dtype=torch.int64, device="meta")
    index = torch.arange(tile)
    if axis is not None:
        index = torch.arange(mesh.size(axis))[:, None] * tile + index[None, :]
    size = layout.shape[dim]
    valid = index < size
    if positions is not None:
        if tuple(positions.shape) != (size,):
            raise WaferError(f"positions of shape {tuple(positions.shape)} for a dim of {size}")
        values = positions.to(torch.int64)[index.clamp(max=size - 1)]
    else:
        values = index
    return torch.where(valid, values, torch.full_like(values, -1)).reshape(shape)


def _valid(tensor: DistTensor, dim: int) -> torch.Tensor | None:
    """Bool mask of the non-padding entries along `dim` (None when `dim` has no padding)."""
    layout = tensor.layout
    dim = dim % len(layout.shape)
    if not _is_padded(layout, *tensor.mesh.shape, dim):
        return None
    return tile_positions(tensor, dim) >= 0


@lru_cache(maxsize=1024)
def _is_padded(layout: Layout, rows: int, cols: int, dim: int) -> bool:
    """Whether `dim` is split and its tiles end in zero padding on a rows x cols mesh."""
    padded = layout.padded_shape(rows, cols)[dim]
    return _axis_of(layout, dim) is not None and padded != layout.shape[dim]


def _layout(shape: tuple[int, ...], placement: dict[Axis | None, int]) -> Layout:
    """A plain layout from {mesh axis: logical dim} (a None key is ignored)."""
    return Layout(shape, y_dim=placement.get(Axis.Y), x_dim=placement.get(Axis.X))


def _lead_count(data: torch.Tensor, dim: int) -> int:
    """Vector instructions per core for an op along tile dim `dim`: the other tile dims."""
    tile = data.shape[2:]
    return math.prod(tile) // tile[dim] if tile[dim] else 0


# ---- normalisation ------------------------------------------------------------------------------
def rms_norm(
    mesh: Mesh,
    *,
    x: DistTensor,
    weight: DistTensor,
    ledger: Ledger,
    eps: float,
    op: str = "rmsnorm",
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
) -> DistTensor:
    """RMSNorm over the last (hidden) dim D, exactly as transformers' LlamaRMSNorm.

    Layout: x[*T, D] with D split along one axis A (or local), any split of T; weight[D] with
    D split along A, replicated along the other axis -> a new tensor in x's layout.
    Schedule: local sum of squares (T instructions of Dt), allreduce of one scalar per token
    along A, r = rsqrt(sum / D_true + eps) (T instructions of 1), y = w * (x * r) (T of Dt).
    Padded entries are masked out of the sum; the divisor is the true D.
    Cost: T*[max(floor, 2Dt/F, Dt*s/S) + floor + max(floor, 2Dt/F, 3Dt*s/S)] + allreduce(T*s).
    """
    d_dim = len(x.layout.shape) - 1
    axis = _axis_of(x.layout, d_dim)
    d_true = x.layout.shape[d_dim]
    if weight.layout.shape != (d_true,) or _axis_of(weight.layout, 0) != axis:
        raise WaferError(
            f"RMSNorm weight '{weight.name}' {weight.layout} must be [{d_true}] split like the "
            f"hidden dim of '{x.name}' ({x.layout})"
        )
    dtype = x.data.dtype
    xf = _as(x.data, torch.float32)
    valid = _valid(x, d_dim)
    if valid is not None:
        xf = torch.where(valid, xf, 0.0)
    rows, dt = _lead_count(x.data, d_dim), x.data.shape[-1]
    _charge(mesh, ledger, f"{op}.sum_squares", rows=rows, length=dt, cost=SQUARE_ACC)
    sum_sq = (xf * xf).sum(dim=-1, keepdim=True)
    if axis is not None:
        sum_sq = _mesh_allreduce(
            mesh,
            sum_sq,
            axis=axis,
            ledger=ledger,
            op=f"{op}.allreduce",
            reduce_op=ReduceOp.SUM,
            algorithm=algorithm,
        )
    _charge(mesh, ledger, f"{op}.rsqrt", rows=rows, length=1, cost=(2, 2))
    scale = torch.rsqrt(sum_sq / d_true + eps)
    w = weight.data  # [Dt] tiles, aligned with x's last dim
    if x.data.dim() > 3:
        w = w.reshape(*mesh.shape, *([1] * (x.data.dim() - 3)), dt)
    _charge(mesh, ledger, f"{op}.scale", rows=rows, length=dt, cost=SCALE_MUL)
    out = w * _as(xf * scale, dtype)
    return mesh.register(_as(out, dtype), x.layout, f"{op}.out")


# ---- softmax ------------------------------------------------------------------------------------
def softmax(
    mesh: Mesh,
    *,
    scores: DistTensor,
    ledger: Ledger,
    dim: int = -1,
    axis: Axis | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    group_sizes: Sequence[int] | None = None,
    op: str = "softmax",
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
) -> DistTensor:
    """Softmax over logical `dim` of `scores`, in place (the output reuses the scores' buffer).

    Layout: any; `dim`'s tiles are combined along `axis` (default: the axis `dim` is split on;
    None there means a local softmax). `group_sizes` makes the reductions segmented: each run of
    consecutive cores along `axis` (e.g. one kv-group's columns) is its own softmax.
    Schedule (true exp, max from -inf): [s *= scale]; [s = keep ? s : -inf]; local max;
    allreduce-max (one value per softmax row); e = exp(s - max); local sum; allreduce-sum;
    p = e / sum. `mask` (bool, broadcastable to `scores.data`, True = keep) and the padding of
    `dim` are -inf; a row with nothing kept gives zeros. Computed in float32, stored in the
    compute dtype (transformers' eager attention does the same).
    Cost: R instructions of St per pass, R = other tile entries, St = tile of `dim`:
    R*[max-acc + exp + sum-acc + divide (+ scale, + select)] + 2 allreduces of R*s bytes.
    """
    ndim = len(scores.layout.shape)
    dim = dim % ndim
    if axis is None:
        axis = _axis_of(scores.layout, dim)
    tile_dim = 2 + dim
    s = _as(scores.data, torch.float32)
    rows, length = _lead_count(scores.data, dim), scores.tile_shape[dim]
    if scale is not None:
        _charge(mesh, ledger, f"{op}.scale", rows=rows, length=length, cost=SCALE)
        s = s * scale
    keep = _valid(scores, dim)
    if mask is not None:
        _charge(mesh, ledger, f"{op}.mask", rows=rows, length=length, cost=MASK_SELECT)
        keep = mask if keep is None else keep & mask
    if keep is not None:
        s = torch.where(keep, s, -math.inf)

    def reduce_line(local: torch.Tensor, reduce_op: ReduceOp, name: str) -> torch.Tensor:
        if axis is None:
            return local
        return _mesh_allreduce(
            mesh,
            local,
            axis=axis,
            ledger=ledger,
            op=f"{op}.{name}",
            reduce_op=reduce_op,
            algorithm=algorithm,
            group_sizes=group_sizes,
        )

    _charge(mesh, ledger, f"{op}.max", rows=rows, length=length, cost=MAX_ACC)
    row_max = reduce_line(s.amax(dim=tile_dim, keepdim=True), ReduceOp.MAX, "allreduce_max")
    row_max = torch.nan_to_num(row_max, nan=0.0, posinf=0.0, neginf=0.0)  # no finite max: 0
    _charge(mesh, ledger, f"{op}.exp", rows=rows, length=length, cost=EXP_SUB)
    e = torch.exp(s - row_max)
    _charge(mesh, ledger, f"{op}.sum", rows=rows, length=length, cost=SUM_ACC)
    total = reduce_line(e.sum(dim=tile_dim, keepdim=True), ReduceOp.SUM, "allreduce_sum")
    _charge(mesh, ledger, f"{op}.divide", rows=rows, length=length, cost=DIVIDE)
    p = e / torch.where(total > 0, total, 1.0)
    return scores.replace(_as(p, scores.data.dtype))


# ---- attention masks ----------------------------------------------------------------------------
def causal_mask(
    *,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Which (query, key) pairs attend: 0 <= key <= query and, with a window W, query - key < W
    (transformers' causal mask and sliding-window overlay). Positions are int64 tensors
    broadcastable to each other (from `tile_positions`, or a KV cache's per-slot positions);
    -1 marks padding or an empty slot and never attends. Free: the hardware applies it through
    the select in `softmax`, which is charged there.
    """
    if sliding_window is not None and sliding_window < 1:
        raise WaferError(f"sliding_window must be >= 1, got {sliding_window}")
    keep = (key_positions >= 0) & (query_positions >= 0) & (key_positions <= query_positions)
    if sliding_window is not None:
        keep = keep & (query_positions - key_positions < sliding_window)
    return keep


def score_mask(
    scores: DistTensor,
    *,
    query_dim: int,
    key_dim: int,
    query_positions: torch.Tensor | None = None,
    key_positions: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal (and sliding-window) mask of a score tensor's tiles, e.g. prefill's S[Tq, Tk]
    blocks: positions default to the logical indices of `query_dim` and `key_dim`."""
    return causal_mask(
        query_positions=tile_positions(scores, query_dim, query_positions),
        key_positions=tile_positions(scores, key_dim, key_positions),
        sliding_window=sliding_window,
    )


# ---- RoPE ---------------------------------------------------------------------------------------
def rope_tile_size(head_dim: int, num_tiles: int) -> int:
    """Entries per tile after `rope_pair_permutation`: 2 * ceil(head_dim / 2 / num_tiles)."""
    if head_dim < 2 or head_dim % 2 or num_tiles < 1:
        raise WaferError(
            f"RoPE needs an even head_dim >= 2 and num_tiles >= 1, got {head_dim}, {num_tiles}"
        )
    return 2 * math.ceil(head_dim // 2 / num_tiles)


def rope_pair_permutation(head_dim: int, num_tiles: int) -> torch.Tensor:
    """Where each slot of a head's permuted layout comes from (SPEC.md §10.8).

    transformers' `rotate_half` pairs dim i with i + head_dim/2. Tile t of the permuted head
    holds dims [c_t, c_t + h) in its first half and [c_t + H, c_t + H + h) in its second half
    (H = head_dim/2, h = rope_tile_size/2, c_t = t*h), so every pair sits in one tile and
    rotating a tile is rotate_half of that tile. Returns int64 of length num_tiles * tile_size;
    -1 marks padding (only when num_tiles does not divide head_dim/2); otherwise it is a true
    permutation. Apply the same one to the rows of W_q and W_k (and their biases) and to the
    cos/sin tables (`permute_padded`): q.k is unchanged.
    """
    half_tile = rope_tile_size(head_dim, num_tiles) // 2
    half = head_dim // 2
    first = torch.arange(num_tiles)[:, None] * half_tile + torch.arange(half_tile)[None, :]
    first = torch.where(first < half, first, torch.full_like(first, -1))
    second = torch.where(first >= 0, first + half, first)
    return torch.cat([first, second], dim=1).reshape(-1)


def permute_padded(tensor: torch.Tensor, index: torch.Tensor, *, dim: int = 0) -> torch.Tensor:
    """`tensor` re-ordered along `dim` by `index` (from `rope_pair_permutation`), zeros at -1."""
    picked = tensor.index_select(dim, index.clamp(min=0))
    shape = [1] * tensor.dim()
    shape[dim] = len(index)
    keep = (index >= 0).reshape(shape)
    return torch.where(keep, picked, torch.zeros((), dtype=tensor.dtype))


def rope_cos_sin(
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    *,
    num_tiles: int,
    attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host cos/sin tables [T, num_tiles * tile] in the permuted order, as transformers builds
    them (float32: emb = cat(freqs, freqs), cos = cos(emb) * scaling). `inv_freq` [head_dim/2]
    comes from the caller (llama3 scaling included); padding slots hold cos = sin = 0."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    index = rope_pair_permutation(2 * inv_freq.shape[0], num_tiles)
    cos = permute_padded(emb.cos() * attention_scaling, index, dim=1)
    sin = permute_padded(emb.sin() * attention_scaling, index, dim=1)
    return cos, sin


def rope(
    mesh: Mesh,
    *,
    x: DistTensor,
    cos: DistTensor,
    sin: DistTensor,
    ledger: Ledger,
    op: str = "rope",
) -> DistTensor:
    """Rotate q or k in place: x*cos + rotate_half(x)*sin on every core's slice, in x's dtype.

    Layout: x's tiles end in one permuted head-dim slice of S entries (first halves, then
    second halves: `rope_pair_permutation`), e.g. [T, n_rep, S]; cos/sin tiles [*T, S] in the
    same order, broadcast over x's extra (head) dims. No communication.
    Cost: R instructions of S, R = x's other tile entries: R*max(floor, 3S/F, 4S*s/S_bw).
    """
    size = x.tile_shape[-1]
    for table in (cos, sin):
        if table.tile_shape[-1] != size or len(table.tile_shape) > len(x.tile_shape):
            raise WaferError(
                f"RoPE table '{table.name}' tiles {table.tile_shape} do not match "
                f"'{x.name}' tiles {x.tile_shape}"
            )
    if size % 2:
        raise WaferError(f"RoPE needs an even slice per core, '{x.name}' has {size}")
    extra = len(x.tile_shape) - len(cos.tile_shape)

    def aligned(t: DistTensor) -> torch.Tensor:
        return _as(t.data.reshape(*t.data.shape[:-1], *([1] * extra), size), x.data.dtype)

    data = x.data
    # rotate_half(x) * sin = [x2, x1] * ([-1, 1] * sin): (-a)*b and a*(-b) are the same float
    swapped = data.roll(size // 2, dims=-1)
    sin_signed = aligned(sin) * _rotation_signs(size, data.dtype, data.device.type)
    _charge(mesh, ledger, op, rows=_lead_count(data, -1), length=size, cost=ROTATE)
    return x.replace(data * aligned(cos) + swapped * sin_signed)


@lru_cache(maxsize=64)
def _rotation_signs(size: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[-1] * (size/2) + [1] * (size/2): rotate_half's signs (callers only read it)."""
    half = size // 2
    return torch.tensor([-1.0] * half + [1.0] * half, dtype=dtype, device=device)


# ---- elementwise --------------------------------------------------------------------------------
def _check_same_layout(a: DistTensor, b: DistTensor, op: str) -> None:
    if a.layout != b.layout or a.mesh is not b.mesh:
        raise WaferError(f"{op}: '{a.name}' {a.layout} and '{b.name}' {b.layout} must match")


def silu_mul(
    mesh: Mesh, *, gate: DistTensor, up: DistTensor, ledger: Ledger, op: str = "silu_mul"
) -> DistTensor:
    """The gated FFN's SiLU(gate) * up, in place into `gate`'s buffer (free `up` afterwards).

    Layout: gate and up identical (decode: [*T, F] split along X). Zero padding stays zero.
    Cost: R instructions of the last tile dim: R*max(floor, 4L/F, 3L*s/S).
    """
    _check_same_layout(gate, up, op)
    data = torch.nn.functional.silu(gate.data) * up.data
    _charge(mesh, ledger, op, rows=_lead_count(data, -1), length=gate.tile_shape[-1], cost=SILU_MUL)
    return gate.replace(data)


def add(mesh: Mesh, *, x: DistTensor, y: DistTensor, ledger: Ledger, op: str = "add") -> DistTensor:
    """Residual add x + y, in place into `x`'s buffer (the residual stream). Same layouts.
    Cost: R instructions of the last tile dim: R*max(floor, L/F, 3L*s/S)."""
    _check_same_layout(x, y, op)
    _charge(mesh, ledger, op, rows=_lead_count(x.data, -1), length=x.tile_shape[-1], cost=ADD)
    return x.replace(x.data + y.data)


# ---- embedding and argmax -----------------------------------------------------------------------
def embed(
    mesh: Mesh,
    *,
    ids: torch.Tensor,
    table: DistTensor,
    ledger: Ledger,
    tokens_axis: Axis | None = None,
    op: str = "embed",
) -> DistTensor:
    """Embedding lookup on the mesh: the line owning each token's row extracts it and multicasts
    it along the vocab axis A.

    Layout: table[V_A, D_B] (vocab split along A, hidden along the other axis B, or replicated);
    ids[T] on the host -> out[T, D_B] with T replicated along A (decode, `E_y L^x` when A = X)
    or split along A when `tokens_axis` is A (prefill, `L_y E_x` when A = Y).
    Cost (independent of the ids, so estimate mode charges the same): T row copies of Dt on the
    owners, then T pipelined multicasts charged from the end of the line, the worst case:
    T*max(floor, 2Dt*s/S) + (P_A-1)*alpha + T*Dt*s/link.
    """
    if len(table.layout.shape) != 2 or _axis_of(table.layout, 0) is None:
        raise WaferError(
            f"embedding table '{table.name}' must be [V, D] with V split: {table.layout}"
        )
    axis = _axis_of(table.layout, 0)
    assert axis is not None
    if tokens_axis is not None and tokens_axis is not axis:
        raise WaferError(f"tokens can only be split along the vocab axis {axis.value}")
    vocab, hidden = table.layout.shape
    num_tokens = int(ids.shape[0])
    vt, dt = table.tile_shape
    if mesh.mode is Mode.FUNCTIONAL:
        if ids.dim() != 1 or ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise WaferError(f"token ids must be a 1-D tensor of values in [0, {vocab})")
        owner, local = ids // vt, ids % vt
        if axis is Axis.Y:  # [T, cols, Dt] -> [rows, cols, T, Dt]
            picked = table.data[owner, :, local, :].permute(1, 0, 2).unsqueeze(0)
        else:  # [rows, T, Dt] -> [rows, cols, T, Dt]
            picked = table.data[:, owner, local, :].unsqueeze(1)
        rows_data = picked.expand(*mesh.shape, num_tokens, dt).contiguous()
    else:
        rows_data = torch.empty(
            (*mesh.shape, num_tokens, dt), dtype=table.data.dtype, device="meta"
        )
    _charge(mesh, ledger, f"{op}.extract", rows=num_tokens, length=dt, cost=COPY)
    # every line holds the same rows now; the multicast is priced from the worst-case root
    rows_data = broadcast(mesh, rows_data, axis=axis, root=0, ledger=ledger, op=f"{op}.bcast")
    placement = {_axis_of(table.layout, 1): 1, tokens_axis: 0}
    layout = _layout((num_tokens, hidden), placement)
    if tokens_axis is None:
        return mesh.register(rows_data, layout, f"{op}.out")
    tt = layout.tile_shape(*mesh.shape)[0]
    num = mesh.size(axis)
    padded = torch.nn.functional.pad(rows_data, (0, 0, 0, num * tt - num_tokens))
    blocks = padded.reshape(*mesh.shape, num, tt, dt)
    # core i along A keeps token block i: the diagonal of (core index, block index)
    if axis is Axis.Y:
        mine = blocks.diagonal(0, 0, 2).permute(3, 0, 1, 2)
    else:
        mine = blocks.diagonal(0, 1, 2).permute(0, 3, 1, 2)
    return mesh.register(mine.contiguous(), layout, f"{op}.out")


def argmax(
    mesh: Mesh,
    *,
    logits: DistTensor,
    ledger: Ledger,
    op: str = "argmax",
    algorithm: ReduceAlgorithm = ReduceAlgorithm.KTREE,
) -> DistTensor:
    """Greedy token selection on the mesh: torch.argmax over the last (vocab) dim, ties to the
    lowest index, padded vocab entries -inf.

    Layout: logits[*T, V] with V split along A -> int64 ids[*T] replicated along A (T keeps its
    split along the other axis, if any). Schedule: local max and first index (R instructions of
    Vt); allreduce-max of the values (one per token); each core offers its global index where
    its value equals the maximum; allreduce-max of the negated index (32-bit: two words).
    Cost: R*max(floor, Vt/F, Vt*s/S) + allreduce(R*s) + allreduce(2R*s).
    """
    v_dim = len(logits.layout.shape) - 1
    axis = _axis_of(logits.layout, v_dim)
    vt = logits.tile_shape[-1]
    values = _as(logits.data, torch.float32)
    valid = _valid(logits, v_dim)
    if valid is not None:
        values = torch.where(valid, values, -math.inf)
    _charge(mesh, ledger, f"{op}.local", rows=_lead_count(values, -1), length=vt, cost=MAX_ACC)
    best, local = values.max(dim=-1, keepdim=True)
    if axis is not None:
        offset = torch.arange(mesh.size(axis), device=local.device) * vt
        shape = [1] * local.dim()
        shape[axis.tensor_dim] = mesh.size(axis)
        index = local + offset.reshape(shape)
        top = _mesh_allreduce(
            mesh,
            best,
            axis=axis,
            ledger=ledger,
            op=f"{op}.allreduce_max",
            reduce_op=ReduceOp.MAX,
            algorithm=algorithm,
        )
        lowest = torch.iinfo(torch.int64).min
        offer = torch.where(best == top, -index, lowest)
        # a 32-bit index travels as two 16-bit words
        offer = offer.expand(*offer.shape[:-1], 2)
        index = -_mesh_allreduce(
            mesh,
            offer,
            axis=axis,
            ledger=ledger,
            op=f"{op}.allreduce_index",
            reduce_op=ReduceOp.MAX,
            algorithm=algorithm,
        )[..., :1]
    else:
        index = local
    lead = logits.layout
    out_layout = Layout(
        lead.shape[:-1],
        y_dim=lead.y_dim if lead.y_dim != v_dim else None,
        x_dim=lead.x_dim if lead.x_dim != v_dim else None,
    )
    return mesh.register(index.squeeze(-1).contiguous(), out_layout, f"{op}.out")
