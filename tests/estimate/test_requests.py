"""Serving traces: JSONL parsing with precise errors, and seeded Poisson arrivals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferllm.errors import WaferError
from waferllm.estimate.requests import Request, load_requests, poisson_requests


def write(tmp_path, text):
    path = tmp_path / "trace.jsonl"
    path.write_text(text)
    return path


def test_a_trace_is_read_and_sorted_by_arrival(tmp_path):
    path = write(
        tmp_path,
        '{"arrival_s": 0.5, "prompt_len": 8, "output_len": 2}\n'
        '{"arrival_s": 0, "prompt_len": 16.0, "output_len": 1}\n',
    )
    assert load_requests(path) == [
        Request(arrival_s=0.0, prompt_len=16, output_len=1),
        Request(arrival_s=0.5, prompt_len=8, output_len=2),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", r"trace.jsonl:2: empty line"),
        ("{not json", r"trace.jsonl:2: malformed JSON"),
        ("[1, 2]", r"trace.jsonl:2: expected a JSON object, got list"),
        ('{"arrival_s": 1, "prompt_len": 4}', r"trace.jsonl:2: missing field\(s\) output_len"),
        ('{"arrival_s": -1, "prompt_len": 4, "output_len": 2}', r":2: arrival_s=-1 must be"),
        ('{"arrival_s": "soon", "prompt_len": 4, "output_len": 2}', r":2: arrival_s='soon' is"),
        ('{"arrival_s": 1' + "0" * 400 + ', "prompt_len": 4, "output_len": 2}', r":2: arrival_s=1"),
        ('{"arrival_s": NaN, "prompt_len": 4, "output_len": 2}', r":2: arrival_s=nan must be"),
        ('{"arrival_s": 1, "prompt_len": 4.5, "output_len": 2}', r":2: prompt_len=4.5 is not an"),
        ('{"arrival_s": 1, "prompt_len": 4, "output_len": 0}', r":2: output_len=0 must be a pos"),
        ('{"arrival_s": 1, "prompt_len": true, "output_len": 2}', r":2: prompt_len=True is not"),
        ('{"arrival_s": 1, "prompt_len": 4, "output_len": 2, "x": 1}', r":2: unknown field"),
    ],
)
def test_a_bad_line_is_refused_naming_its_number_field_and_value(tmp_path, line, message):
    path = write(tmp_path, '{"arrival_s": 0, "prompt_len": 4, "output_len": 2}\n' + line + "\n")
    with pytest.raises(WaferError, match=message):
        load_requests(path)


def test_an_empty_or_missing_file_is_refused(tmp_path):
    with pytest.raises(WaferError, match="is empty"):
        load_requests(write(tmp_path, ""))
    with pytest.raises(WaferError, match="cannot read requests file"):
        load_requests(tmp_path / "absent.jsonl")


def test_poisson_arrivals_are_seeded_and_have_the_asked_rate():
    first = poisson_requests(rate_per_s=50, num_requests=4000, prompt_len=8, output_len=4, seed=1)
    again = poisson_requests(rate_per_s=50, num_requests=4000, prompt_len=8, output_len=4, seed=1)
    other = poisson_requests(rate_per_s=50, num_requests=4000, prompt_len=8, output_len=4, seed=2)
    assert first == again and first != other
    times = np.array([r.arrival_s for r in first])
    assert np.all(np.diff(times) > 0)
    assert np.mean(np.diff(times)) == pytest.approx(1 / 50, rel=0.05)
    assert {(r.prompt_len, r.output_len) for r in first} == {(8, 4)}


@pytest.mark.parametrize("rate", [0, -1.5, float("nan")])
def test_a_rate_that_is_not_positive_is_refused(rate):
    with pytest.raises(WaferError, match="must be a positive number of requests per second"):
        poisson_requests(rate_per_s=rate, num_requests=3, prompt_len=8, output_len=4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
FIELD_VALUES = st.fixed_dictionaries(
    {"arrival_s": JSON, "prompt_len": JSON, "output_len": JSON},
    optional={"extra": JSON},
)


@settings(max_examples=150, deadline=None)
@given(line=st.one_of(st.text(max_size=30), JSON.map(json.dumps), FIELD_VALUES.map(json.dumps)))
def test_any_line_is_a_request_or_a_user_error_never_a_crash(tmp_path_factory, line):
    path = tmp_path_factory.mktemp("fuzz") / "trace.jsonl"
    path.write_text(line.replace("\n", " ") + "\n")
    try:
        (request,) = load_requests(path)
    except WaferError as exc:
        assert "trace.jsonl" in str(exc)
    else:
        assert request.prompt_len >= 1 and request.arrival_s >= 0
