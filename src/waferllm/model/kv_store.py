"""The decode KV cache's tiles on the mesh: K and V of one region's layers (`KvStore`).

K is stored transposed ([G, H, S] per core) so scores need no transpose, V as [G, S, Hv]: k in
the heads' RoPE slots, v in its own value slots (`HeadLayout`), one per-core buffer of the
widest column's k and v per slot (`HeadLayout.cache_bytes`). Which row takes a token, and when
the rows shift, is `kv_cache.RowCounts`'s business; this module moves the data and charges it.
Legend: R rows, C columns, S slots per row, G kv heads per column, H k slots, Hv v slots.
"""

from __future__ import annotations

import numpy as np
import torch

from waferllm.kernels.dequant import charge_dequant, charge_quantise
from waferllm.kernels.heads import HeadLayout, gather_rows
from waferllm.mesh.charges import charge_tail_shift
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.kv_cache import Append, RowCounts
from waferllm.model.quant import quantise_kv_tile

# a sequence's host tensors start this wide and double (reallocations stay rare, and a large
# grid's rows, each holding a few positions, do not zero-fill unused slots at the hand-off)
HOST_MIN_SLOTS = 4


class KvStore:
    """K and V tiles of the layers of one region (one decode mesh), for every sequence of a batch.

    SRAM is charged once for the full `slots` per row (a static allocation the sequences share,
    each within its own share of the slots, which its `RowCounts` enforces); the host tensors
    of a sequence (`seq`, 0 for batch 1) grow as positions arrive, so a large SRAM capacity
    costs no host memory until it is used. K is (R, C, G, H, s) and V (R, C, G, s, Hv) in the
    compute dtype (zero padded to the widest column; SRAM and the shift count each column's
    real slots, the widest column's, `slot_bytes`). With a compressed `stored` dtype every
    written token is quantised per kv head along its slots (`model.quant`): SRAM, the shift's
    bytes and the hand-off count codes and scales; reads pay the dequantisation, writes the
    quantisation (`kernels.dequant`).
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
        bytes_per_layer = self.slot_bytes * slots
        self._keys = [mesh.sram.alloc(f"{name}.layer{i}", bytes_per_layer) for i in layers]
        self._widths: dict[int, int] = {}
        self.k: dict[tuple[int, int], torch.Tensor] = {}  # (seq, layer) -> tiles
        self.v: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def slot_bytes(self) -> int:
        """Bytes of one cached position (its k and v) on a core, as stored: the widest
        column's (`HeadLayout.cache_bytes`)."""
        return self.heads.cache_bytes(self.stored, self.mesh.device.storage_bytes)

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
        new = self._grown(width, have)
        for i in self.layers:
            k, v = self._zeros(new)
            if (seq, i) in self.k:
                k[..., :have] = self.k[seq, i]
                v[..., :have, :] = self.v[seq, i]
            self.k[seq, i], self.v[seq, i] = k, v
        self._widths[seq] = new

    def _grown(self, width: int, have: int) -> int:
        """Slots of a host tensor that must hold `width` (doubling from `have`, at least
        HOST_MIN_SLOTS, at most `slots`)."""
        return min(self.slots, max(width, 2 * have, HOST_MIN_SLOTS))

    def _zeros(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty K (R, C, G, H, width) and V (R, C, G, width, Hv) host tensors."""
        rows, cols = self.mesh.shape
        g, h, hv = self.heads.kv_per_tile, self.heads.head_slots, self.heads.value_slots
        dtype, on = self.mesh.compute_dtype, self.mesh.torch_device
        k = torch.zeros((rows, cols, g, h, width), dtype=dtype, device=on)
        return k, torch.zeros((rows, cols, g, width, hv), dtype=dtype, device=on)

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
        """Place logical k, v [L, Hkv*hd] (position order) into the rows given by `counts` (k in
        the RoPE slots, v in the value slots): its
        last `counts.total` positions (the older ones are evicted under a sliding window).
        Every layer of the store is filled at the hand-off; this one's tensors are built
        here at the sequence's width (its other layers' when it already has tiles)."""
        if self.mesh.mode is Mode.ESTIMATE:
            return
        cols, heads = self.mesh.cols, self.heads
        width = max(int(counts.counts.max(initial=0)), 1)
        if seq in self._widths:
            self._ensure(width, seq)
        else:
            self._widths[seq] = self._grown(width, 0)
        k, v = self._zeros(self._widths[seq])
        row = np.repeat(np.arange(self.mesh.rows), counts.counts)
        at = torch.as_tensor(row), torch.as_tensor(np.arange(counts.total) - counts.starts[row])
        tiles = []
        for host, index, h in (
            (k_host, heads.kv_index(), heads.head_slots),
            (v_host, heads.v_index(), heads.value_slots),
        ):
            kept = host[host.shape[0] - counts.total :]
            feats = gather_rows(kept.T, index).T  # [total, C*G*H] (v: C*G*Hv)
            tile = feats.reshape(counts.total, cols, heads.kv_per_tile, h).to(
                device=self.mesh.torch_device, dtype=self.mesh.compute_dtype
            )
            tiles.append(quantise_kv_tile(tile, self.stored))  # per token, as `write`'s
        k[at[0], :, :, :, at[1]] = tiles[0]  # (R, C, G, H, S)
        v[at[0], :, :, at[1], :] = tiles[1]  # (R, C, G, S, Hv)
        self.k[seq, layer], self.v[seq, layer] = k, v

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
        """Insert this step's k (R, C, G, H) and v (R, C, G, Hv) tiles (replicated along Y) as
        `append` says, quantised first when the cache is compressed (priced by
        `charge_write`)."""
        if append.senders:
            nbytes = self.slot_bytes
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
        """A compressed cache quantises each written token's k (G heads x H slots) and v (G
        heads x Hv slots)."""
        g = self.heads.kv_per_tile
        for what, h in (("k", self.heads.head_slots), ("v", self.heads.value_slots)):
            charge_quantise(
                self.mesh, ledger, f"kv_quantise_{what}", self.stored, reduced=h, other=g
            )

    def charge_read(self, width: int, ledger: Ledger) -> None:
        """A compressed cache's window of `width` slots expanded for one layer's attention:
        K and V, each G x width positions of H (v: Hv) slots (groups along the slots)."""
        g = self.heads.kv_per_tile
        for what, h in (("k", self.heads.head_slots), ("v", self.heads.value_slots)):
            charge_dequant(
                self.mesh, ledger, f"kv_dequant_{what}", self.stored, reduced=h, other=g * width
            )

    def window(self, layer: int, width: int, *, seq: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `width` slots of every row: K (R, C, G, H, w), V (R, C, G, w, Hv); slots
        beyond the sequence's tiles read as zeros (a batch pads to its widest window)."""
        if self.mesh.mode is Mode.ESTIMATE:
            rows, cols = self.mesh.shape
            g, h, hv = self.heads.kv_per_tile, self.heads.head_slots, self.heads.value_slots
            dtype = self.mesh.compute_dtype
            return (
                torch.empty((rows, cols, g, h, width), dtype=dtype, device="meta"),
                torch.empty((rows, cols, g, width, hv), dtype=dtype, device="meta"),
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
