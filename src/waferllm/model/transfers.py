"""Which data moves between regions and between plans, priced by `mesh.relayout`.

`kv_moves` and `weight_moves` describe the prefill-to-decode hand-off of the KV cache and, with one
resident layout, of the weights (SPEC.md §10.4 `transition_s`), element by element in absolute
device coordinates, so the cost sees the real distances between the two plans' regions;
`charge_transition` prices a batch's hand-off with them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter

import numpy as np

from waferllm.kernels.dequant import quantise_cycles
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.compute import charge_inline_compute
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.relayout import Move, RunMove, concurrent_relayout_charge, hop_charge
from waferllm.mesh.runs import Steps, block_steps, placed, steps_of
from waferllm.mesh.storage import bytes_per_element
from waferllm.mesh.tensor import DistTensor
from waferllm.model.family import Dim, LayerTensor, matmuls
from waferllm.model.kv_cache import RowCounts
from waferllm.model.pipeline import device_count
from waferllm.model.placement import (
    Phase,
    PlacementMode,
    ResidentLayouts,
    head_slot_index,
    head_slots_per_column,
    heads_for,
    layer_specs,
)
from waferllm.model.plan import ModelPlan, wide_enough


def per_layer_hops(plan: ModelPlan, x: DistTensor, ledger: Ledger) -> None:
    """`per-layer` placement: the activation hops to the next layer's region, which the
    paper's method places beside this one, num_layers - 1 times."""
    layers = plan.config.num_hidden_layers
    if plan.placement is not PlacementMode.PER_LAYER or layers < 2:
        return
    y, x0 = x.mesh.origin
    east = x0 + x.mesh.cols
    # the neighbouring region is notional (the paper measures one layer): price the hop
    # on a device wide enough to hold it, whatever the grid
    device = wide_enough(plan.device, east + x.mesh.cols)
    with ledger.repeat(layers - 1):
        ledger.charge("layer_hop", hop_charge(device, x, (y, east)))


# ---- the prefill -> decode hand-off ------------------------------------------------------------
def _layer_groups(plan: ModelPlan, on_device: int) -> Counter[tuple[int, int]]:
    """(prefill region, decode region) of every placed layer on device `on_device`, counted
    (a layer's two regions are on the same device: `pipeline.py`)."""
    # per-layer placement holds one layer that stands for all (`layer_multiplier`)
    layers = range(1 if plan.layer_multiplier > 1 else plan.config.num_hidden_layers)
    groups: Counter[tuple[int, int]] = Counter()
    for i in layers:
        prefill, decode = plan.prefill.region_of(i), plan.decode.region_of(i)
        if decode.device == on_device:
            groups[(prefill.index, decode.index)] += 1
    return groups


@functools.lru_cache(maxsize=512)  # per head layout: a grid side recurs across plans
def _slots(heads: HeadLayout, dim: Dim) -> tuple[np.ndarray, int]:
    """The padded slot of every feature of head dim `dim` (checkpoint order), by inverting
    the layout's slot index, and the slots per column: the oracle's (`elements`) way;
    the pricing's is `_feature_slots`."""
    index = head_slot_index(heads, dim)
    real = index >= 0
    out = np.empty(int(index.max()) + 1, dtype=np.int64)
    out[index[real]] = np.flatnonzero(real)
    out.setflags(write=False)
    return out, head_slots_per_column(heads, dim)


def _feature_columns(plan: ModelPlan, cols: int, dim: Dim, *, elements: bool) -> Steps:
    heads = heads_for(plan.config, cols)
    return _columns_of(heads, dim) if elements else _slot_columns(heads, dim)


