"""Heads along X (SPEC.md §10.8): which kv heads and head-dim slots every column holds.

`HeadLayout` is the one RoPE layout of the code base: a column's head-dim slots hold whole
(i, i + head_dim/2) pairs, first halves then second halves, so rotating a slice needs no
communication. `gather_rows` applies its permutation (with zero padding) to host tensors.
Which model tensors use it is the model's business (`model/placement.py`).
Legend: C columns, G kv heads per column, n query heads per kv head, H head-dim slots.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch

from waferllm.mesh.geometry import split_sizes


@dataclasses.dataclass(frozen=True, eq=False)
class HeadLayout:
    """Which kv heads and head-dim slots every column holds.

    With C >= Hkv columns, kv head g owns a contiguous group of columns (sizes within one) and
    splits its hd/2 RoPE pairs over them; with C < Hkv, each column holds whole kv groups. A
    column's q tile is [G, n_rep, H] and its k/v tile [G, H]; slot e < H/2 holds dim i of a pair,
    slot e + H/2 its partner i + hd/2. Unused slots are zero padding.
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

    @property
    def head_slots(self) -> int:
        return 2 * self.pairs_per_tile

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
    )


def gather_rows(w: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """w[index] along dim 0 with zero rows where index is -1 (a permutation plus padding)."""
    padded = torch.cat([w, w.new_zeros((1, *w.shape[1:]))])
    return padded[torch.as_tensor(np.where(index < 0, w.shape[0], index), device=w.device)]
