"""Chat templates: a checkpoint's conversation format, rendered as transformers renders it.

The template is `chat_template.jinja` beside the checkpoint, else tokenizer_config.json's
`chat_template` (a string, or a list of named templates: "default" is used). It is rendered by
jinja2 in an immutable sandbox (a template is untrusted code from the checkpoint), with
trim_blocks and lstrip_blocks, the `raise_exception` and `strftime_now` globals, the `tojson`
filter without HTML escaping, `add_generation_prompt=True` and the special tokens of the
tokenizer config, as `PreTrainedTokenizerBase.apply_chat_template` does. Tokenising the text
is the tokenizer's job (with no extra BOS: the template writes it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from waferllm.engine.tokenizer import (
    TOKENIZER_CONFIG_FILE,
    TokenizerError,
    _token_text,
    _tokenizer_settings,
)

__all__ = ["CHAT_TEMPLATE_FILE", "ChatTemplate", "load_chat_template"]

CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")

Message = Mapping[str, Any]


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks in
    transformers; rendering just keeps the text)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_keep")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _keep(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatTemplate:
    """A checkpoint's chat template and the special tokens it may refer to."""

    source: str
    special_tokens: Mapping[str, str]

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The conversation as the model's prompt text, ready for the assistant's turn."""
        _check_messages(messages)
        try:
            template = _environment().from_string(self.source)
            return template.render(
                messages=[dict(m) for m in messages],
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.exceptions.TemplateError as err:  # syntax, sandbox, raise_exception
            raise TokenizerError(f"the chat template failed: {err}") from None


def _check_messages(messages: Sequence[Message]) -> None:
    if isinstance(messages, str | bytes) or not messages:
        raise TokenizerError("chat messages must be a non-empty list of {role, content} objects")
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TokenizerError(f"each chat message needs a string 'role', got {message!r}"[:200])


def load_chat_template(path: str | Path) -> ChatTemplate:
    """The chat template of a local checkpoint directory; a clear error when it has none."""
    path = Path(path)
    settings = _tokenizer_settings(path / TOKENIZER_CONFIG_FILE)
    source = _template_source(path, settings)
    special = {key: text for key in SPECIAL_TOKENS if (text := _token_text(settings.get(key)))}
    return ChatTemplate(source=source, special_tokens=special)


def _template_source(path: Path, settings: Mapping[str, Any]) -> str:
    file = path / CHAT_TEMPLATE_FILE
    if file.is_file():
        try:
            return file.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise TokenizerError(f"cannot read {file}: {err}") from None
    template = settings.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise TokenizerError(
            f"{path} has no chat template ({CHAT_TEMPLATE_FILE}, or chat_template in "
            f"{TOKENIZER_CONFIG_FILE}); drop --chat and give the prompt text as the model expects"
        )
    return template
