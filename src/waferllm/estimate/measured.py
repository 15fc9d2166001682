"""The decoder layer PAPER.md §3.3's rows measured, for calibrating like with like.

The public code (code notes §3.1, §4, §7.1; PAPER.md §5) runs one attention head over the
whole hidden size: one softmax per token, its score reductions spanning whole rows. The model
runs the real heads; the calibration compares the published rows with the layer as measured.
Its numerical bugs (code notes §7 items 7-11, e.g. SiLU on dim/P entries) are not modelled:
the notes class them as affecting numerics, not timing. Predictions never use this module.
"""

from __future__ import annotations

import dataclasses

from waferllm.model.config import ModelConfig


def single_head(config: ModelConfig) -> ModelConfig:
    """`config` as the public code configures it: n_heads = n_kv_heads = 1 and head_dim =
    hidden size (code notes §3.1), named `<name>-single-head`."""
    return dataclasses.replace(
        config,
        name=f"{config.name}-single-head",
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=config.hidden_size,
    )
