"""Useful FLOPs of a request, from the unpadded shapes (the utilisation metric's numerator).

Every projection of the layer's family table (`model.family`) at each position, attention over
the keys each position sees (its sliding window honoured), and the LM head once per selected
token. Padding, masked slots and norms are excluded. No ledgers here: modelled FLOPs are in
the ledgers themselves.
"""

from __future__ import annotations

from waferllm.model.config import ModelConfig

# Legend: L prompt tokens, O generated tokens, D model dim, V vocab.


def model_flops(config: ModelConfig, *, prompt_len: int, output_len: int) -> int:
    """Useful FLOPs of one request: every projection and the attention of the L prompt
    positions and the O-1 fed-back tokens, plus the LM head at the last prompt position and
    at every decode step (padding and masked slots excluded)."""
    d, hd = config.hidden_size, config.head_dim
    q_size = config.num_attention_heads * hd
    projections = 2 * config.layer_matmul_params
    positions = prompt_len + max(output_len - 1, 0)
    window = config.sliding_window
    # position p attends to min(p + 1, window) keys: q.k and p.v are 2 FLOPs per element each
    keys = _keys_seen(positions, window)
    attention = 4 * q_size * keys
    lm_head_calls = 1 + max(output_len - 1, 0)
    return (
        config.num_hidden_layers * (projections * positions + attention)
        + 2 * d * config.vocab_size * lm_head_calls
    )


def _keys_seen(positions: int, window: int | None) -> int:
    """sum over p < positions of min(p + 1, window) (p + 1 without a window), in closed form:
    1 + 2 + ... up to the window, then `window` keys for every later position."""
    ramp = min(positions, window) if window else positions
    return ramp * (ramp + 1) // 2 + (positions - ramp) * (window or 0)


__all__ = ["model_flops"]
