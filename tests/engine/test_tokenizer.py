"""Tokenizer glue: round trips, special tokens as the checkpoint says, streaming detokenisation."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waferllm.engine.tokenizer import TokenizerError, load_tokenizer

TEXTS = [
    "The wafer is a mesh of cores.",
    "  leading spaces, trailing too  ",
    "héllo wörld, naïve café",
    "emoji 🙂🚀 and ∑ symbols; 東京",
    "",
    "line one\nline two\ttabbed",
]


@pytest.fixture(scope="module")
def tokenizer(llama_checkpoint):
    return load_tokenizer(llama_checkpoint)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_of_encode_round_trips_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=40))
def test_any_unicode_text_round_trips(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_matches_transformers_auto_tokenizer(standard_checkpoint, text):
    ours = load_tokenizer(standard_checkpoint)
    theirs = transformers.AutoTokenizer.from_pretrained(str(standard_checkpoint))
    assert ours.encode(text) == theirs(text)["input_ids"]
    ids = ours.encode(text)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


def test_bos_is_added_for_llama_and_not_for_qwen2(llama_checkpoint, qwen2_checkpoint):
    llama, qwen = load_tokenizer(llama_checkpoint), load_tokenizer(qwen2_checkpoint)
    assert llama.bos_token_id == 0 and llama.eos_token_id == 1
    assert llama.encode("wafer")[0] == 0
    assert llama.encode("wafer", add_special_tokens=False)[0] != 0
    assert qwen.encode("wafer") == qwen.encode("wafer", add_special_tokens=False)
    assert llama.vocab_size == 301


def test_add_bos_and_eos_token_settings_in_tokenizer_config_are_honoured(
    tmp_path, qwen2_checkpoint
):
    path = shutil.copytree(qwen2_checkpoint, tmp_path / "ckpt")
    settings_file = path / "tokenizer_config.json"
    settings_ = json.loads(settings_file.read_text())
    settings_file.write_text(
        json.dumps({**settings_, "add_bos_token": True, "add_eos_token": True})
    )
    ids = load_tokenizer(path).encode("mesh")
    plain = load_tokenizer(qwen2_checkpoint).encode("mesh")
    assert ids == [0, *plain, 1]
    settings_file.write_text(json.dumps({**settings_, "add_bos_token": "yes"}))
    with pytest.raises(TokenizerError, match="add_bos_token='yes' must be true, false or absent"):
        load_tokenizer(path)


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_concatenate_to_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    stream = tokenizer.stream()
    pieces = [stream.push(token_id) for token_id in ids]
    assert "".join(pieces) + stream.flush() == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_a_character_split_across_tokens_is_held_back_until_complete(tokenizer):
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1, "the test tokenizer must split this emoji into byte tokens"
    stream = tokenizer.stream()
    pieces = [stream.push(token_id) for token_id in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🙂"


def test_flush_returns_a_trailing_incomplete_character(tokenizer):
    ids = tokenizer.encode("a🙂", add_special_tokens=False)
    stream = tokenizer.stream()
    assert stream.extend(ids[:-1]) == "a"
    assert stream.flush() == tokenizer.decode(ids[:-1])[1:]


def test_missing_tokenizer_json_says_to_use_prompt_ids(tmp_path, llama_checkpoint):
    path = shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    (path / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="no tokenizer.json.*--prompt-ids"):
        load_tokenizer(path)
    (path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(path)
    assert issubclass(TokenizerError, ValueError)
