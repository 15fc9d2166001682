"""Heads along X (SPEC.md §10.8): which kv heads and head-dim slots every column holds.

`HeadLayout` is the one RoPE layout of the code base: a column's q and k slots hold whole
(i, i + head_dim/2) pairs, first halves then second halves, so rotating a slice needs no
communication; v (never rotated) and the attention output take each column's remaining share of
the cache's per-position budget, so K and V together are padded only to the widest column.
`gather_rows` applies its permutations (with zero padding) to host tensors. Which model tensors
use them is the model's business (`model/placement.py`).
Legend: C columns, G kv heads per column, n query heads per kv head, H q/k head-dim slots, Hv
v head-dim slots.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import lru_cache

import numpy as np
import torch

from waferllm.mesh.geometry import split_sizes
from waferllm.mesh.storage import StoredDtype, stored_bytes


@dataclasses.dataclass(frozen=True, eq=False)
class HeadLayout:
    """Which kv heads and head-dim slots every column holds.

    With C >= Hkv columns, kv head g owns a contiguous group of columns (sizes within one) and
    splits its hd/2 RoPE pairs over them; with C < Hkv, each column holds whole kv groups. A
    column's q tile is [G, n_rep, H] and its k tile [G, H]; slot e < H/2 holds dim i of a pair,
    slot e + H/2 its partner i + hd/2. Its v tile [G, Hv] holds the contiguous dims
    first_vdim .. + num_vdims of its heads, and the attention output [G, n_rep, Hv] the same
    dims of every query head: a kv-group's columns split the hd value dims so that each
    column's k and v slots together stay within the group's per-position budget, v's tile no
    wider than k's (`_value_dims`), the cache's K and V sharing one buffer per core
    (`cache_bytes`). Unused slots are zero padding.
    """

    num_cols: int
    n_rep: int
    head_dim: int
    kv_per_tile: int  # G
    pairs_per_tile: int  # H / 2
    first_kv: np.ndarray  # (C,) first kv head on each column
    num_kv: np.ndarray  # (C,) kv heads on each column
    first_pair: np.ndarray  # (C,) first RoPE pair on each column
    num_pairs: np.ndarray  # (C,) RoPE pairs on each column
    group_sizes: tuple[int, ...]  # consecutive columns that reduce scores together
    first_vdim: np.ndarray  # (C,) first value dim on each column
    num_vdims: np.ndarray  # (C,) value dims on each column

    @property
    def head_slots(self) -> int:
        return 2 * self.pairs_per_tile

    @functools.cached_property
    def value_slots(self) -> int:
        """Hv: the v (and attention output) slots of a column's tile, the widest column's
        (computed once: walks ask it thousands of times; the layout is never changed)."""
        return int(self.num_vdims.max())

    @property
    def v_width(self) -> int:
        return self.kv_per_tile * self.value_slots

    @property
    def o_width(self) -> int:
        """The attention output's slots per column: G x n_rep query heads x Hv."""
        return self.kv_per_tile * self.n_rep * self.value_slots

    def cache_bytes(self, stored: StoredDtype, storage_bytes: int) -> int:
        """Bytes one cached position (its k and v) takes on the widest column: the column's
        real k and v slots of its kv heads, as stored (`mesh.storage`)."""
        return _cache_bytes(self, stored, storage_bytes)

    @property
    def q_width(self) -> int:
        return self.kv_per_tile * self.n_rep * self.head_slots

    @property
    def kv_width(self) -> int:
        return self.kv_per_tile * self.head_slots

    def _dims(self) -> tuple[np.ndarray, np.ndarray]:
        """(C, H) head dim held by each slot and whether it is real."""
        e = np.arange(self.head_slots)
        within = e % self.pairs_per_tile
        pair = self.first_pair[:, None] + within[None, :]
        dim = pair + np.where(e >= self.pairs_per_tile, self.head_dim // 2, 0)[None, :]
        return dim, within[None, :] < self.num_pairs[:, None]

    def kv_index(self) -> np.ndarray:
        """(C * G * H,): the original k/v feature of every padded slot, -1 for padding."""
        dim, ok = self._dims()
        g = np.arange(self.kv_per_tile)
        head = self.first_kv[:, None] + g[None, :]  # (C, G)
        real = (g[None, :] < self.num_kv[:, None])[:, :, None] & ok[:, None, :]
        index = head[:, :, None] * self.head_dim + dim[:, None, :]
        return np.where(real, index, -1).reshape(-1)

    def q_index(self) -> np.ndarray:
        """(C * G * n_rep * H,): the original q feature of every padded slot, -1 for padding."""
        dim, ok = self._dims()
        g = np.arange(self.kv_per_tile)
        r = np.arange(self.n_rep)
        q_head = (self.first_kv[:, None] + g[None, :])[:, :, None] * self.n_rep + r  # (C, G, n)
        real_g = (g[None, :] < self.num_kv[:, None])[:, :, None, None]
        index = q_head[..., None] * self.head_dim + dim[:, None, None, :]
        return np.where(real_g & ok[:, None, None, :], index, -1).reshape(-1)

    def v_index(self) -> np.ndarray:
        """(C * G * Hv,): the original v feature of every padded slot, -1 for padding."""
        return self._value_index(1)

    def o_index(self) -> np.ndarray:
        """(C * G * n_rep * Hv,): the original attention-output feature (query head x value
        dim) of every padded slot, -1 for padding."""
        return self._value_index(self.n_rep)

    def _value_index(self, per_kv: int) -> np.ndarray:
        e = np.arange(self.value_slots)
        g = np.arange(self.kv_per_tile)
        r = np.arange(per_kv)
        head = (self.first_kv[:, None] + g[None, :])[:, :, None] * per_kv + r  # (C, G, per_kv)
        dim = self.first_vdim[:, None] + e[None, :]  # (C, Hv)
        real = (g[None, :] < self.num_kv[:, None])[:, :, None, None] & (
            e[None, :] < self.num_vdims[:, None]
        )[:, None, None, :]
        index = head[..., None] * self.head_dim + dim[:, None, None, :]
        return np.where(real, index, -1).reshape(-1)

    def rope_pairs(self) -> np.ndarray:
        """(C, H): the RoPE frequency index of every slot (padding reads pair 0: it holds 0)."""
        dim, ok = self._dims()
        return np.where(ok, dim % (self.head_dim // 2), 0)


@lru_cache(maxsize=256)
def head_layout(num_kv_heads: int, n_rep: int, head_dim: int, num_cols: int) -> HeadLayout:
    pairs = head_dim // 2
    if num_cols >= num_kv_heads:
        sizes = split_sizes(num_cols, num_kv_heads)
        first_kv = np.repeat(np.arange(num_kv_heads), sizes)
        splits = [split_sizes(pairs, int(s)) for s in sizes]
        num_pairs = np.concatenate(splits)
        first_pair = np.concatenate([np.cumsum(s) - s for s in splits])
        k_slots = 2 * int(num_pairs.max())
        vsplits = [_value_dims(tuple(p.tolist()), head_dim, k_slots) for p in splits]
        num_vdims = np.concatenate(vsplits)
        first_vdim = np.concatenate([np.cumsum(v) - v for v in vsplits])
        return HeadLayout(
            num_cols=num_cols,
            n_rep=n_rep,
            head_dim=head_dim,
            kv_per_tile=1,
            pairs_per_tile=int(num_pairs.max()),
            first_kv=first_kv,
            num_kv=np.ones(num_cols, dtype=np.int64),
            first_pair=first_pair,
            num_pairs=num_pairs,
            group_sizes=tuple(int(s) for s in sizes),
            first_vdim=first_vdim,
            num_vdims=num_vdims,
        )
    num_kv = split_sizes(num_kv_heads, num_cols)
    return HeadLayout(
        num_cols=num_cols,
        n_rep=n_rep,
        head_dim=head_dim,
        kv_per_tile=int(num_kv.max()),
        pairs_per_tile=pairs,
        first_kv=np.cumsum(num_kv) - num_kv,
        num_kv=num_kv,
        first_pair=np.zeros(num_cols, dtype=np.int64),
        num_pairs=np.full(num_cols, pairs),
        group_sizes=(1,) * num_cols,
        first_vdim=np.zeros(num_cols, dtype=np.int64),
        num_vdims=np.full(num_cols, head_dim),
    )


@lru_cache(maxsize=1024)  # per layout (cached by `head_layout`): asked on every walk
def _cache_bytes(heads: HeadLayout, stored: StoredDtype, storage_bytes: int) -> int:
    columns = zip(
        heads.num_pairs.tolist(), heads.num_vdims.tolist(), heads.num_kv.tolist(), strict=True
    )
    widest = 0
    for pairs, vdims, kv in set(columns):
        k, v = (
            stored_bytes(stored, reduced=r, other=kv, storage_bytes=storage_bytes)
            for r in (2 * pairs, vdims)
        )
        widest = max(widest, k + v)
    return widest


@lru_cache(maxsize=1024)  # a layout's groups split the pairs in at most two ways
def _value_dims(num_pairs: tuple[int, ...], head_dim: int, k_slots: int) -> np.ndarray:
    """(s,) value dims of each column of one kv-group whose columns hold `num_pairs` RoPE
    pairs of k: each column fills its k slots up to the group's per-position budget T (k and v
    slots together), v never wider than k's tile (`k_slots`, so the attention's instruction
    counts never exceed those of v padded like k); T the smallest budget, at least ceil(2 hd /
    s) and the widest column's k, whose columns hold hd value dims. The surplus is taken one
    dim at a time from the fullest columns (most k and v slots, then most v; the first on a
    tie): `_surplus_taken` finds those takes at once. Cached: pure in its arguments (read
    only; callers concatenate it)."""
    k = 2 * np.asarray(num_pairs, dtype=np.int64)
    budget = max(-(-2 * head_dim // len(k)), int(k.max()))
    while np.minimum(budget - k, k_slots).sum() < head_dim:
        budget += 1
    v = np.minimum(budget - k, k_slots)
    v = v - _surplus_taken(k, v, k_slots, int(v.sum()) - head_dim)
    v.setflags(write=False)
    return v


def _surplus_taken(k: np.ndarray, v: np.ndarray, k_slots: int, surplus: int) -> np.ndarray:
    """How many dims each column gives up when, `surplus` times, the column of v > 0 with the
    largest fullness (k + v)(k_slots + 1) + v (the first on a tie) gives one: a column's
    fullness drops by k_slots + 2 with each dim it gives, so the takes are the `surplus`
    largest of every column's successive fullnesses, ties to the first column (a merge of
    decreasing runs: the one-at-a-time walk, `_surplus_taken_walk`, is its test oracle)."""
    column = np.repeat(np.arange(len(v)), v)
    step = np.arange(len(column)) - np.repeat(np.cumsum(v) - v, v)  # dims given before
    fullness = ((k + v) * (k_slots + 1) + v)[column] - step * (k_slots + 2)
    order = np.lexsort((column, -fullness))[:surplus]
    return np.bincount(column[order], minlength=len(v))


def _surplus_taken_walk(k: np.ndarray, v: np.ndarray, k_slots: int, surplus: int) -> np.ndarray:
    """`_surplus_taken` one dim at a time (its oracle)."""
    left = v.copy()
    for _ in range(surplus):
        fullest = np.where(left > 0, (k + left) * (k_slots + 1) + left, -1)
        left[int(np.argmax(fullest))] -= 1
    return v - left


def gather_rows(w: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """w[index] along dim 0 with zero rows where index is -1 (a permutation plus padding)."""
    padded = torch.cat([w, w.new_zeros((1, *w.shape[1:]))])
    return padded[torch.as_tensor(np.where(index < 0, w.shape[0], index), device=w.device)]
