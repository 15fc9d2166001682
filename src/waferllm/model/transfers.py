"""Which data moves between the prefill and decode plans, priced by `mesh.relayout`.

`kv_moves` and `weight_moves` describe the prefill-to-decode hand-off of the KV cache and, with one
resident layout, of the weights (SPEC.md §10.4 `transition_s`), element by element in absolute
device coordinates, so the cost sees the real distances between the two plans' regions.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from waferllm.mesh.relayout import Move
from waferllm.model.kv_cache import RowCounts
from waferllm.model.placement import Phase, heads_for, layer_specs
from waferllm.model.plan import ModelPlan


# ---- the prefill -> decode hand-off ------------------------------------------------------------
def _layer_groups(plan: ModelPlan) -> Counter[tuple[int, int]]:
    """(prefill region, decode region) of every placed layer, counted."""
    # per-layer placement holds one layer that stands for all (`layer_multiplier`)
    layers = range(1 if plan.layer_multiplier > 1 else plan.config.num_hidden_layers)
    groups: Counter[tuple[int, int]] = Counter()
    for i in layers:
        groups[(plan.prefill.region_of(i).index, plan.decode.region_of(i).index)] += 1
    return groups


def _feature_slots(plan: ModelPlan, cols: int, kind: str) -> tuple[np.ndarray, int]:
    """(slot of each real q or kv feature in checkpoint order, slots per column) on a grid
    of `cols` columns (`HeadLayout`)."""
    heads = heads_for(plan.config, cols)
    index = heads.q_index() if kind == "q" else heads.kv_index()
    width = heads.q_width if kind == "q" else heads.kv_width
    real = index >= 0
    out = np.empty(int(index.max()) + 1, dtype=np.int64)
    out[index[real]] = np.flatnonzero(real)
    return out, width


def _feature_columns(plan: ModelPlan, cols: int, kind: str) -> np.ndarray:
    slots, width = _feature_slots(plan, cols, kind)
    return slots // width


def _blocks(size: int, parts: int) -> np.ndarray:
    return np.arange(size) // math.ceil(size / parts)


def kv_moves(plan: ModelPlan, counts: RowCounts) -> list[Move]:
    """K and V of every layer: prefill [L_y, kv_x] on its prefill region to the balanced rows
    and the head columns of its decode region."""
    (pr, pc), (dr, dc) = plan.prefill.grid, plan.decode.grid
    length = counts.total
    src_row = _blocks(length, pr)
    dst_row = np.repeat(np.arange(dr), counts.counts)
    src_col = _feature_columns(plan, pc, "kv")
    dst_col = _feature_columns(plan, dc, "kv")
    moves = []
    for (p, d), n in _layer_groups(plan).items():
        (py, px), (dy, dx) = plan.prefill.regions[p].origin, plan.decode.regions[d].origin
        moves.append(
            Move(
                a_src=py + src_row,
                a_dst=dy + dst_row,
                b_src=px + src_col,
                b_dst=dx + dst_col,
                count=2 * n * plan.layer_multiplier,
            )
        )
    return moves


def weight_moves(plan: ModelPlan) -> list[Move]:
    """Every layer's matrices from the prefill plan ([K_y, N_x], MeshGEMM tiles) to the decode
    plan (GEMV tiles: [K_y, N_x], or [K_x, N_y] for W_o and W_down), and the vocabulary table
    from [V_y, D_x] to [V_x, D_y]. The prefill tiles' pre-alignment skew (a permutation
    within each column) is not modelled; vectors (norms, biases: < 1% of the bytes) are not
    charged."""
    cfg = plan.config
    (pr, pc), (dr, dc) = plan.prefill.grid, plan.decode.grid
    specs = layer_specs(cfg, pr, pc, Phase.PREFILL)
    cols = {
        "q": (_feature_columns(plan, pc, "q"), _feature_columns(plan, dc, "q")),
        "kv": (_feature_columns(plan, pc, "kv"), _feature_columns(plan, dc, "kv")),
    }
    d, f = cfg.hidden_size, cfg.intermediate_size
    moves = []
    for (p, dreg), n in _layer_groups(plan).items():
        (py, px), (dy, dx) = plan.prefill.regions[p].origin, plan.decode.regions[dreg].origin
        count = n * plan.layer_multiplier
        for name in ("wq", "wk", "wv", "w_gate", "w_up", "wo", "w_down"):
            k_size = f if name == "w_down" else d
            kind = {"wq": "q", "wk": "kv", "wv": "kv", "wo": "q"}.get(name)
            if name == "wo":  # K = the prefill plan's q slots (heads layout, padded)
                slots, width = _feature_slots(plan, pc, "q")
                k_src = py + _padded_rows(width * pc, pr, pc, specs[name].shape[0], slots)
            else:
                k_src = py + _padded_rows(k_size, pr, pc, specs[name].shape[0])
            if name in ("wo", "w_down"):  # decode: K along X, N = D along Y (crossed)
                k_dst = dx + (cols["q"][1] if kind else _blocks(f, dc))
                n_src, n_dst = px + _blocks(d, pc), dy + _blocks(d, dr)
                moves.append(
                    Move(
                        a_src=k_src,
                        a_dst=k_dst,
                        b_src=n_src,
                        b_dst=n_dst,
                        crossed=True,
                        count=count,
                    )
                )
                continue
            k_dst = dy + _blocks(d, dr)
            n_src, n_dst = cols[kind] if kind else (_blocks(f, pc), _blocks(f, dc))
            moves.append(
                Move(a_src=k_src, a_dst=k_dst, b_src=px + n_src, b_dst=dx + n_dst, count=count)
            )
    (py, px), (dy, dx) = plan.prefill.regions[-1].origin, plan.decode.regions[-1].origin
    v = cfg.vocab_size
    moves.append(
        Move(
            a_src=py + _blocks(v, pr),
            a_dst=dx + _blocks(v, dc),
            b_src=px + _blocks(d, pc),
            b_dst=dy + _blocks(d, dr),
            crossed=True,
        )
    )
    return moves


def _padded_rows(
    k: int, rows: int, cols: int, padded: int, index: np.ndarray | None = None
) -> np.ndarray:
    """Row of each K index (default all of 0..k-1) of a MeshGEMM weight whose K was padded
    per column tile (`placement.pad_k_rows`)."""
    tile, wide = math.ceil(k / cols), padded // cols
    index = np.arange(k) if index is None else index
    position = (index // tile) * wide + index % tile
    return position // (padded // rows)
