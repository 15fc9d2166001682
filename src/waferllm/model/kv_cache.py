"""The decode KV cache on the mesh: shift-based (SPEC.md §10.9) and the concatenation baseline.

Positions run along Y: row 0 holds the oldest consecutive positions, each row keeps its
entries in slots [0, count) oldest first; head-dim slots run along X (`HeadLayout`). This
module is the policy and the bookkeeping (`RowCounts`: how many positions each row holds) and
the capacity arithmetic; the tiles of one region's layers are `kv_store.KvStore`.
A batch's sequences share a region's store: each has its own counts over its own share of the
slots (`slots_needed`, `admit`), its own tiles and its own shifts; the SRAM is one allocation.
A new token's k and v arrive replicated along Y (the QKV allreduce's broadcast), so any row can
take them. Shift: they enter the last row while rows r0+1..R-1 pass their oldest entry one hop
north, keeping per-row counts non-increasing southwards and within one of each other. Concat:
the last row takes every new token. The hand-off from prefill rebalances the rows. With a
sliding window W the shift cache evicts: it keeps the last W positions (the next token attends
W - 1 of them and itself), and once it holds W every append cascades one hop north through the
filled rows while row 0 drops its oldest entry, so the counts stay put and capacity is bounded
by the window, not by SRAM. The concat baseline keeps every position (the window is a mask).
Legend: R rows, S slots per row.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from waferllm.errors import WaferError
from waferllm.mesh.geometry import split_sizes


class KvPolicy(enum.StrEnum):
    SHIFT = "shift"  # WaferLLM's balancing shift (paper §4.3)
    CONCAT = "concat"  # append at the end: every new token on the last row


class KvCacheFullError(WaferError):
    """The KV cache cannot take another token (SRAM-limited capacity, SPEC.md §10.4)."""


# ---- capacity ----------------------------------------------------------------------------------
def evicts(policy: KvPolicy, rows: int, slots: int, window: int | None) -> bool:
    """Whether the cache evicts keys older than `window`: the shift policy with room for a
    whole window. Such a cache never fills (its capacity is the model's context, not SRAM)."""
    return window is not None and policy is KvPolicy.SHIFT and window <= rows * slots


def kv_capacity_tokens(
    policy: KvPolicy,
    rows: int,
    slots: int,
    prompt_len: int,
    *,
    window: int | None = None,
    max_positions: int | None = None,
) -> int:
    """Largest total context (prompt + tokens fed back) the cache holds after this prompt; a
    cache that evicts beyond the sliding `window` never fills: the model's trained context
    (`max_positions`) bounds it instead."""
    if evicts(policy, rows, slots, window):
        assert max_positions is not None, "an evicting cache is bounded by the trained context"
        return max_positions
    if policy is KvPolicy.SHIFT:
        return rows * slots
    # concat: the hand-off balances the prompt; the last row holds floor(L / R) of it
    return prompt_len + slots - prompt_len // rows


def max_new_tokens(
    policy: KvPolicy,
    rows: int,
    slots: int,
    prompt_len: int,
    *,
    window: int | None = None,
    max_positions: int | None = None,
) -> int:
    """Tokens that can be generated after the prompt: the first needs no slot, every later one
    feeds its predecessor back into the cache. 0 when the prompt itself does not fit."""
    limits = {"window": window, "max_positions": max_positions}
    capacity = kv_capacity_tokens(policy, rows, slots, prompt_len, **limits)
    if not evicts(policy, rows, slots, window) and prompt_len > rows * slots:
        return 0
    return max(capacity - prompt_len + 1, 0)


def slots_needed(
    policy: KvPolicy,
    rows: int,
    prompt_len: int,
    context_tokens: int,
    *,
    window: int | None = None,
) -> int:
    """Fewest slots per row that hold a sequence whose prompt of `prompt_len` tokens grows to
    `context_tokens` cached positions (the inverse of `kv_capacity_tokens`). Under a sliding
    `window` the shift cache keeps at most the last `window` positions (a share that holds a
    whole window evicts, `evicts`)."""
    if window is not None and policy is KvPolicy.SHIFT:
        prompt_len, context_tokens = min(prompt_len, window), min(context_tokens, window)
    balanced = -(-prompt_len // rows)  # the hand-off's fullest row
    if policy is KvPolicy.SHIFT:
        return max(balanced, -(-context_tokens // rows), 1)
    return max(balanced, context_tokens - prompt_len + prompt_len // rows, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KvBudget:
    """What each decode region's SRAM holds beside its weights, in the plan's terms: `slots`
    per row, each taking `slot_bytes[r]` in region r (every layer's K and V) plus
    `score_bytes` of attention scores per slot of the window read, and one step's scratch
    `step_bytes` per sequence (the plan sized `slots` for one sequence's scratch)."""

    rows: int
    slots: int
    slot_bytes: tuple[int, ...]
    score_bytes: int
    step_bytes: int

    def fits(self, shares: list[int]) -> bool:
        """Whether B sequences with these slot shares fit every region at their peak: the
        shares' K and V, the scores of B windows as wide as the widest share, B steps'
        scratch."""
        batch, widest = len(shares), max(shares)
        for slot_bytes in self.slot_bytes:
            room = self.slots * (slot_bytes + self.score_bytes)
            need = sum(shares) * slot_bytes + batch * widest * self.score_bytes
            if need + (batch - 1) * self.step_bytes > room:
                return False
        return True

    def equal_share(self, batch: int) -> int:
        """The largest share s such that `batch` sequences of s slots each fit (0: none)."""
        shares = []
        for slot_bytes in self.slot_bytes:
            room = self.slots * (slot_bytes + self.score_bytes) - (batch - 1) * self.step_bytes
            shares.append(room // (batch * (slot_bytes + self.score_bytes)))
        return max(min(shares), 0)


def admit(
    policy: KvPolicy,
    budget: KvBudget,
    prompt_lens: list[int],
    context_tokens: list[int],
    *,
    window: int | None = None,
) -> list[int]:
    """Each sequence's share of the slots per row (its `slots_needed`, under a sliding
    `window`); KvCacheFullError when the batch does not fit together (admission by KV
    capacity, `KvBudget.fits`)."""
    rows = budget.rows
    shares = [
        slots_needed(policy, rows, p, c, window=window)
        for p, c in zip(prompt_lens, context_tokens, strict=True)
    ]
    if not budget.fits(shares):
        raise KvCacheFullError(
            f"the batch's KV cache does not fit: its {len(shares)} sequences need "
            f"{sum(shares)} slots per row ({_listed(shares)}; up to "
            f"{sum(context_tokens)} cached positions in all) and a step's scratch each, but the "
            f"{rows}-row cache has {budget.slots} ({rows * budget.slots} tokens, "
            f"{policy.value} policy) for one sequence's scratch; use fewer or shorter "
            "sequences or a larger decode grid"
        )
    return shares


# ---- bookkeeping -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Append:
    """Where the next token goes: `senders` pass their oldest entry one row north; `target`
    keeps what it receives (the new token itself when there are no senders)."""

    target: int
    senders: range
    counts_after: np.ndarray
    evict: bool = False  # row 0 drops its oldest entry (the window is full): counts unchanged


class RowCounts:
    """Per-row position counts of a cache with `rows` rows of `slots` slots; `window` the
    sliding window when the cache evicts (`evicts`), `evicted` the positions dropped before
    row 0's slot 0."""

    def __init__(
        self,
        policy: KvPolicy,
        rows: int,
        slots: int,
        counts: np.ndarray,
        *,
        window: int | None = None,
        evicted: int = 0,
    ) -> None:
        self.policy = policy
        self.rows = rows
        self.slots = slots
        self.counts = np.asarray(counts, dtype=np.int64).copy()
        self.window = window if evicts(policy, rows, slots, window) else None
        self.evicted = evicted

    @classmethod
    def balanced(
        cls, policy: KvPolicy, rows: int, slots: int, total: int, window: int | None = None
    ) -> RowCounts:
        """The state after `total` positions: the kept ones (the last `window` when the cache
        evicts) over the rows, the larger counts north (the hand-off's state)."""
        kept = (
            min(total, window)
            if window is not None and evicts(policy, rows, slots, window)
            else total
        )
        if kept > rows * slots:
            raise KvCacheFullError(
                f"{total} positions do not fit a KV cache of {rows} rows x {slots} slots "
                f"({rows * slots} tokens); use a larger decode grid or a shorter prompt"
            )
        return cls(
            policy, rows, slots, split_sizes(kept, rows), window=window, evicted=total - kept
        )

    @property
    def total(self) -> int:
        """Positions held."""
        return int(self.counts.sum())

    @property
    def end(self) -> int:
        """Positions seen (held and evicted): the position of the next token."""
        return self.evicted + self.total

    @property
    def starts(self) -> np.ndarray:
        """(R,) position of each row's slot 0."""
        return np.cumsum(self.counts) - self.counts

    def plan_append(self) -> Append:
        n = self.counts
        last = self.rows - 1
        if self.window is not None and self.total >= self.window:
            # every filled row passes its oldest entry north, row 0 drops its own, the
            # southernmost filled row takes the new token (replicated along Y)
            tail = int(np.flatnonzero(n)[-1])
            return Append(
                target=tail, senders=range(1, tail + 1), counts_after=n.copy(), evict=True
            )
        if self.policy is KvPolicy.CONCAT:
            target, senders = last, range(0)
        else:
            # r0: the northernmost row such that every row south of it is as full as its
            # northern neighbour (SPEC.md §10.9)
            steps = np.flatnonzero(n[1:] != n[:-1])  # rows j >= 1 that differ from j - 1
            target = int(steps[-1]) + 1 if steps.size else 0
            # an empty tail takes the token where it is (k, v are replicated along Y)
            senders = range(target + 1, self.rows) if n[target] > 0 else range(0)
        if n[target] >= self.slots:
            raise KvCacheFullError(
                f"the KV cache is full: {self.total} tokens in {self.rows} rows x {self.slots} "
                f"slots ({self.policy.value} policy); use a larger decode grid or fewer tokens"
            )
        after = n.copy()
        after[target] += 1
        return Append(target=target, senders=senders, counts_after=after)

    def copy(self) -> RowCounts:
        return RowCounts(
            self.policy,
            self.rows,
            self.slots,
            self.counts,
            window=self.window,
            evicted=self.evicted,
        )

    def commit(self, append: Append) -> None:
        self.counts = append.counts_after.copy()
        self.evicted += int(append.evict)

    def slot_mask(self, counts: np.ndarray, width: int) -> np.ndarray:
        """(R, width): which of the first `width` slots of each row hold a position."""
        return np.arange(width)[None, :] < counts[:, None]

    def slot_positions(self, counts: np.ndarray, width: int) -> np.ndarray:
        """(R, width): the position held by each slot of rows holding `counts` (meaningless
        where masked)."""
        return self.evicted + (np.cumsum(counts) - counts)[:, None] + np.arange(width)[None, :]

    def positions_after(self, append: Append, width: int) -> np.ndarray:
        """(R, width): `slot_positions` once `append` is committed (an eviction moves every
        slot one position on)."""
        return int(append.evict) + self.slot_positions(append.counts_after, width)


def _listed(values: list[int], limit: int = 8) -> str:
    """The first `limit` values, then how many more: an error message stays one short line."""
    shown = ", ".join(map(str, values[:limit]))
    return shown if len(values) <= limit else f"{shown}, ... {len(values) - limit} more"
