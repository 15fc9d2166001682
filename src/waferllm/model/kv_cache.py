"""The decode KV cache on the mesh: shift-based (SPEC.md §10.9) and the concatenation baseline.

Positions run along Y: row 0 holds the oldest consecutive positions, each row keeps its
entries in slots [0, count) oldest first; head-dim slots run along X (`HeadLayout`), K stored
transposed ([G, H, S] per core) so scores need no transpose, V as [G, S, H]. `RowCounts` is
the bookkeeping (how many positions each row holds); `KvStore` the tiles of one region's layers.
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
Legend: R rows, C columns, S slots per row, G kv heads per column, H head-dim slots per column.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import torch

from waferllm.errors import WaferError
from waferllm.kernels.dequant import charge_dequant, charge_quantise
from waferllm.kernels.heads import HeadLayout, gather_rows
from waferllm.mesh.charges import charge_tail_shift
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis, split_sizes
from waferllm.mesh.storage import StoredDtype, stored_bytes
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.quant import quantise_kv_tile


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


# ---- tiles -------------------------------------------------------------------------------------
class KvStore:
    """K and V tiles of the layers of one region (one decode mesh), for every sequence of a batch.

    SRAM is charged once for the full `slots` per row (a static allocation the sequences share,
    each within its own share of the slots, which its `RowCounts` enforces); the host tensors
    of a sequence (`seq`, 0 for batch 1) grow as positions arrive, so a large SRAM capacity
    costs no host memory until it is used. K is (R, C, G, H, s) and V (R, C, G, s, H) in the
    compute dtype. With a compressed `stored` dtype every written token is quantised per kv
    head along H (`model.quant`): SRAM, the shift's bytes and the hand-off count codes and
    scales; reads pay the dequantisation, writes the quantisation (`kernels.dequant`).
    """

    def __init__(
        self,
        mesh: Mesh,
        heads: HeadLayout,
        *,
        layers: range,
        slots: int,
        name: str = "kv",
        stored: StoredDtype = StoredDtype.FLOAT16,
    ) -> None:
        self.mesh = mesh
        self.heads = heads
        self.layers = layers
        self.slots = slots
        self.stored = stored
        bytes_per_layer = 2 * self.token_bytes * slots
        self._keys = [mesh.sram.alloc(f"{name}.layer{i}", bytes_per_layer) for i in layers]
        self._widths: dict[int, int] = {}
        self.k: dict[tuple[int, int], torch.Tensor] = {}  # (seq, layer) -> tiles
        self.v: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def token_bytes(self) -> int:
        """Bytes of one cached position's k (or v) on a core: G heads x H slots as stored."""
        return stored_bytes(
            self.stored,
            reduced=self.heads.head_slots,
            other=self.heads.kv_per_tile,
            storage_bytes=self.mesh.device.storage_bytes,
        )

    def free(self) -> None:
        for key in self._keys:
            self.mesh.sram.free(key)
        self._keys = []
        self.k.clear()
        self.v.clear()
        self._widths.clear()

    def drop(self, seq: int) -> None:
        """Forget sequence `seq`'s tiles (it finished; its slots are free again)."""
        for i in self.layers:
            self.k.pop((seq, i), None)
            self.v.pop((seq, i), None)
        self._widths.pop(seq, None)

    def _ensure(self, width: int, seq: int) -> None:
        """Grow `seq`'s host tensors to hold at least `width` slots (doubling, up to `slots`)."""
        have = self._widths.get(seq, 0)
        if width <= have or self.mesh.mode is Mode.ESTIMATE:
            return
        new = min(self.slots, max(width, 2 * have, 16))
        rows, cols = self.mesh.shape
        g, h = self.heads.kv_per_tile, self.heads.head_slots
        dtype = self.mesh.compute_dtype
        on = self.mesh.torch_device
        for i in self.layers:
            k = torch.zeros((rows, cols, g, h, new), dtype=dtype, device=on)
            v = torch.zeros((rows, cols, g, new, h), dtype=dtype, device=on)
            if (seq, i) in self.k:
                k[..., :have] = self.k[seq, i]
                v[..., :have, :] = self.v[seq, i]
            self.k[seq, i], self.v[seq, i] = k, v
        self._widths[seq] = new

    # ---- the hand-off ------------------------------------------------------------------------
    def fill(
        self,
        layer: int,
        k_host: torch.Tensor,
        v_host: torch.Tensor,
        counts: RowCounts,
        *,
        seq: int = 0,
    ) -> None:
        """Place logical k, v [L, Hkv*hd] (position order) into the rows given by `counts`: its
        last `counts.total` positions (the older ones are evicted under a sliding window)."""
        if self.mesh.mode is Mode.ESTIMATE:
            return
        rows, cols = self.mesh.shape
        width = int(counts.counts.max(initial=0))
        self._ensure(max(width, 1), seq)
        s = self._widths[seq]
        g, h = self.heads.kv_per_tile, self.heads.head_slots
        pos = np.arange(counts.total)
        row = np.repeat(np.arange(rows), counts.counts)
        slot = pos - counts.starts[row]
        index = self.heads.kv_index()
        tiles = []
        for host in (k_host, v_host):
            kept = host[host.shape[0] - counts.total :]
            feats = gather_rows(kept.T, index).T  # [total, C*G*H]
            buf = feats.new_zeros(rows * s, cols * g * h)
            buf[torch.as_tensor(row * s + slot)] = feats
            tile = buf.reshape(rows, s, cols, g, h).to(
                device=self.mesh.torch_device, dtype=self.mesh.compute_dtype
            )
            tiles.append(quantise_kv_tile(tile, self.stored))
        self.k[seq, layer] = tiles[0].permute(0, 2, 3, 4, 1).contiguous()  # (R, C, G, H, S)
        self.v[seq, layer] = tiles[1].permute(0, 2, 3, 1, 4).contiguous()  # (R, C, G, S, H)

    # ---- one decode step ---------------------------------------------------------------------
    def write(
        self,
        layer: int,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        append: Append,
        counts: RowCounts,
        ledger: Ledger,
        *,
        seq: int = 0,
    ) -> None:
        """Insert this step's k, v tiles (R, C, G, H) (replicated along Y) as `append` says,
        quantised first when the cache is compressed (priced by `charge_write`)."""
        if append.senders:
            nbytes = 2 * self.token_bytes
            charge_tail_shift(
                self.mesh,
                axis=Axis.Y,
                first=append.senders[0],
                nbytes=nbytes,
                ledger=ledger,
                op="kv_shift",
            )
        if self.mesh.mode is Mode.ESTIMATE:
            return
        k_new, v_new = quantise_kv_tile(k_new, self.stored), quantise_kv_tile(v_new, self.stored)
        if append.evict:
            self._ensure(int(counts.counts.max()), seq)
            _evict_insert(self.k[seq, layer], k_new, append, counts.counts)
            _evict_insert(self.v[seq, layer].transpose(-1, -2), v_new, append, counts.counts)
            return
        n = int(counts.counts[append.target])
        self._ensure(n + 1, seq)
        _insert(self.k[seq, layer], k_new, append, n)
        _insert(self.v[seq, layer].transpose(-1, -2), v_new, append, n)

    def charge_write(self, ledger: Ledger) -> None:
        """A compressed cache quantises each written token's k and v (G heads x H slots)."""
        g, h = self.heads.kv_per_tile, self.heads.head_slots
        for what in ("k", "v"):
            charge_quantise(
                self.mesh, ledger, f"kv_quantise_{what}", self.stored, reduced=h, other=g
            )

    def charge_read(self, width: int, ledger: Ledger) -> None:
        """A compressed cache's window of `width` slots expanded for one layer's attention:
        K and V, each G x width positions of H slots (groups along H)."""
        g, h = self.heads.kv_per_tile, self.heads.head_slots
        for what in ("k", "v"):
            charge_dequant(
                self.mesh, ledger, f"kv_dequant_{what}", self.stored, reduced=h, other=g * width
            )

    def window(self, layer: int, width: int, *, seq: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `width` slots of every row: K (R, C, G, H, w), V (R, C, G, w, H); slots
        beyond the sequence's tiles read as zeros (a batch pads to its widest window)."""
        if self.mesh.mode is Mode.ESTIMATE:
            rows, cols = self.mesh.shape
            g, h = self.heads.kv_per_tile, self.heads.head_slots
            dtype = self.mesh.compute_dtype
            return (
                torch.empty((rows, cols, g, h, width), dtype=dtype, device="meta"),
                torch.empty((rows, cols, g, width, h), dtype=dtype, device="meta"),
            )
        k, v = self.k[seq, layer][..., :width], self.v[seq, layer][..., :width, :]
        short = width - k.shape[-1]
        if short > 0:
            k = torch.nn.functional.pad(k, (0, short))
            v = torch.nn.functional.pad(v, (0, 0, 0, short))
        return k, v


def _insert(data: torch.Tensor, new: torch.Tensor, append: Append, n: int) -> None:
    """In place on (R, C, G, H, S) tiles: the senders drop slot 0 and append what arrives from
    the south (the last row: the new token); the target appends at slot n what it receives."""
    target = append.target
    if append.senders:
        first = append.senders[0]
        oldest = data[first:, ..., 0].clone()  # (R - first, C, G, H): each sender's oldest
        incoming = torch.cat([oldest, new[-1:].to(data.dtype)], dim=0)  # row r gets r + 1's
        data[first:, ..., : n - 1] = data[first:, ..., 1:n].clone()
        data[first:, ..., n - 1] = incoming[1:]
        data[target, ..., n] = incoming[0]
    else:
        data[target, ..., n] = new[target].to(data.dtype)


def _listed(values: list[int], limit: int = 8) -> str:
    """The first `limit` values, then how many more: an error message stays one short line."""
    shown = ", ".join(map(str, values[:limit]))
    return shown if len(values) <= limit else f"{shown}, ... {len(values) - limit} more"


def _evict_insert(
    data: torch.Tensor, new: torch.Tensor, append: Append, counts: np.ndarray
) -> None:
    """In place on (R, C, G, H, S) tiles of a full window: rows 0..target drop their slot 0
    (row 0's is evicted) and append at slot n_r - 1 what arrives from the south (the target
    row: the new token). Counts are unchanged."""
    tail = append.target
    incoming = torch.cat([data[1 : tail + 1, ..., 0].clone(), new[tail : tail + 1].to(data.dtype)])
    data[: tail + 1, ..., :-1] = data[: tail + 1, ..., 1:].clone()
    rows = torch.arange(tail + 1)
    data[rows, ..., torch.as_tensor(counts[: tail + 1] - 1)] = incoming
