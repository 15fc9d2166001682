"""Random model weights built in memory, for tests that need a placed model but no checkpoint
file or transformers reference (plans, SRAM peaks, hostile numbers)."""

from __future__ import annotations

import torch

from waferllm.model.config import ModelConfig
from waferllm.model.weights import LayerWeights, ModelWeights


def random_weights(config: ModelConfig, seed: int = 0) -> ModelWeights:
    """Small random weights in HF orientation, built in memory (no checkpoint file)."""
    gen = torch.Generator().manual_seed(seed)
    d, f, v, q, kv = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.q_size,
        config.kv_size,
    )

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    layers = tuple(
        LayerWeights(
            wq=rand(q, d),
            wk=rand(kv, d),
            wv=rand(kv, d),
            wo=rand(d, q),
            bq=None,
            bk=None,
            bv=None,
            bo=None,
            w_gate=rand(f, d),
            w_up=rand(f, d),
            w_down=rand(d, f),
            b_gate=None,
            b_up=None,
            b_down=None,
            attn_norm=torch.ones(d),
            mlp_norm=torch.ones(d),
        )
        for _ in range(config.num_hidden_layers)
    )
    embed = rand(v, d)
    lm_head = embed if config.tie_word_embeddings else rand(v, d)
    return ModelWeights(
        config=config, embed=embed, layers=layers, final_norm=torch.ones(d), lm_head=lm_head
    )
