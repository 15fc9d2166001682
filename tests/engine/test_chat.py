"""Chat templates render exactly as transformers' `apply_chat_template` does (text and ids),
from chat_template.jinja or tokenizer_config.json, sandboxed; a checkpoint without one is a
clear error; `LLM.chat` and `generate --chat` generate from the rendered prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.checkpoints import make_checkpoint

from waferllm import LLM, SamplingParams
from waferllm.cli import main
from waferllm.engine.chat import CHAT_TEMPLATE_FILE, load_chat_template
from waferllm.engine.tokenizer import TOKENIZER_CONFIG_FILE, TokenizerError

# Exercises what transformers sets up: trim_blocks/lstrip_blocks (block tags on their own
# lines leave no blank lines), bos/eos tokens, raise_exception, loop controls, tojson.
TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role: ' + message['role']) }}
    {% endif %}
    {% if message['role'] == 'system' and not loop.first %}{% continue %}{% endif %}
<|{{ message['role'] }}|>
{{ message['content'] | trim }}{{ eos_token }}
    {% if message.meta is defined %}
{{ message.meta | tojson }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}"""

MESSAGES = [
    {"role": "system", "content": "  You are terse. "},
    {"role": "user", "content": "the wafer", "meta": {"é": [1, 2]}},
    {"role": "assistant", "content": "holds a model"},
    {"role": "user", "content": "which one?"},
]


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    path = make_checkpoint(tmp_path_factory.mktemp("chat"), "llama")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path


def _reference(path: Path, messages: list[dict], *, tokenize: bool) -> object:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    out = tokenizer.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=True)
    if tokenize and not isinstance(out, list):  # a BatchEncoding in newer transformers
        out = list(out["input_ids"])
    return out


def test_rendering_matches_transformers_text_and_ids(chat_checkpoint):
    text = load_chat_template(chat_checkpoint).render(MESSAGES)
    assert text == _reference(chat_checkpoint, MESSAGES, tokenize=False)
    assert text.startswith("<s>\n<|system|>\nYou are terse.</s>\n<|user|>")
    assert '{"é": [1, 2]}' in text and text.endswith("<|assistant|>\n")
    llm = LLM(chat_checkpoint, device="tiny", grid=3)
    assert llm.chat_prompt(MESSAGES) == _reference(chat_checkpoint, MESSAGES, tokenize=True)


def test_a_template_in_tokenizer_config_json_is_used_too(chat_checkpoint, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(chat_checkpoint, path)
    (path / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    config = json.loads((path / TOKENIZER_CONFIG_FILE).read_text())
    config["chat_template"] = TEMPLATE
    (path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config))
    assert load_chat_template(path).render(MESSAGES) == _reference(path, MESSAGES, tokenize=False)


def test_a_checkpoint_without_a_template_is_a_clear_error(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    with pytest.raises(TokenizerError, match="has no chat template"):
        load_chat_template(path)


def test_raise_exception_and_sandbox_escapes_are_one_line_errors(chat_checkpoint):
    template = load_chat_template(chat_checkpoint)
    with pytest.raises(TokenizerError, match="unknown role: tool"):
        template.render([{"role": "tool", "content": "x"}])
    hostile = type(template)(
        source="{{ ''.__class__.__mro__[1].__subclasses__() }}", special_tokens={}
    )
    with pytest.raises(TokenizerError, match="chat template failed"):
        hostile.render([{"role": "user", "content": "x"}])
    with pytest.raises(TokenizerError, match="non-empty list"):
        template.render([])


def test_llm_chat_generates_from_the_rendered_prompt(chat_checkpoint):
    llm = LLM(chat_checkpoint, device="tiny", grid=3)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    chat = llm.chat(MESSAGES, params)
    plain = llm.generate([llm.chat_prompt(MESSAGES)], params)
    assert len(chat) == 1 and chat[0].token_ids == plain[0].token_ids
    assert chat[0].prompt_token_ids == _reference(chat_checkpoint, MESSAGES, tokenize=True)
    assert len(llm.chat([MESSAGES, MESSAGES[:2]], params)) == 2  # a list of conversations


def test_generate_chat_sends_the_prompt_as_a_user_message(chat_checkpoint, capsys):
    argv = ["generate", "--model", str(chat_checkpoint), "--prompt", "the wafer", "--chat"]
    argv += ["--max-new-tokens", "2", "--grid", "3", "--ignore-eos", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    user = [{"role": "user", "content": "the wafer"}]
    assert report["prompt_len"] == len(_reference(chat_checkpoint, user, tokenize=True))
    assert main([*argv[:3], "--prompt-ids", "1,2", "--chat"]) == 2
    assert "--chat needs --prompt" in capsys.readouterr().err
