"""The plan's SRAM bound covers the walk's real peak: a request the plan accepts runs to its last
token (SPEC.md §9: accepted means finished), in functional and in estimate mode.

Random small configs, grids and prompt lengths on a device whose SRAM is just large enough for
the plan (so the KV cache holds few slots and every request runs to the cache's end quickly).
"""

from __future__ import annotations

import dataclasses

from helpers.weights import random_weights
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from waferllm.device import Device, tiny
from waferllm.engine.engine import Engine
from waferllm.engine.sampling import SamplingParams
from waferllm.errors import WaferError
from waferllm.estimate.decode_walks import DecodeWalks
from waferllm.model.config import ModelConfig, from_hf_dict
from waferllm.model.placement import PlacementMode, ResidentLayouts
from waferllm.model.plan import plan_model
from waferllm.model.quant import UNCOMPRESSED, Storage
from waferllm.model.transformer import MeshTransformer

# The 135M-parameter Llama shape of issue 11 (SmolLM-135M's config.json fields).
SHAPE_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}


def _plans(
    config: ModelConfig,
    device: Device,
    prefill: tuple[int, int],
    decode: tuple[int, int],
    storage: Storage = UNCOMPRESSED,
):
    try:
        plan_model(
            config,
            device,
            prefill_grid=prefill,
            decode_grid=decode,
            placement=PlacementMode.FIT,
            resident=ResidentLayouts.ONE,
            max_context_tokens=None,
            storage=storage,
        )
    except WaferError:
        return False
    return True


def tightest_device(
    config: ModelConfig,
    prefill: tuple[int, int],
    decode: tuple[int, int],
    slack_bytes: int,
    storage: Storage = UNCOMPRESSED,
) -> Device:
    """`tiny` with the least SRAM on which the model plans, plus `slack_bytes`."""
    low, high = 1, 1 << 22
    while high - low > 1:
        mid = (low + high) // 2
        device = dataclasses.replace(tiny(), sram_bytes_per_core=mid)
        if _plans(config, device, prefill, decode, storage):
            high = mid
        else:
            low = mid
    return dataclasses.replace(tiny(), sram_bytes_per_core=high + slack_bytes)


@st.composite
def small_configs(draw: st.DrawFn) -> ModelConfig:
    kv_heads = draw(st.integers(1, 3))
    return from_hf_dict(
        {
            "model_type": "llama",
            "hidden_size": draw(st.integers(4, 48)),
            "intermediate_size": draw(st.integers(4, 96)),
            "num_hidden_layers": draw(st.integers(1, 3)),
            "num_attention_heads": kv_heads * draw(st.integers(1, 3)),
            "num_key_value_heads": kv_heads,
            "head_dim": draw(st.sampled_from([2, 4, 6, 8])),
            "vocab_size": draw(st.integers(8, 600)),
            "tie_word_embeddings": draw(st.booleans()),
            "max_position_embeddings": 4096,
        },
        "random",
    )


grids = st.tuples(st.integers(1, 4), st.integers(1, 4))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),  # a failure prints its example; no slow shrinking
)
@given(
    config=small_configs(),
    prefill=grids,
    decode=grids,
    slack_bytes=st.integers(0, 600),
    prompt_fraction=st.floats(0, 1),
)
def test_a_request_the_plan_accepts_runs_to_its_last_token(
    config, prefill, decode, slack_bytes, prompt_fraction
):
    device = tightest_device(config, prefill, decode, slack_bytes)
    model = MeshTransformer(
        config, random_weights(config), device=device, prefill_grid=prefill, decode_grid=decode
    )
    longest = min(model.max_prompt_tokens, model.kv_capacity_tokens(), 24)
    length = max(1, round(prompt_fraction * longest))
    room = model.max_new_tokens(length)
    params = SamplingParams(max_tokens=max(1, min(room, 64)), ignore_eos=True)
    engine = Engine(model)
    try:
        engine.validate([1] * length, params)
    except WaferError:
        return  # refused before the first token: allowed
    trace = engine.generate([1] * length, params).run()
    assert trace.output_len == params.max_tokens
    assert model.peak_sram_bytes_per_core() <= device.sram_bytes_per_core


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),
)
@given(
    config=small_configs(),
    prefill=grids,
    decode=grids,
    slack_bytes=st.integers(0, 600),
    weight_dtype=st.sampled_from(["int8", "int4"]),
    kv_dtype=st.sampled_from(["float16", "int8", "int4"]),
)
def test_a_request_the_compressed_plan_accepts_runs_to_its_last_token(
    config, prefill, decode, slack_bytes, weight_dtype, kv_dtype
):
    storage = Storage.of(weight_dtype, kv_dtype)
    device = tightest_device(config, prefill, decode, slack_bytes, storage)
    model = MeshTransformer(
        config,
        random_weights(config),
        device=device,
        prefill_grid=prefill,
        decode_grid=decode,
        storage=storage,
    )
    length = max(1, min(model.max_prompt_tokens, model.kv_capacity_tokens(), 12))
    new_tokens = max(1, min(model.max_new_tokens(length), 32))
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    engine = Engine(model)
    try:
        engine.validate([1] * length, params)
    except WaferError:
        return  # refused before the first token: allowed
    engine.generate([1] * length, params).run()
    assert model.peak_sram_bytes_per_core() <= device.sram_bytes_per_core


def test_the_135m_shape_on_its_default_grid_has_room_for_the_previous_steps_logits():
    """Issue 11's model: on 9x9 `tiny` the plan claimed thousands of tokens and the third one
    overflowed on 'lm_head.out' (the previous step's logits were not in the decode budget).
    Estimate mode walks the same tensors at the SRAM peak, from the second decode step on."""
    config = from_hf_dict(SHAPE_135M, "135m-shape")
    model = MeshTransformer(config, None, device=tiny(), prefill_grid=(9, 9), decode_grid=(9, 9))
    output_len = model.max_new_tokens(3)
    assert output_len > 1000
    DecodeWalks(model).decode(3, output_len)  # SramOverflowError if the plan under-counts
    assert model.peak_sram_bytes_per_core() <= tiny().sram_bytes_per_core
