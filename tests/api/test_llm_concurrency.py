"""One LLM object, many callers (issue 11 #6): requests from several threads are serialised and
give the tokens of sequential calls; an interleaved second stream on one thread is refused
clearly, never answered with wrong tokens; bytes are not token ids; a request longer than
max_position_embeddings is refused before it runs (SPEC.md §9)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from waferllm import LLM, SamplingParams
from waferllm.errors import WaferError

PROMPTS = ([0, 37, 102, 251, 17], [0, 5, 9, 288, 64, 199, 5, 11])
PARAMS = SamplingParams(max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_checkpoint: Path) -> LLM:
    return LLM(llama_checkpoint, device="tiny", grid="2x3")


@pytest.fixture(scope="module")
def sequential(llm: LLM) -> list[list[int]]:
    return [out.token_ids for out in llm.generate(list(PROMPTS), PARAMS)]


def test_generate_from_two_threads_gives_the_sequential_tokens(llm, sequential):
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = llm.generate([PROMPTS[i]], PARAMS)[0].token_ids
                assert results[i] == sequential[i]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [results[0], results[1]] == sequential
    assert llm.generate([PROMPTS[0]], PARAMS)[0].token_ids == sequential[0]  # still usable


def test_a_stream_in_another_thread_waits_and_gives_the_sequential_tokens(llm, sequential):
    streamed: list[int] = []
    first = llm.stream(PROMPTS[0], PARAMS)
    streamed.append(next(first).token_id)  # holds the LLM
    other: list[list[int]] = []
    thread = threading.Thread(
        target=lambda: other.append(llm.generate([PROMPTS[1]], PARAMS)[0].token_ids)
    )
    thread.start()
    streamed.extend(chunk.token_id for chunk in first)
    thread.join(timeout=120)
    assert streamed == sequential[0] and other == [sequential[1]]


def test_an_interleaved_second_stream_on_one_thread_is_refused_not_mixed(llm, sequential):
    a = llm.stream(PROMPTS[0], PARAMS)
    b = llm.stream(PROMPTS[1], PARAMS)
    tokens_a = [next(a).token_id]
    with pytest.raises(WaferError, match="unfinished stream"):
        next(b)
    with pytest.raises(WaferError, match="unfinished stream"):
        llm.generate([PROMPTS[1]], PARAMS)
    tokens_a.extend(chunk.token_id for chunk in a)
    assert tokens_a == sequential[0]
    c = llm.stream(PROMPTS[1], PARAMS)
    next(c)
    c.close()  # an abandoned stream frees the LLM
    assert [chunk.token_id for chunk in llm.stream(PROMPTS[1], PARAMS)] == sequential[1]


def test_bytes_are_not_token_ids(llm):
    with pytest.raises(TypeError, match="not bytes"):
        llm.generate(b"hello")
    with pytest.raises(TypeError, match="not bytes"):
        llm.stream(b"hello")


def test_a_request_beyond_max_position_embeddings_is_refused(llm):
    positions = llm.config.max_position_embeddings
    with pytest.raises(WaferError, match=f"max_position_embeddings={positions}"):
        llm.generate([[2] * (positions - 2)], SamplingParams(max_tokens=4))
    with pytest.raises(WaferError, match=f"max_position_embeddings={positions}"):
        llm.generate([[2] * (positions + 1)], SamplingParams(max_tokens=1))
