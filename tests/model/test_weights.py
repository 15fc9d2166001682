"""Weight loading: safetensors only, single or sharded, every tensor checked by name and shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from waferllm.errors import WaferError
from waferllm.model.config import ModelConfigError
from waferllm.model.config_sources import config_from_checkpoint, load_config
from waferllm.model.family import LLAMA
from waferllm.model.weights import (
    CheckpointError,
    expected_tensors,
    load_checkpoint,
    load_weights,
)

LAYER_NAMES = {
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "bo": "self_attn.o_proj.bias",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
    "b_gate": "mlp.gate_proj.bias",
    "b_up": "mlp.up_proj.bias",
    "b_down": "mlp.down_proj.bias",
    "attn_norm": "input_layernorm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_every_row_of_the_llama_family_table_has_its_hf_name_in_this_test():
    assert {t.name: t.hf_name for t in LLAMA.layer} == LAYER_NAMES


def test_loaded_weights_equal_the_transformers_model_state_dict(standard_checkpoint):
    checkpoint = load_checkpoint(standard_checkpoint)
    config, weights = checkpoint.config, checkpoint.weights
    model = transformers.AutoModelForCausalLM.from_pretrained(str(standard_checkpoint))
    state = model.state_dict()
    assert torch.equal(weights.embed, state["model.embed_tokens.weight"])
    assert torch.equal(weights.final_norm, state["model.norm.weight"])
    assert torch.equal(weights.lm_head, state["lm_head.weight"])
    assert len(weights.layers) == config.num_hidden_layers
    for i, layer in enumerate(weights.layers):
        for field, hf_name in LAYER_NAMES.items():
            ours, theirs = layer.get(field), state.get(f"model.layers.{i}.{hf_name}")
            if theirs is None:
                assert ours is None, f"{field} should be absent in layer {i}"
            else:
                assert ours is not None and ours.dtype == torch.float32, field
                assert torch.equal(ours, theirs), f"layer {i} {field}"


def test_biases_are_present_exactly_where_the_family_has_them(
    llama_checkpoint, llama_bias_checkpoint, qwen2_checkpoint
):
    plain = load_checkpoint(llama_checkpoint).weights.layers[0]
    assert all(plain.get(b) is None for b in ("bq", "bk", "bv", "bo", "b_up", "b_down"))
    biased = load_checkpoint(llama_bias_checkpoint).weights.layers[0]
    assert all(biased.get(b) is not None for b in ("bq", "bo", "b_gate", "b_up", "b_down"))
    qwen = load_checkpoint(qwen2_checkpoint).weights.layers[0]
    assert qwen.get("bq") is not None and qwen.get("bk") is not None and qwen.get("bv") is not None
    assert qwen.get("bo") is None and qwen.get("b_up") is None
    assert bool((qwen.get("bq") != 0).any()), "test checkpoints must have non-zero biases"


def test_tied_embeddings_share_one_tensor_for_the_lm_head(qwen2_tied_checkpoint):
    weights = load_checkpoint(qwen2_tied_checkpoint).weights
    assert weights.lm_head is weights.embed
    assert "lm_head.weight" not in expected_tensors(weights.config)


def test_sharded_and_single_file_checkpoints_load_identically(checkpoint_factory):
    single = checkpoint_factory("llama", seed=3, margin_prompt_ids=None)
    sharded = checkpoint_factory("llama", seed=3, margin_prompt_ids=None, sharded=True)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    a, b = load_checkpoint(single).weights, load_checkpoint(sharded).weights
    assert torch.equal(a.embed, b.embed) and torch.equal(a.lm_head, b.lm_head)
    for la, lb in zip(a.layers, b.layers, strict=True):
        for field in LAYER_NAMES:
            x, y = la.get(field), lb.get(field)
            assert (x is None and y is None) or torch.equal(x, y), field


def test_weights_are_cast_to_the_requested_dtype(llama_checkpoint):
    weights = load_checkpoint(llama_checkpoint, dtype=torch.float16).weights
    assert weights.embed.dtype == torch.float16
    assert weights.layers[-1]["w_down"].dtype == torch.float16
    with pytest.raises(CheckpointError, match="not a floating dtype"):
        load_weights(llama_checkpoint, load_config(str(llama_checkpoint)), dtype=torch.int32)


def _rewrite(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))


def test_missing_tensors_are_each_named(tmp_path, llama_checkpoint):
    path = _copy(llama_checkpoint, tmp_path / "ckpt")
    gone = ("model.layers.1.mlp.up_proj.weight", "model.norm.weight")
    _rewrite(path, lambda t: [t.pop(name) for name in gone])
    with pytest.raises(CheckpointError, match="missing tensors: ") as err:
        load_checkpoint(path)
    assert all(name in str(err.value) for name in gone)


def test_mis_shaped_tensors_are_named_with_found_and_expected_shapes(tmp_path, llama_checkpoint):
    path = _copy(llama_checkpoint, tmp_path / "ckpt")
    name = "model.layers.0.self_attn.k_proj.weight"
    _rewrite(path, lambda t: t.update({name: t[name][:-1].contiguous()}))
    with pytest.raises(CheckpointError, match=rf"{name} has shape \[19, 40\], expected \[20, 40\]"):
        load_checkpoint(path)


def test_unexpected_and_non_float_tensors_are_refused(tmp_path, llama_checkpoint):
    path = _copy(llama_checkpoint, tmp_path / "ckpt")
    name = "model.layers.0.self_attn.q_proj.bias"  # a bias the config does not declare
    _rewrite(path, lambda t: t.update({name: torch.zeros(40)}))
    with pytest.raises(CheckpointError, match=f"unexpected tensors .*{name}"):
        load_checkpoint(path)
    _rewrite(path, lambda t: t.pop(name))
    norm = "model.layers.1.input_layernorm.weight"
    _rewrite(path, lambda t: t.update({norm: torch.ones(40, dtype=torch.int8)}))
    with pytest.raises(CheckpointError, match=f"non-float tensors: {norm} \\(I8\\)"):
        load_checkpoint(path)


def test_a_config_that_disagrees_with_the_weights_is_caught_before_loading(
    tmp_path, llama_checkpoint
):
    path = _copy(llama_checkpoint, tmp_path / "ckpt")
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.2\."):
        load_checkpoint(path)


def test_pickle_only_checkpoints_are_refused_without_unpickling(
    tmp_path, llama_checkpoint, monkeypatch
):
    path = _copy(llama_checkpoint, tmp_path / "ckpt")
    state = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")

    def never(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match="only pickle weights .*pytorch_model.bin.*never"):
        load_checkpoint(path)
    (path / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors weight files"):
        load_checkpoint(path)


def test_a_directory_without_config_json_is_an_error(tmp_path, llama_checkpoint):
    path = _copy(llama_checkpoint, tmp_path / "ckpt")
    (path / "config.json").unlink()
    with pytest.raises(ModelConfigError, match="has no config.json"):
        load_checkpoint(path)
    with pytest.raises(WaferError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_shard_index_naming_a_missing_shard_is_an_error(tmp_path, checkpoint_factory):
    sharded = checkpoint_factory("llama", seed=3, margin_prompt_ids=None, sharded=True)
    path = _copy(sharded, tmp_path / "ckpt")
    victim = sorted(path.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"lists shards that are missing: {victim.name}"):
        load_checkpoint(path)


def test_a_checkpoint_directory_named_like_a_preset_loads_its_own_config(
    tmp_path, llama_checkpoint, monkeypatch
):
    _copy(llama_checkpoint, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert load_checkpoint("tiny").config.hidden_size == 40
    assert config_from_checkpoint("tiny").hidden_size == 40
    assert load_config("tiny").hidden_size == 64  # the name alone means the preset
    assert load_config("./tiny").hidden_size == 40


def test_phi3_fused_tensors_split_into_the_llama_rows_in_transformers_order(checkpoint_factory):
    path = checkpoint_factory("phi3", margin_prompt_ids=None)
    weights = load_checkpoint(path).weights
    state = transformers.AutoModelForCausalLM.from_pretrained(str(path)).state_dict()
    config = weights.config
    for i, layer in enumerate(weights.layers):
        q, kv = config.q_size, config.kv_size
        qkv = state[f"model.layers.{i}.self_attn.qkv_proj.weight"]
        assert torch.equal(layer["wq"], qkv[:q]) and torch.equal(layer["wk"], qkv[q : q + kv])
        assert torch.equal(layer["wv"], qkv[q + kv :])
        gate, up = state[f"model.layers.{i}.mlp.gate_up_proj.weight"].chunk(2, dim=0)
        assert torch.equal(layer["w_gate"], gate) and torch.equal(layer["w_up"], up)
        assert torch.equal(layer["wo"], state[f"model.layers.{i}.self_attn.o_proj.weight"])
    assert "model.layers.0.self_attn.qkv_proj.weight" in expected_tensors(config)
    assert "model.layers.0.self_attn.q_proj.weight" not in expected_tensors(config)
