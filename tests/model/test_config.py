"""Model configs: presets, HF config.json parsing for each family, refusals, RoPE frequencies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from waferllm.errors import WaferError
from waferllm.model.config import (
    ModelConfig,
    ModelConfigError,
    RopeScaling,
    from_hf_dict,
    rope_inv_freq,
)
from waferllm.model.config_sources import PRESETS, checkpoint_name, hf_config_dict, load_config

SMALL = {
    "hidden_size": 40,
    "intermediate_size": 88,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 301,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
HF_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
}


def _saved(tmp_path: Path, hf_config: Any) -> Path:
    hf_config.save_pretrained(str(tmp_path))
    return tmp_path


def _write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


def _eos_tuple(eos: int | list[int] | None) -> tuple[int, ...]:
    return tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))


def _hf_head_dim(hf: Any) -> int:
    return getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_by_name_and_round_trips_through_transformers(name):
    config = load_config(name)
    assert config.name == name
    raw = hf_config_dict(name)
    hf_class, model_class = HF_CLASSES[raw["model_type"]]
    hf = hf_class(**raw)
    assert config.hidden_size == hf.hidden_size
    assert config.num_key_value_heads == hf.num_key_value_heads
    assert config.head_dim == _hf_head_dim(hf)
    with torch.device("meta"):
        model = model_class(hf)
    assert config.num_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab"),
    [
        ("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
        ("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
        ("codellama-34b", 48, 8192, 64, 8, 22016, 32000),
        ("qwen2-72b", 80, 8192, 64, 8, 29568, 152064),
    ],
)
def test_paper_models_have_the_shapes_of_paper_table_3_4(
    name, layers, hidden, heads, kv_heads, ffn, vocab
):
    c = load_config(name)
    got = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads)
    assert got == (layers, hidden, heads, kv_heads)
    assert (c.head_dim, c.intermediate_size, c.vocab_size) == (128, ffn, vocab)


def test_presets_carry_their_published_parameter_counts_and_features():
    assert load_config("llama3-8b").num_params == 8_030_261_248
    assert load_config("mistral-7b").num_params == 7_241_732_096
    assert load_config("qwen2.5-7b").num_params == 7_615_616_512
    assert load_config("llama3.1-8b").rope_scaling == RopeScaling(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    assert load_config("mistral-7b").sliding_window == 4096
    assert load_config("qwen2-72b").qkv_bias and not load_config("qwen2-72b").o_bias
    assert load_config("qwen2-72b").sliding_window is None  # use_sliding_window: false


def test_tiny_preset_is_a_small_llama_with_gqa():
    c = load_config("tiny")
    assert (c.architecture, c.hidden_size, c.num_hidden_layers) == ("llama", 64, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (4, 2, 256)
    assert c.num_kv_groups == 2 and c.q_size == 64 and c.kv_size == 32


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("llama", {}),
        ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **LLAMA3_ROPE}}),
        ("llama", {"head_dim": 16, "attention_bias": True, "mlp_bias": True}),
        ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
        ("mistral", {"sliding_window": 7}),
        ("mistral", {"sliding_window": None, "head_dim": 24}),
        ("qwen2", {}),
        ("qwen2", {"tie_word_embeddings": True, "eos_token_id": [5, 6], "bos_token_id": 4}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 0}),
        ("phi3", {"eos_token_id": 2, "pad_token_id": 2}),
        ("phi3", {"sliding_window": 5, "eos_token_id": 2, "pad_token_id": 2, "head_dim": 16}),
    ],
)
def test_hf_configs_written_by_transformers_parse_to_the_same_model(tmp_path, family, extra):
    hf_class, model_class = HF_CLASSES[family]
    hf = hf_class(**{**SMALL, **extra})
    config = load_config(str(_saved(tmp_path, hf)))
    assert config.name == tmp_path.name and config.architecture == family
    assert config.head_dim == _hf_head_dim(hf)
    assert config.num_key_value_heads == hf.num_key_value_heads
    assert config.tie_word_embeddings == hf.tie_word_embeddings
    assert config.rms_norm_eps == hf.rms_norm_eps
    assert config.max_position_embeddings == hf.max_position_embeddings
    assert config.bos_token_id == hf.bos_token_id
    assert config.eos_token_ids == _eos_tuple(hf.eos_token_id)
    model = model_class(hf)
    attention = model.model.layers[0].self_attn
    assert config.qkv_bias == (getattr(attention, "q_proj", attention.o_proj).bias is not None)
    assert config.o_bias == (attention.o_proj.bias is not None)
    mlp = model.model.layers[0].mlp
    assert config.mlp_bias == (getattr(mlp, "up_proj", mlp.down_proj).bias is not None)
    assert config.num_params == model.num_parameters()
    expected_window = getattr(attention, "sliding_window", None) or (
        hf.sliding_window if family in ("mistral", "phi3") else None
    )
    assert config.sliding_window == expected_window
    assert torch.equal(rope_inv_freq(config), model.model.rotary_emb.inv_freq)


@pytest.mark.parametrize("family", sorted(HF_CLASSES))
def test_fields_absent_from_config_json_take_transformers_defaults(family):
    # 32 heads: the families' default kv-head counts (32, 8, 32) must divide them.
    # vocab 32064: Phi-3's default eos and pad ids (32000) must be in the vocabulary
    raw = {**SMALL, "model_type": family, "hidden_size": 64, "num_attention_heads": 32}
    raw["vocab_size"] = 32064
    del raw["num_key_value_heads"]
    hf = HF_CLASSES[family][0].from_dict(raw)
    config = from_hf_dict(raw, "minimal")
    assert config.num_key_value_heads == hf.num_key_value_heads
    assert config.max_position_embeddings == hf.max_position_embeddings
    assert config.rms_norm_eps == hf.rms_norm_eps
    assert config.bos_token_id == hf.bos_token_id
    assert config.eos_token_ids == _eos_tuple(hf.eos_token_id)
    assert config.rope_theta == hf.rope_parameters["rope_theta"]
    assert config.sliding_window == getattr(hf, "sliding_window", None)


@pytest.mark.parametrize("key", ["rope_type", "type"])
def test_legacy_rope_theta_plus_rope_scaling_spelling_parses_like_rope_parameters(tmp_path, key):
    scaling = {key: "llama3", **{k: v for k, v in LLAMA3_ROPE.items() if k != "rope_type"}}
    legacy = {"model_type": "llama", **SMALL, "rope_theta": 500000.0, "rope_scaling": scaling}
    legacy_config = load_config(str(_write_config(tmp_path, legacy)))
    modern = transformers.LlamaConfig(
        **SMALL, rope_parameters={"rope_theta": 500000.0, **LLAMA3_ROPE}
    )
    modern_dir = _saved(tmp_path / "modern", modern)
    assert "rope_parameters" in json.loads((modern_dir / "config.json").read_text())
    modern_config = load_config(str(modern_dir))
    assert legacy_config.rope_theta == modern_config.rope_theta == 500000.0
    assert legacy_config.rope_scaling == modern_config.rope_scaling
    hf_legacy = transformers.LlamaConfig.from_pretrained(str(tmp_path))
    hf_inv_freq = LlamaRotaryEmbedding(config=hf_legacy).inv_freq
    assert torch.equal(rope_inv_freq(legacy_config), hf_inv_freq)


@pytest.mark.parametrize(
    ("theta", "head_dim", "scaling"),
    [
        (10000.0, 128, None),
        (500000.0, 128, LLAMA3_ROPE),
        (10000.0, 10, {**LLAMA3_ROPE, "factor": 4.0, "original_max_position_embeddings": 64}),
        (1e6, 64, {**LLAMA3_ROPE, "low_freq_factor": 2.0, "high_freq_factor": 8.0}),
    ],
)
def test_rope_inv_freq_is_bitwise_equal_to_transformers(theta, head_dim, scaling):
    rope = {"rope_theta": theta, **(scaling or {"rope_type": "default"})}
    hf = transformers.LlamaConfig(
        **{**SMALL, "num_attention_heads": 2, "num_key_value_heads": 1},
        head_dim=head_dim,
        max_position_embeddings=131072,
        rope_parameters=rope,
    )
    config = from_hf_dict(hf.to_dict(), "rope")
    ours = rope_inv_freq(config)
    assert ours.dtype == torch.float32 and ours.shape == (head_dim // 2,)
    assert torch.equal(ours, LlamaRotaryEmbedding(config=hf).inv_freq)


def test_llama3_scaling_changes_only_the_low_frequencies():
    plain = load_config("llama3-8b")
    scaled = load_config("llama3.1-8b")
    a, b = rope_inv_freq(plain), rope_inv_freq(scaled)
    wavelen = 2 * torch.pi / a
    assert torch.equal(a[wavelen < 8192 / 4], b[wavelen < 8192 / 4])
    assert torch.allclose(a[wavelen > 8192] / 8, b[wavelen > 8192])
    medium = (wavelen >= 2048) & (wavelen <= 8192)
    assert medium.any() and bool(((b[medium] < a[medium]) & (b[medium] > a[medium] / 8)).all())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported; supported: llama, mistral"),
        ({"model_type": None}, "model_type None is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "supported rope types: default"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported; supported: silu"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantized checkpoints"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5 is not supported"),
        ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads=3"),
        ({"head_dim": 9}, "head_dim=9 must be even"),
        ({"hidden_size": None}, "lacks required fields: hidden_size"),
        ({"vocab_size": "many"}, "vocab_size='many' must be an integer"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0 must be a positive integer"),
        ({"eos_token_id": 301}, "special token id 301 is outside the vocabulary"),
        ({"layer_types": ["full_attention", "chunked_attention"] * 2}, "chunked_attention"),
        (
            {"rope_parameters": {"full_attention": {"rope_theta": 1.0}, "sliding_attention": {}}},
            "different RoPE parameters per layer type",
        ),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "llama3 rope scaling lacks field 'low_freq_factor'",
        ),
    ],
)
def test_unsupported_configs_are_refused_with_a_message_naming_the_field(change, message):
    raw = {"model_type": "llama", **SMALL, **change}
    with pytest.raises(ModelConfigError, match=re.escape(message)):
        from_hf_dict(raw, "bad")


@pytest.mark.parametrize(
    ("rope", "message"),
    [
        ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, "'longrope'"),
        ({"type": "su", "short_factor": [1.0], "long_factor": [1.0]}, "rope type 'su'"),
        ({"rope_type": "default", "partial_rotary_factor": 0.75}, "partial_rotary_factor=0.75"),
        ({"rope_type": "llama3", **LLAMA3_ROPE}, "phi3 supports default RoPE only"),
    ],
)
def test_phi3_rope_variants_waferllm_does_not_implement_are_refused(rope, message):
    raw = {"model_type": "phi3", **SMALL, "rope_scaling": rope}
    with pytest.raises(ModelConfigError, match=re.escape(message)):
        from_hf_dict(raw, "phi3-long")


def test_qwen2_sliding_window_on_some_layers_only_is_refused(tmp_path):
    hf = transformers.Qwen2Config(
        **SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=2
    )
    with pytest.raises(ModelConfigError, match="sliding attention on only some layers"):
        load_config(str(_saved(tmp_path, hf)))


def test_qwen2_use_sliding_window_false_ignores_its_window():
    raw = {"model_type": "qwen2", **SMALL, "use_sliding_window": False, "sliding_window": 8}
    assert from_hf_dict(raw, "q").sliding_window is None


def test_unknown_names_missing_config_and_bad_json_are_clear_errors(tmp_path):
    with pytest.raises(ModelConfigError, match="not a built-in model .*llama3-8b.*tiny"):
        load_config("llama4-400b")
    with pytest.raises(ModelConfigError, match="has no config.json"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="cannot read"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelConfigError, match="must hold a JSON object"):
        load_config(str(tmp_path))
    assert issubclass(ModelConfigError, WaferError) and issubclass(ModelConfigError, ValueError)


def test_model_config_validates_its_own_fields():
    good = from_hf_dict({"model_type": "llama", **SMALL}, "ok")
    fields = {f: getattr(good, f) for f in ModelConfig.__dataclass_fields__}
    with pytest.raises(ModelConfigError, match="architecture 'gpt2' is not supported"):
        ModelConfig(**{**fields, "architecture": "gpt2"})
    with pytest.raises(ModelConfigError, match="sliding_window=0 must be >= 1"):
        ModelConfig(**{**fields, "sliding_window": 0})
    with pytest.raises(ModelConfigError, match="rope_type='yarn' is not supported"):
        RopeScaling(
            rope_type="yarn",
            factor=2.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        )


def test_kv_bytes_per_token_counts_k_and_v_of_every_layer_and_kv_head():
    c = load_config("llama3-8b")
    assert c.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2  # 128 KiB per token in f16


def test_generation_config_eos_tokens_replace_those_of_config_json(tmp_path):
    _saved(tmp_path, transformers.LlamaConfig(**SMALL, eos_token_id=2))
    assert load_config(str(tmp_path)).eos_token_ids == (2,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert load_config(str(tmp_path)).eos_token_ids == (2, 7)
    assert load_config(str(tmp_path / "config.json")).eos_token_ids == (2, 7)


@pytest.mark.parametrize(
    ("folder", "raw", "name"),
    [
        ("runs/smollm-135m", {}, "smollm-135m"),
        ("runs/smollm-135m/hf", {}, "smollm-135m"),
        (
            "runs/smollm-135m/hf",
            {"_name_or_path": "HuggingFaceTB/SmolLM-135M"},
            "HuggingFaceTB/SmolLM-135M",
        ),
        ("runs/smollm-135m/checkpoint", {"_name_or_path": "/tmp/x/hf"}, "smollm-135m"),
        ("hub/models--meta-llama--Llama-3-8B/snapshots/" + "a" * 40, {}, "meta-llama/Llama-3-8B"),
    ],
)
def test_a_checkpoint_is_named_by_its_config_or_folder_never_by_a_generic_folder(
    tmp_path, folder, raw, name
):
    assert checkpoint_name(tmp_path / folder, raw) == name
