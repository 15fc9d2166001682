"""SamplingParams validation and the host-side samplers (temperature, top-k, top-p, seeds)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.engine.sampling import Sampler, SamplingParams


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", 2.5),
        ("max_tokens", True),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", "hot"),
        ("top_k", 0),
        ("top_k", 1.5),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", 1.0),
        ("ignore_eos", 1),
    ],
)
def test_bad_sampling_values_raise_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}="):
        SamplingParams(**{field: value, **({"temperature": 1.0} if field != "temperature" else {})})


def test_defaults_are_greedy_sixteen_tokens_stopping_at_eos():
    params = SamplingParams()
    assert params.greedy
    assert (params.max_tokens, params.top_k, params.top_p, params.seed) == (16, None, 1.0, None)
    assert not params.ignore_eos


def test_top_k_with_greedy_decoding_warns_that_it_has_no_effect():
    with pytest.warns(UserWarning, match="no effect"):
        SamplingParams(temperature=0.0, top_k=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9)


def test_sampling_params_are_frozen_and_keyword_only():
    params = SamplingParams(max_tokens=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.max_tokens = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplingParams(4)  # type: ignore[misc]


def test_same_seed_draws_the_same_tokens_and_another_seed_differs():
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))

    def draws(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
        return [sampler.sample(logits) for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_temperature_scales_the_softmax_exactly():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    probs = Sampler(SamplingParams(temperature=0.5, seed=0)).probabilities(logits)
    torch.testing.assert_close(probs, torch.softmax(logits.double() / 0.5, 0))


def test_top_k_keeps_only_the_k_most_likely_tokens():
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0])
    probs = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0)).probabilities(logits)
    kept = torch.softmax(torch.tensor([3.0, 2.0], dtype=torch.float64), 0)
    torch.testing.assert_close(
        probs, torch.tensor([0, kept[0], 0, kept[1], 0], dtype=torch.float64)
    )


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs_in = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    logits = probs_in.log()
    at = lambda p: Sampler(SamplingParams(temperature=1.0, top_p=p, seed=0)).probabilities(logits)  # noqa: E731
    torch.testing.assert_close(at(0.5), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(at(0.79), torch.tensor([0.625, 0.375, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(
        at(0.81), torch.tensor([0.5, 0.3, 0.15, 0], dtype=torch.float64) / 0.95
    )
    # the most likely token always survives, however small p is
    assert at(0.01)[0] == 1.0


def test_top_k_larger_than_the_vocabulary_keeps_everything():
    logits = torch.tensor([1.0, 2.0, 3.0])
    probs = Sampler(SamplingParams(temperature=1.0, top_k=10, seed=0)).probabilities(logits)
    torch.testing.assert_close(probs, torch.softmax(logits.double(), 0))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    top_k=st.one_of(st.none(), st.integers(1, 12)),
    top_p=st.floats(0.05, 1.0),
    temperature=st.floats(0.05, 3.0),
)
def test_draws_always_come_from_the_kept_set(seed, top_k, top_p, temperature):
    logits = torch.randn(12, generator=torch.Generator().manual_seed(seed))
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    sampler = Sampler(params)
    probs = sampler.probabilities(logits)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9)
    kept = set(torch.nonzero(probs).flatten().tolist())
    assert int(torch.argmax(logits)) in kept
    if top_k is not None:
        assert len(kept) <= top_k or len(set(logits.tolist())) < len(logits)
    assert {sampler.sample(logits) for _ in range(30)} <= kept


def test_sampling_follows_the_distribution():
    logits = torch.tensor([0.0, math.log(3.0)])  # p = [0.25, 0.75]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=123))
    draws = torch.tensor([sampler.sample(logits) for _ in range(4000)], dtype=torch.float64)
    assert abs(float(draws.mean()) - 0.75) < 0.03  # 5 standard deviations


def test_an_unseeded_sampler_still_draws_valid_tokens():
    logits = torch.tensor([0.0, 0.0, -math.inf])
    sampler = Sampler(SamplingParams(temperature=1.0))
    assert {sampler.sample(logits) for _ in range(50)} <= {0, 1}
