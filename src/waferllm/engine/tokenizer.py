"""Tokenizer glue: text <-> token ids through a checkpoint's `tokenizer.json`, and streaming.

A thin layer over the `tokenizers` package; the engine itself works on ids only and never
imports this module. Special tokens follow the checkpoint: `add_bos_token` / `add_eos_token`
in tokenizer_config.json when present (as transformers' Llama tokenizers do), otherwise the
post-processor inside tokenizer.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers

from waferllm.errors import WaferError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_INCOMPLETE = "\ufffd"  # what decoding yields for a UTF-8 character cut between tokens


class TokenizerError(WaferError):
    """A checkpoint without a usable tokenizer, or text/ids it cannot handle."""


class Tokenizer:
    """Encode and decode with a checkpoint's tokenizer; `stream()` for incremental text."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token_id = self._token_id(bos_token)
        self.eos_token_id = self._token_id(eos_token)
        self._add_bos = add_bos_token
        self._add_eos = add_eos_token
        if add_bos_token and self.bos_token_id is None:
            raise TokenizerError("tokenizer config sets add_bos_token but names no bos_token")
        if add_eos_token and self.eos_token_id is None:
            raise TokenizerError("tokenizer config sets add_eos_token but names no eos_token")

    def _token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"special token {token!r} is not in the tokenizer's vocabulary")
        return int(token_id)

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, with the checkpoint's BOS/EOS when `add_special_tokens`."""
        if self._add_bos is None and self._add_eos is None:
            return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = list(self.backend.encode(text, add_special_tokens=False).ids)
        if add_special_tokens and self._add_bos:
            assert self.bos_token_id is not None
            ids.insert(0, self.bos_token_id)
        if add_special_tokens and self._add_eos:
            assert self.eos_token_id is not None
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def stream(self, *, skip_special_tokens: bool = True) -> StreamDecoder:
        """A fresh incremental detokeniser for one generated sequence."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Turns ids arriving one at a time into text pieces whose concatenation is the full text.

    Decodes a short window (from the last emitted boundary) twice, with and without the new
    ids, and emits the difference: decoders that drop a leading space or merge bytes see
    enough context, and a piece ending in an incomplete UTF-8 character waits for the next id.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # everything before this has been emitted

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one id; return the new text it completes (possibly empty)."""
        self._ids.append(int(token_id))
        prefix = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset)
        if len(text) <= len(prefix) or text.endswith(_INCOMPLETE):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(prefix) :]

    def extend(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(token_id) for token_id in token_ids)

    def flush(self) -> str:
        """Whatever is still held back at the end of the sequence (e.g. a cut character)."""
        prefix = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset)
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a local checkpoint directory (`--prompt` needs one)."""
    path = Path(path)
    tokenizer_file = path / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise TokenizerError(
            f"{path} has no {TOKENIZER_FILE}, so text prompts cannot be tokenised; "
            "pass token ids with --prompt-ids instead"
        )
    try:
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as err:  # tokenizers raises a bare Exception for malformed files
        raise TokenizerError(f"cannot read {tokenizer_file}: {err}") from None
    settings = _tokenizer_settings(path / TOKENIZER_CONFIG_FILE)
    return Tokenizer(
        backend,
        add_bos_token=_flag(settings, "add_bos_token"),
        add_eos_token=_flag(settings, "add_eos_token"),
        bos_token=_token_text(settings.get("bos_token")),
        eos_token=_token_text(settings.get("eos_token")),
    )


def _tokenizer_settings(config_file: Path) -> dict[str, object]:
    if not config_file.is_file():
        return {}
    try:
        settings = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"cannot read {config_file}: {err}") from None
    if not isinstance(settings, dict):
        raise TokenizerError(f"{config_file} must hold a JSON object")
    return settings


def _flag(settings: dict[str, object], key: str) -> bool | None:
    value = settings.get(key)
    if value is not None and not isinstance(value, bool):
        raise TokenizerError(f"tokenizer config {key}={value!r} must be true, false or absent")
    return value


def _token_text(token: object) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None
