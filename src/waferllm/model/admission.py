"""Admitting a batch of prompts (`Admission`, which `MeshTransformer` inherits): the KV cache's
capacity and eviction, how each prompt is prefilled (whole or in chunks) and each sequence's
share of the decode cache's slots per row (SPEC.md §10.9, `kv_cache.admit`).

Refusals are raised here, before anything runs: a prompt the cache cannot hold, a prompt the
prefill plan cannot hold even in chunks, a batch whose KV cache does not fit. Running the
prompts and the hand-off are `transformer.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from waferllm.errors import WaferError
from waferllm.model.chunked import chunk_candidates, default_chunk_tokens
from waferllm.model.config import ModelConfig
from waferllm.model.decode import kv_budget
from waferllm.model.kv_cache import (
    KvBudget,
    KvCacheFullError,
    KvPolicy,
    RowCounts,
    admit,
    evicts,
    kv_capacity_tokens,
    max_new_tokens,
    slots_needed,
)
from waferllm.model.plan import ModelPlan


class Admission:
    """What a placed model's batch may hold, from its plan, config and KV policy: the cache's
    capacity and eviction, whether a prompt can be prefilled, the slots a batch needs.
    `MeshTransformer` inherits it (the engine's and the estimate layer's surface)."""

    plan: ModelPlan
    config: ModelConfig
    kv_policy: KvPolicy

    @property
    def kv_slots_per_row(self) -> int:
        return self.plan.kv_slots

    def evicts(self, policy: KvPolicy | None = None) -> bool:
        """Whether the cache evicts keys older than the sliding window (and never fills)."""
        policy = KvPolicy(policy or self.kv_policy)
        rows = self.plan.decode.grid[0]
        return evicts(policy, rows, self.plan.kv_slots, self.config.sliding_window)

    def kv_capacity_tokens(self, policy: KvPolicy | None = None, prompt_len: int = 0) -> int:
        """Largest total context (prompt + tokens fed back) the cache holds (SPEC.md §10.4).
        An evicting cache (sliding window) holds any context: the model's trained context
        (max_position_embeddings) bounds it instead."""
        rows = self.plan.decode.grid[0]
        policy = KvPolicy(policy or self.kv_policy)
        return kv_capacity_tokens(
            policy, rows, self.plan.kv_slots, prompt_len, **self._window_limits()
        )

    def max_new_tokens(self, prompt_len: int, policy: KvPolicy | None = None) -> int:
        """Tokens that can be generated after a prompt of `prompt_len` before SRAM runs out
        (an evicting cache: before the trained context ends)."""
        rows = self.plan.decode.grid[0]
        policy = KvPolicy(policy or self.kv_policy)
        return max_new_tokens(policy, rows, self.plan.kv_slots, prompt_len, **self._window_limits())

    def _window_limits(self) -> dict[str, int | None]:
        return {
            "window": self.config.sliding_window,
            "max_positions": self.config.max_position_embeddings,
        }

    def can_prefill(self, prompt_len: int) -> bool:
        """Whether the prefill plan holds the prompt, at once or in chunks."""
        fits = prompt_len <= self.plan.max_prompt_tokens
        return fits or bool(chunk_candidates(self.plan, prompt_len))

    def default_chunk_tokens(self, prompt_len: int) -> int:
        """The chunk a too-long prompt runs in: the fewest equal chunks that fit the plan."""
        return default_chunk_tokens(self.plan, prompt_len)

    @property
    def kv_budget(self) -> KvBudget:
        """The decode regions' room for a batch's KV cache and scratch (`admit`)."""
        return kv_budget(self.plan)

    def admits(self, prompt_lens: Sequence[int], context_tokens: Sequence[int]) -> bool:
        """Whether the KV cache holds a batch of these prompts growing to these contexts."""
        rows, window = self.plan.decode.grid[0], self.config.sliding_window
        needs = [
            slots_needed(self.kv_policy, rows, p, c, window=window)
            for p, c in zip(prompt_lens, context_tokens, strict=True)
        ]
        return self.kv_budget.fits(needs)

    def handoff_counts(self, prompt_len: int, *, slots: int | None = None) -> RowCounts:
        """Cached positions per decode row after a prompt of `prompt_len` (rows balanced), in
        a share of `slots` per row (default: the whole cache); an evicting cache keeps the last
        window."""
        rows, window = self.plan.decode.grid[0], self.config.sliding_window
        share = self.plan.kv_slots if slots is None else slots
        return RowCounts.balanced(self.kv_policy, rows, share, prompt_len, window)

    def prompt_chunks(
        self, lengths: list[int], chunk_tokens: Sequence[int | None] | None
    ) -> list[int | None]:
        """Each prompt's chunk (None: one piece): `chunk_tokens[b]` where given, else the default
        chunk of a prompt longer than the plan holds at once (`default_chunk_tokens`, which raises
        when even chunks do not fit). Raises for a prompt longer than the KV cache holds."""
        given: list[int | None] = [None] * len(lengths)
        if chunk_tokens is not None:
            given = list(chunk_tokens)
        if len(given) != len(lengths):
            raise WaferError(f"{len(lengths)} prompts but {len(given)} chunk sizes")
        for b, length in enumerate(lengths):
            self._check_cache(length)
            if given[b] is None and length > self.plan.max_prompt_tokens:
                given[b] = self.default_chunk_tokens(length)
        return given

    def kv_shares(self, lengths: list[int], context_tokens: Sequence[int] | None) -> list[int]:
        """Each sequence's share of the slots per row for `context_tokens[b]` cached positions
        (default: an equal share each, or what its prompt needs if more); KvCacheFullError when
        the batch's KV does not fit. Under a sliding window a sequence needs at most the window."""
        budget, policy, window = self.kv_budget, self.kv_policy, self.config.sliding_window
        if context_tokens is None:
            share = budget.equal_share(len(lengths))
            shares = [
                max(share, slots_needed(policy, budget.rows, n, n, window=window)) for n in lengths
            ]
            if budget.fits(shares):
                return shares
            context_tokens = [budget.rows * s for s in shares]  # admit says what does not fit
        if len(context_tokens) != len(lengths):
            raise WaferError(f"{len(lengths)} prompts but {len(context_tokens)} context sizes")
        contexts = [int(c) for c in context_tokens]
        return admit(policy, budget, lengths, contexts, window=window)

    def _check_cache(self, length: int) -> None:
        """A prompt longer than a non-evicting cache holds is refused."""
        if not self.evicts() and length > self.kv_capacity_tokens():
            raise KvCacheFullError(
                f"the prompt has {length} tokens but the KV cache holds at most "
                f"{self.kv_capacity_tokens()} ({self.kv_policy.value} policy); use a larger "
                "decode grid, more SRAM or a shorter prompt"
            )
