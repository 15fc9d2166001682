"""Random model weights built in memory, for tests that need a placed model but no checkpoint
file or transformers reference (plans, SRAM peaks, hostile numbers)."""

from __future__ import annotations

import torch

from waferllm.model.config import ModelConfig
from waferllm.model.family import family_of
from waferllm.model.weights import LayerWeights, ModelWeights


def random_weights(config: ModelConfig, seed: int = 0) -> ModelWeights:
    """Small random weights in HF orientation, every layer tensor of the config's family
    table: matrices scaled by 1/sqrt(fan_in), vectors (norms, biases) near 1."""
    gen = torch.Generator().manual_seed(seed)
    d, v = config.hidden_size, config.vocab_size

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    def vector(n: int) -> torch.Tensor:
        return 1 + 0.1 * torch.randn(n, generator=gen)

    rows = family_of(config).tensors(config)
    layers = tuple(
        LayerWeights(
            {
                t.name: rand(*t.shape(config))
                if len(t.shape(config)) > 1
                else vector(*t.shape(config))
                for t in rows
            }
        )
        for _ in range(config.num_hidden_layers)
    )
    embed = rand(v, d)
    lm_head = embed if config.tie_word_embeddings else rand(v, d)
    return ModelWeights(
        config=config, embed=embed, layers=layers, final_norm=torch.ones(d), lm_head=lm_head
    )
