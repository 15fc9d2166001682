"""Non-finite numbers stop a request with a clear error naming the step (issue 11 #4): NaN or
inf logits never become a token, and float16 compute that overflows says so."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.weights import random_weights

from waferllm.device import tiny
from waferllm.engine.engine import Engine
from waferllm.engine.sampling import Sampler, SamplingParams
from waferllm.errors import NonFiniteError
from waferllm.model.config import from_hf_dict
from waferllm.model.transformer import MeshTransformer

CONFIG = from_hf_dict(
    {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 50,
        "max_position_embeddings": 256,
    },
    "small",
)


def _model(weights, **kwargs):
    return MeshTransformer(
        CONFIG, weights, device=tiny(), prefill_grid=(2, 2), decode_grid=(2, 2), **kwargs
    )


def _generate(model, **params):
    return Engine(model).generate([1, 2, 3], SamplingParams(max_tokens=4, **params)).run()


def test_nan_logits_stop_the_prefill_with_an_error_naming_it():
    weights = random_weights(CONFIG)
    head = weights.lm_head.clone()
    head[7, 3] = float("nan")
    model = _model(dataclasses.replace(weights, lm_head=head))
    with pytest.raises(NonFiniteError, match=r"logits of the prefill \(generated token 1\)"):
        _generate(model)


def test_inf_logits_in_a_later_decode_step_name_that_step():
    weights = random_weights(CONFIG)
    model = _model(weights)
    trace = _generate(model, ignore_eos=True)
    assert trace.output_len == 4 and all(0 <= t < CONFIG.vocab_size for t in trace.token_ids)
    # poison the final norm after the prefill: the first decode step's logits are inf
    engine = Engine(model)
    steps = engine.generate([1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))
    next(steps)
    model.decode_state.final_norm.data.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"position 3 \(generated token 2\)"):
        next(steps)


def test_float16_overflow_is_reported_as_such():
    weights = random_weights(CONFIG)
    big = dataclasses.replace(weights, lm_head=weights.lm_head * 1e5, embed=weights.embed * 1e5)
    model = _model(big, compute_dtype=torch.float16)
    with pytest.raises(NonFiniteError, match="float16 overflow"):
        _generate(model)


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing():
    logits = torch.tensor([0.5, 3.0, -1.0, 2.999])
    sampler = Sampler(SamplingParams(temperature=1e-320, seed=0))
    assert sampler.sample(logits) == 1
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        sampler.sample(torch.tensor([0.0, float("nan")]))
