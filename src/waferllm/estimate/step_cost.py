"""What one scheduler iteration costs: the `StepCost` protocol and its binned cache.

The serving scheduler (`scheduler.py`) never sees a device: it asks a `StepCost` for modelled
seconds of a prefill of some prompts, a decode step over some contexts and the re-layouts
between the phases. The public API builds one from the wafer cost model or the GPU baseline.
`BinnedStepCost` caches any `StepCost` by (batch size, context-length bin) so that replaying
10,000 requests asks the underlying model only a few hundred questions.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["BinnedStepCost", "StepCost", "context_bin_edges"]

BINS_PER_OCTAVE = 4  # edges 2^(k/4): neighbouring edges differ by 19%, costs are interpolated


@runtime_checkable
class StepCost(Protocol):
    """Modelled seconds of each kind of scheduler iteration, and the KV cache they share.

    `prefill_s(prompt_lens)`: one prefill iteration over prompts of these lengths, first tokens
    included (TTFT's work). `decode_step_s(context_lens)`: one decode step of sequences with
    these many cached tokens each (every sequence produces one token). `to_decode_s(prompt_lens)`:
    the prefill-to-decode re-layout after prefilling these prompts (the KV cache moves; with one
    resident layout, the weights too). `to_prefill_s()`: the decode-to-prefill weight re-layout
    (zero when both layouts are resident). `kv_capacity_tokens`: tokens the KV cache holds,
    summed over every resident sequence. `kv_window_tokens`: the most tokens one sequence
    keeps cached (a sliding window whose cache evicts older keys), or None (its whole context).
    """

    @property
    def kv_capacity_tokens(self) -> int: ...

    @property
    def kv_window_tokens(self) -> int | None: ...

    def prefill_s(self, prompt_lens: Sequence[int]) -> float: ...

    def decode_step_s(self, context_lens: Sequence[int]) -> float: ...

    def to_decode_s(self, prompt_lens: Sequence[int]) -> float: ...

    def to_prefill_s(self) -> float: ...


def context_bin_edges(max_tokens: int) -> list[int]:
    """Bin edges 1, 2, ..., round(2^(k/4)), ..., capped by (and ending at) `max_tokens`."""
    top = math.log2(max(max_tokens, 1)) * BINS_PER_OCTAVE
    edges = {round(2 ** (k / BINS_PER_OCTAVE)) for k in range(math.ceil(top) + 1)}
    return sorted(e for e in edges if e < max_tokens) + [max_tokens]


class BinnedStepCost:
    """A `StepCost` that asks `inner` only at (batch size, bin edge) points and interpolates.

    A batch is represented by its size B and its mean length m: the cost is `inner`'s cost of
    B sequences all of length e at the two bin edges e around m, interpolated linearly in m
    (exact at the edges; exact everywhere for costs linear in the mean length, such as a decode
    step's KV reads). Transitions are binned the same way. Lengths above `max_tokens` are an
    internal error (the scheduler refuses such requests first).
    """

    def __init__(self, inner: StepCost, *, max_tokens: int) -> None:
        self.inner = inner
        self.edges = context_bin_edges(max_tokens)
        self.kv_capacity_tokens = inner.kv_capacity_tokens
        self.kv_window_tokens = inner.kv_window_tokens
        self._to_prefill_s = inner.to_prefill_s()
        self._cache: dict[tuple[str, int, int], float] = {}
        self.num_inner_calls = 0

    def prefill_s(self, prompt_lens: Sequence[int]) -> float:
        return self._binned("prefill", prompt_lens)

    def decode_step_s(self, context_lens: Sequence[int]) -> float:
        return self._binned("decode", context_lens)

    def to_decode_s(self, prompt_lens: Sequence[int]) -> float:
        return self._binned("to_decode", prompt_lens)

    def to_prefill_s(self) -> float:
        return self._to_prefill_s

    def _binned(self, kind: str, lens: Sequence[int]) -> float:
        batch = len(lens)
        mean = sum(lens) / batch
        edges = self.edges
        hi = bisect.bisect_left(edges, mean)
        assert hi < len(edges), f"length {mean} beyond the binned range {edges[-1]}"
        if edges[hi] == mean or hi == 0:
            return self._at(kind, batch, edges[hi])
        lo_edge, hi_edge = edges[hi - 1], edges[hi]
        lo_s, hi_s = self._at(kind, batch, lo_edge), self._at(kind, batch, hi_edge)
        return lo_s + (hi_s - lo_s) * (mean - lo_edge) / (hi_edge - lo_edge)

    def _at(self, kind: str, batch: int, length: int) -> float:
        key = (kind, batch, length)
        cost = self._cache.get(key)
        if cost is None:
            self.num_inner_calls += 1
            lens = [length] * batch
            if kind == "prefill":
                cost = self.inner.prefill_s(lens)
            elif kind == "decode":
                cost = self.inner.decode_step_s(lens)
            else:
                cost = self.inner.to_decode_s(lens)
            self._cache[key] = cost
        return cost