@functools.lru_cache(maxsize=512)  # per head layout: a grid side recurs across plans
def _feature_slots(heads: HeadLayout, dim: Dim) -> tuple[np.ndarray, np.ndarray]:
    """(column, slot within the column's tile) of every feature of head dim `dim` in
    checkpoint order: its unit's column (`_unit_columns`), and its place in that column's
    tile (`HeadLayout`: q [G, n, H], a pair's halves at slots e and e + H/2; k [G, H]; v
    [G, Hv]; the attention output [G, n, Hv]), computed feature by feature (what `_slots`
    finds by inverting the slot index, without building it)."""
    n = heads.n_rep if dim in (Dim.Q, Dim.O) else 1
    hd = heads.head_dim
    kv_heads = int(heads.first_kv[-1] + heads.num_kv[-1])
    head, within = np.divmod(np.arange(kv_heads * n * hd), hd)
    kv, r = np.divmod(head, n)
    if dim in (Dim.Q, Dim.KV):
        half = hd // 2
        upper, pair = np.divmod(within, half)
        col = _unit_columns(heads, dim).expand()[kv * half + pair]
        e, width = pair - heads.first_pair[col] + upper * heads.pairs_per_tile, heads.head_slots
    else:
        col = _unit_columns(heads, dim).expand()[kv * hd + within]
        e, width = within - heads.first_vdim[col], heads.value_slots
    return col, ((kv - heads.first_kv[col]) * n + r) * width + e


@functools.lru_cache(maxsize=512)
def _slot_columns(heads: HeadLayout, dim: Dim) -> Steps:
    """`_columns_of` from `_feature_slots`."""
    return steps_of(_feature_slots(heads, dim)[0])


def _unit_columns(heads: HeadLayout, dim: Dim) -> Steps:
    """The column of each unit of head dim `dim`, units in (kv head, RoPE pair) order for q
    and k, (kv head, value dim) order for v and the attention output: one object for q and
    k (and one for v and the output), so the hand-off joins q's and k's units once
    (`runs.joint` remembers the steps it was asked by identity)."""
    return _unit_steps(heads, pairs=dim in (Dim.Q, Dim.KV))


@functools.lru_cache(maxsize=512)  # per head layout: a grid side recurs across plans
def _unit_steps(heads: HeadLayout, *, pairs: bool) -> Steps:
    """`_unit_columns` of the RoPE pairs or the value dims: a column holds its kv heads'
    whole units, consecutive columns the next ones (`HeadLayout`: a kv head's columns split
    its pairs, and its value dims, in order; or a column holds whole kv heads), so the steps
    are the columns' unit counts, without an element array."""
    per_head = heads.num_pairs if pairs else heads.num_vdims
    counts = heads.num_kv * per_head
    held = np.flatnonzero(counts)
    return Steps((np.cumsum(counts) - counts)[held], held, int(counts.sum()))


def _features_per_unit(heads: HeadLayout, dim: Dim) -> int:
    """The features of `dim` that sit with each unit of `_unit_columns` on every grid: a pair
    is two features of each of the kv head's n query heads (q) or of its k; a value dim is one
    feature of its v, or of each query head's attention output."""
    return {Dim.Q: 2 * heads.n_rep, Dim.KV: 2, Dim.V: 1, Dim.O: heads.n_rep}[dim]


