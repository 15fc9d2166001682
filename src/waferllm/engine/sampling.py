"""Choosing the next token: `SamplingParams` (vLLM's names) and the host-side samplers.

Greedy decoding (temperature 0, the default) takes the model's token, chosen by the on-mesh
argmax; nothing leaves the wafer but the token id. Temperature, top-k and top-p need the
logits on the host: the engine fetches them (the model charges that transfer as host I/O, which
no TTFT, TPOT or TPR includes, SPEC.md §10.4) and hands them to a `Sampler`, seeded with a
`torch.Generator` so runs are reproducible within waferllm. Nothing here touches the mesh.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from waferllm.errors import NonFiniteError, WaferError

# Legend: V vocabulary size.

_MAX_SEED = 2**63 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request is decoded (the field names are vLLM's).

    `max_tokens`: new tokens to generate at most (the first one included).
    `temperature`: 0 is greedy, the on-mesh argmax (the default: unlike vLLM's 1.0, because on
    the wafer greedy is the only sampler that needs no logits on the host); > 0 samples from
    softmax(logits / temperature).
    `top_k`: keep only the k most likely tokens (None keeps all).
    `top_p`: keep the smallest set of most likely tokens whose probability reaches top_p
    (1.0 keeps all).
    `seed`: seeds the sampler's generator (None draws a fresh seed from the OS).
    `ignore_eos`: keep generating past end-of-sequence tokens until `max_tokens`.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise WaferError(f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        temp = self.temperature
        if not _is_number(temp) or not math.isfinite(temp) or temp < 0:
            raise WaferError(f"temperature={temp!r} must be a finite number >= 0 (0 is greedy)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise WaferError(f"top_k={self.top_k!r} must be an integer >= 1 (or None for all)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise WaferError(f"top_p={self.top_p!r} must be a number in (0, 1]")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED):
            raise WaferError(f"seed={self.seed!r} must be an integer in [0, 2**63 - 1] (or None)")
        if not isinstance(self.ignore_eos, bool):
            raise WaferError(f"ignore_eos={self.ignore_eos!r} must be True or False")
        if self.greedy and (self.top_k is not None or self.top_p < 1):
            warnings.warn(
                "top_k and top_p have no effect with temperature=0 (greedy decoding)",
                stacklevel=3,
            )

    @property
    def greedy(self) -> bool:
        """True when the token is the on-mesh argmax and no logits need reach the host."""
        return self.temperature == 0


class Sampler:
    """Temperature, then top-k, then top-p (the order vLLM and transformers use), then a draw.

    One sampler per request: its generator advances with every draw, so a request replayed with
    the same seed draws the same tokens.
    """

    def __init__(self, params: SamplingParams) -> None:
        assert not params.greedy, "greedy decoding uses the model's on-mesh argmax"
        self.params = params
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def probabilities(self, logits_V: torch.Tensor) -> torch.Tensor:
        """The distribution the next token is drawn from, float64, zero outside top-k/top-p."""
        assert logits_V.dim() == 1, logits_V.shape
        if bool(logits_V.isnan().any() | logits_V.isposinf().any()) or not bool(
            (logits_V > -math.inf).any()
        ):  # -inf alone is a masked token; NaN, +inf or nothing finite leave no distribution
            raise NonFiniteError("the logits hold NaN or inf; no distribution to sample from")
        # shifted by the max first: a tiny temperature then gives -inf, not inf - inf = nan
        logits_V = logits_V.to(torch.float64)
        scaled_V = (logits_V - logits_V.max()) / self.params.temperature
        if self.params.top_k is not None and self.params.top_k < scaled_V.numel():
            kth = torch.topk(scaled_V, self.params.top_k).values[-1]
            scaled_V = scaled_V.masked_fill(scaled_V < kth, -math.inf)
        probs_V = torch.softmax(scaled_V, dim=0)
        if self.params.top_p < 1:
            sorted_V, order_V = torch.sort(probs_V, descending=True)
            # Keep a token while the mass strictly before it is below top_p: the most likely
            # token always survives, and the kept set is the smallest reaching top_p.
            before_V = torch.cumsum(sorted_V, dim=0) - sorted_V
            dropped = order_V[before_V >= self.params.top_p]
            probs_V = probs_V.index_fill(0, dropped, 0.0)
            probs_V = probs_V / probs_V.sum()
        return probs_V

    def sample(self, logits_V: torch.Tensor) -> int:
        """Draw one token id from `logits_V` (the real vocabulary; padding already dropped)."""
        probs_V = self.probabilities(logits_V)
        return int(torch.multinomial(probs_V, 1, generator=self.generator).item())
