"""SRAM accounting per core (the M of PLMR), in the device's storage dtype (SPEC.md §10.2).

Every live buffer (weights, KV cache, activations, double buffers, scratch) is registered by
name with its bytes per core: an int when every core holds the same, or a (rows, cols) array.
Exceeding a core's SRAM raises `SramOverflowError` naming the buffer, the core and the amounts.
`peak_bytes` is the tracker's running maximum; `watch()` measures one walk's own peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from waferllm.errors import SramOverflowError

BytesPerCore = int | np.ndarray


@dataclasses.dataclass(eq=False)  # each watch is its own: removed by identity
class PeakWatch:
    """The most any core held during one watched walk: the totals at its allocations and the
    live bytes when it ended (not what earlier walks left and this one freed)."""

    bytes_per_core: int = 0


class SramTracker:
    def __init__(self, *, rows: int, cols: int, capacity_bytes: int, origin: tuple[int, int]):
        self.rows, self.cols = rows, cols
        self.capacity_bytes = capacity_bytes
        self.origin = origin
        self.live: dict[str, BytesPerCore] = {}
        self._total: BytesPerCore = 0
        self.peak_bytes = 0
        self.hint = ""
        self._scopes: list[list[str]] = []
        self._watches: list[PeakWatch] = []

    @property
    def live_bytes_max(self) -> int:
        return int(np.max(self._total))

    def alloc(self, name: str, bytes_per_core: BytesPerCore, *, hint: str = "") -> str:
        """Register a buffer; returns the (possibly uniquified) name to free it with."""
        key, n = name, 1
        while key in self.live:
            n += 1
            key = f"{name}#{n}"
        total = self._total + bytes_per_core
        worst = total if type(total) is int else int(np.max(total))
        if worst > self.capacity_bytes:
            flat = int(np.argmax(np.broadcast_to(total, (self.rows, self.cols))))
            y, x = divmod(flat, self.cols)
            need = int(np.max(bytes_per_core))
            raise SramOverflowError(
                tensor=name,
                core=(y + self.origin[0], x + self.origin[1]),
                needed_bytes=worst,
                available_bytes=self.capacity_bytes,
                hint=hint
                or self.hint
                or f"'{name}' alone takes {need} bytes per core; "
                "use more cores, fewer layers per region or a shorter context",
            )
        self.live[key] = bytes_per_core
        self._total = total
        self.peak_bytes = max(self.peak_bytes, worst)
        for watch in self._watches:
            watch.bytes_per_core = max(watch.bytes_per_core, worst)
        if self._scopes:
            self._scopes[-1].append(key)
        return key

    def alloc_all(self, names: Sequence[str], sizes: Sequence[int]) -> list[str]:
        """`alloc` of each buffer in turn, whole bytes the same on every core: the keys and
        peaks `alloc` gives. When they fit together on whole-number totals the capacity is
        checked once (sizes >= 0: the running total only grows, its last value the largest);
        otherwise one by one, to fail on the same buffer (a layer's many weights at once)."""
        total = self._total
        if not sizes:
            return []
        if not isinstance(total, int) or not all(type(b) is int and b >= 0 for b in sizes):
            return [self.alloc(n, b) for n, b in zip(names, sizes, strict=True)]
        worst = total + sum(sizes)
        if worst > self.capacity_bytes:
            return [self.alloc(n, b) for n, b in zip(names, sizes, strict=True)]
        keys = []
        for name, nbytes in zip(names, sizes, strict=True):
            key, n = name, 1
            while key in self.live:
                n += 1
                key = f"{name}#{n}"
            self.live[key] = nbytes
            keys.append(key)
        self._total = worst
        self.peak_bytes = max(self.peak_bytes, worst)
        for watch in self._watches:
            watch.bytes_per_core = max(watch.bytes_per_core, worst)
        if self._scopes:
            self._scopes[-1].extend(keys)
        return keys

    def free(self, key: str) -> None:
        self._total = self._total - self.live.pop(key)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Free everything allocated inside when the block ends (temporaries, scratch)."""
        self._scopes.append([])
        try:
            yield
        finally:
            for key in self._scopes.pop():
                if key in self.live:
                    self.free(key)

    @contextlib.contextmanager
    def freed_if(self, raised: type[BaseException]) -> Iterator[None]:
        """Free what was allocated inside (outside inner scopes) and is still live if the
        block raises `raised`: a walk given up midway leaves no buffer behind."""
        keys: list[str] = []
        self._scopes.append(keys)
        try:
            yield
        except raised:
            for key in keys:
                if key in self.live:
                    self.free(key)
            raise
        finally:
            self._scopes.pop()

    @contextlib.contextmanager
    def watch(self) -> Iterator[PeakWatch]:
        """Measure the peak of the walk inside the block (read it after the block ends)."""
        watch = PeakWatch()
        self._watches.append(watch)
        try:
            yield watch
        finally:
            self._watches.remove(watch)
            watch.bytes_per_core = max(watch.bytes_per_core, self.live_bytes_max)