@functools.lru_cache(maxsize=512)
def _columns_of(heads: HeadLayout, dim: Dim) -> Steps:
    """The column of each real feature of head dim `dim` in checkpoint order, as steps (the
    features of a head's RoPE pair halves interleave columns: no block split), from the
    oracle's `_slots` (the pricing's: `_slot_columns`)."""
    slots, width = _slots(heads, dim)
    return steps_of(slots // width)


@dataclasses.dataclass(frozen=True)
class _Axis:
    """One axis of a move: its source and destination lines (steps within the regions), the
    regions' origins along it, and the elements each step element stands for (`per_unit`:
    `_unit_columns`' units; 1 for an axis of elements)."""

    src: Steps
    dst: Steps
    at_src: int
    at_dst: int
    per_unit: int = 1


def _columns_axis(
    plan: ModelPlan, dim: Dim, src: tuple[int, int], dst: tuple[int, int], *, elements: bool
) -> _Axis:
    """The axis of `dim` split over `src` = (lines, origin) at the source and `dst` at the
    destination (`_columns`): a head dim in units moving alike (`_unit_columns`), or with
    `elements` (the oracle's input) feature by feature."""
    if dim.is_heads and not elements:
        src_heads, dst_heads = (heads_for(plan.config, lines) for lines, _ in (src, dst))
        per_unit = _features_per_unit(src_heads, dim)
        src_units, dst_units = _unit_columns(src_heads, dim), _unit_columns(dst_heads, dim)
        return _Axis(src_units, dst_units, src[1], dst[1], per_unit)
    src_lines, dst_lines = (
        _columns(plan, dim, lines, elements=elements) for lines, _ in (src, dst)
    )
    return _Axis(src_lines, dst_lines, src[1], dst[1])


def _move(
    a: _Axis, b: _Axis, *, crossed: bool = False, count: int = 1, elements: bool = False
) -> Move | RunMove:
    """A move from each axis's (source, destination) lines: its runs (what the pricing
    reads), or with `elements` every element's lines (the oracle's input: `relayout_elements`)."""
    if elements:
        assert a.per_unit == b.per_unit == 1, "an oracle's axes list every element"
        a_src, a_dst, b_src, b_dst = (
            steps.expand(by)
            for axis in (a, b)
            for steps, by in ((axis.src, axis.at_src), (axis.dst, axis.at_dst))
        )
        return Move(
            a_src=a_src, a_dst=a_dst, b_src=b_src, b_dst=b_dst, crossed=crossed, count=count
        )
    a_runs, b_runs = (
        placed(axis.src, axis.dst, axis.at_src, axis.at_dst, axis.per_unit) for axis in (a, b)
    )
    return RunMove(a=a_runs, b=b_runs, crossed=crossed, count=count)


def kv_moves(
    plan: ModelPlan,
    counts: RowCounts,
    *,
    on_device: int = 0,
    chunk_tokens: int | None = None,
    elements: bool = False,
) -> list[Move | RunMove]:
    """K and V of every layer on device `on_device`: prefill [L_y, kv_x] on its prefill
    region (or one [T_y, kv_x] per chunk of a chunked prefill) to the balanced rows and the
    head columns of its decode region; only the positions the cache keeps (the last ones
    under a sliding window). `elements`: see `_move`."""
    (pr, pc), (dr, dc) = plan.prefill.grid, plan.decode.grid
    src_row = _source_rows(counts, pr, chunk_tokens)
    dst_row = steps_of(np.repeat(np.arange(dr), counts.counts))
    moves: list[Move | RunMove] = []
    for (p, d), n in _layer_groups(plan, on_device).items():
        (py, px), (dy, dx) = plan.prefill.regions[p].origin, plan.decode.regions[d].origin
        moves.extend(
            _move(
                _Axis(src_row, dst_row, py, dy),
                _columns_axis(plan, dim, (pc, px), (dc, dx), elements=elements),
                count=n * plan.layer_multiplier,
                elements=elements,
            )
            for dim in (Dim.KV, Dim.V)  # k in RoPE pairs, v in its value slots
        )
    return moves


def kv_quantise_cycles(plan: ModelPlan, counts: RowCounts) -> float:
    """A compressed cache's hand-off quantises the prompt's k and v where prefill left them
    (they travel compressed): every prefill core its ceil(L/R) tokens of G heads x H (k) and
    x Hv (v) slots, for each layer of the busiest region (`kernels.dequant.quantise_cycles`)."""
    stored = plan.storage.kv
    if not stored.compressed:
        return 0.0
    rows, cols = plan.prefill.grid
    heads = heads_for(plan.config, cols)
    tokens = -(-counts.total // rows)
    layers = max(len(r.layers) for r in plan.prefill.regions) * plan.layer_multiplier
    per_layer = sum(
        quantise_cycles(plan.device, stored, reduced=slots, other=heads.kv_per_tile * tokens)
        for slots in (heads.head_slots, heads.value_slots)
    )
    return layers * per_layer


def _source_rows(counts: RowCounts, rows: int, chunk_tokens: int | None) -> Steps:
    """The prefill row of every kept position: its chunk's tokens split over the rows."""
    end = counts.end
    if chunk_tokens is None and counts.evicted == 0:
        return block_steps(end, rows)
    chunk = chunk_tokens or end
    position = counts.evicted + np.arange(counts.total)
    start = position // chunk * chunk
    tile = -(-np.minimum(chunk, end - start) // rows)  # ceil(chunk length / R)
    return steps_of((position - start) // tile)


def weight_moves(
    plan: ModelPlan, *, on_device: int = 0, elements: bool = False
) -> list[Move | RunMove]:
    """Every layer's matrices on device `on_device` from the prefill plan ([K_y, N_x],
    MeshGEMM tiles) to the decode plan (GEMV tiles: [K_y, N_x], or [K_x, N_y] for W_o and
    W_down), and, on the last device, the vocabulary table from [V_y, D_x] to [V_x, D_y].
    The prefill tiles' pre-alignment skew (a permutation within each column) is not modelled;
    vectors (norms, biases: < 1% of the bytes) are not charged. `elements`: see `_move`."""
    cfg = plan.config
    (pr, pc), (dr, dc) = plan.prefill.grid, plan.decode.grid
    specs = layer_specs(cfg, pr, pc, Phase.PREFILL)
    # the family's matmuls, those reducing along Y first, then the transposed ones
    tensors = sorted(matmuls(cfg), key=lambda t: t.decode_reduce is Axis.X)
    moves: list[Move | RunMove] = []
    for (p, dreg), n in _layer_groups(plan, on_device).items():
        origins = (plan.prefill.regions[p].origin, plan.decode.regions[dreg].origin)
        count = n * plan.layer_multiplier
        moves.extend(
            _matmul_move(plan, t, specs[t.name].shape[0], origins, count, elements=elements)
            for t in tensors
        )
    if on_device != plan.decode.regions[-1].device:
        return moves
    (py, px), (dy, dx) = plan.prefill.regions[-1].origin, plan.decode.regions[-1].origin
    d, v = cfg.hidden_size, cfg.vocab_size
    vocab = _Axis(block_steps(v, pr), block_steps(v, dc), py, dx)
    hidden = _Axis(block_steps(d, pc), block_steps(d, dr), px, dy)
    moves.append(_move(vocab, hidden, crossed=True, elements=elements))
    return moves


def _columns(plan: ModelPlan, dim: Dim, cols: int, *, elements: bool = False) -> Steps:
    """The column (or row) of each feature of `dim` split over `cols` (heads: `HeadLayout`;
    with `elements`, the oracle's way)."""
    if dim.is_heads:
        return _feature_columns(plan, cols, dim, elements=elements)
    return block_steps(dim.size(plan.config), cols)


def _matmul_move(
    plan: ModelPlan,
    t: LayerTensor,
    padded: int,
    origins: tuple[tuple[int, int], tuple[int, int]],
    count: int,
    *,
    elements: bool,
) -> Move | RunMove:
    """One matmul W[in, out] from its prefill MeshGEMM tiles ([K_y, N_x], K padded to
    `padded`) to its decode GEMV tiles ([K_y, N_x], or [K_x, N_y] when it reduces along X)."""
    assert t.in_ is not None
    pc, (dr, dc) = plan.prefill.grid[1], plan.decode.grid
    (py, px), (dy, dx) = origins
    k_src = _k_rows(plan, t.in_, padded, elements=elements)
    if t.decode_reduce is Axis.X:  # decode: K along X, N along Y (crossed)
        k = _Axis(k_src, _columns(plan, t.in_, dc, elements=elements), py, dx)
        n = _columns_axis(plan, t.out, (pc, px), (dr, dy), elements=elements)
        return _move(k, n, crossed=True, count=count, elements=elements)
    k = _Axis(k_src, _columns(plan, t.in_, dr, elements=elements), py, dy)
    n = _columns_axis(plan, t.out, (pc, px), (dc, dx), elements=elements)
    return _move(k, n, count=count, elements=elements)


def _k_rows(plan: ModelPlan, dim: Dim, padded: int, *, elements: bool) -> Steps:
    """The prefill row of each feature of a matmul's K = `dim` (`_padded_rows`; heads: with
    `elements`, from the oracle's `_slots`)."""
    pr, pc = plan.prefill.grid
    if dim.is_heads:  # K = the prefill plan's head slots (heads layout, padded)
        heads = heads_for(plan.config, pc)
        return (_head_k_rows if elements else _slot_k_rows)(heads, dim, pr, padded)
    return _plain_k_rows(dim.size(plan.config), pr, pc, padded)


@functools.lru_cache(maxsize=1024)  # per grid: every matmul reading the hidden state asks
def _plain_k_rows(k: int, rows: int, cols: int, padded: int) -> Steps:
    """`steps_of(_padded_rows(k, rows, cols, padded))` row by row, without an element array
    (k's thousands of indices against a grid's hundreds of rows): the padded position, hence
    the row, only grows with the index (a column tile of ceil(k / C) fits its K'/C padded
    rows), so a row's step starts at the first index held at or after its first position,
    if that index lies in the row (`_padded_rows`' integer formula); else the row is empty."""
    tile, wide, high = -(-k // cols), padded // cols, padded // rows
    assert wide >= tile, (k, cols, padded)  # `pad_k_rows`: K' = padded_k >= k
    row = np.arange(rows, dtype=np.int64)
    column, within = np.divmod(row * high, wide)  # where each row's positions begin
    # the first index at or after that position: there, or the next column tile's first
    index = np.where(within < tile, column * tile + within, (column + 1) * tile)
    column, within = np.divmod(index, tile)
    # a row holds that index (so it is the row's first) unless it lies in a later row
    first = ((column * wide + within) // high == row) & (index < k)
    return Steps(index[first], row[first], k)


@functools.lru_cache(maxsize=512)
def _head_k_rows(heads: HeadLayout, dim: Dim, rows: int, padded: int) -> Steps:
    """The oracle's (`elements`) `_slot_k_rows`, from `_slots`."""
    slots, width = _slots(heads, dim)
    return steps_of(_padded_rows(width * heads.num_cols, rows, heads.num_cols, padded, slots))


@functools.lru_cache(maxsize=512)
def _slot_k_rows(heads: HeadLayout, dim: Dim, rows: int, padded: int) -> Steps:
    """`_head_k_rows` from `_feature_slots`."""
    col, slot = _feature_slots(heads, dim)
    width = head_slots_per_column(heads, dim)
    index = col * width + slot
    return steps_of(_padded_rows(width * heads.num_cols, rows, heads.num_cols, padded, index))


def _padded_rows(
    k: int, rows: int, cols: int, padded: int, index: np.ndarray | None = None
) -> np.ndarray:
    """Row of each K index (default all of 0..k-1) of a MeshGEMM weight whose K was padded
    per column tile (`placement.pad_k_rows`)."""
    tile, wide = math.ceil(k / cols), padded // cols
    index = np.arange(k) if index is None else index
    position = (index // tile) * wide + index % tile
    return position // (padded // rows)


def weights_relayout(plan: ModelPlan):  # the mesh's Charge (only mesh/ names the pricing types)
    """The weights' re-layout between the plans, every device's at once (the slowest
    counts): it depends on the plans only, so every request on a model shares it."""
    weight_bytes = bytes_per_element(plan.storage.weights, plan.device.storage_bytes)
    devices = range(device_count(plan.decode))
    moves = [weight_moves(plan, on_device=d) for d in devices]
    return concurrent_relayout_charge(plan.device, moves, bytes_per_element=weight_bytes)


def charge_transition(
    plan: ModelPlan,
    counts: list[RowCounts],
    chunk_tokens: list[int | None],
    ledger: Ledger,
    *,
    weights,  # `weights_relayout(plan)`, computed once per model
) -> None:
    """The hand-off of sequences holding `counts`, each prefilled in chunks of
    `chunk_tokens[b]` (None: one piece): each sequence's KV cache (quantised first when the
    cache is compressed), and with one resident layout the weights to decode and back."""
    kv_bytes = bytes_per_element(plan.storage.kv, plan.device.storage_bytes)
    # each device re-lays its own layers, all devices at once: the slowest one counts
    devices = range(device_count(plan.decode))
    with ledger.scope("transition"):
        for c, chunk in zip(counts, chunk_tokens, strict=True):
            charge_inline_compute(ledger, "kv_quantise", cycles=kv_quantise_cycles(plan, c))
            kv = [kv_moves(plan, c, on_device=d, chunk_tokens=chunk) for d in devices]
            kv_charge = concurrent_relayout_charge(plan.device, kv, bytes_per_element=kv_bytes)
            ledger.charge("kv", kv_charge)
        if plan.resident is ResidentLayouts.ONE:
            # the way back (readying the next request) is the mirror image: same cost
            ledger.charge("weights_to_decode", weights)
            ledger.charge("weights_to_prefill", weights)
