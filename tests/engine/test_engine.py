"""The generation loop and its metrics, on a small fake model (the real one: tests/api)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from waferllm.device import tiny
from waferllm.engine.engine import Engine, FinishReason, RequestError, Trace
from waferllm.engine.metrics import Occupancy, breakdown, request_metrics
from waferllm.engine.sampling import SamplingParams
from waferllm.estimate.energy import event_energy
from waferllm.estimate.flops import model_flops
from waferllm.mesh.cost import Charge, ChargeKind, Ledger
from waferllm.model.config import from_hf_dict

VOCAB = 11
EOS = 7


class FakeOutput:
    """Logits peaked at (3 * last + 1) mod VOCAB; a second, lower peak makes sampling vary."""

    def __init__(self, model: FakeModel, last: int) -> None:
        self.model = model
        self.logits_V = torch.zeros(VOCAB)
        self.logits_V[(3 * last + 1) % VOCAB] = 2.0
        self.logits_V[(last + 5) % VOCAB] = 1.5

    @property
    def token(self) -> int:
        return int(torch.argmax(self.logits_V))

    def fetch_logits(self, ledger: Ledger) -> torch.Tensor:
        self.model.fetches += 1
        ledger.charge("gather.logits", Charge(kind=ChargeKind.HOST_IO, cycles=5000, host_bytes=22))
        return self.logits_V.clone()


class FakeModel:
    """Prefill costs 1000 cycles per token, a decode step 100 + 10 per cached token."""

    def __init__(
        self, capacity: int = 40, max_prompt_tokens: int = 60, max_positions: int = 4096
    ) -> None:
        self.device = tiny()
        self.max_position_embeddings = max_positions
        self.vocab_size = VOCAB
        self.eos_token_ids = (EOS,)
        self.capacity = capacity
        self.max_prompt_tokens = max_prompt_tokens
        self.calls: list[str] = []
        self.fetches = 0
        self.context = 0

    def kv_capacity_tokens(self, *, prompt_len: int) -> int:
        return self.capacity

    def can_prefill(self, prompt_len: int) -> bool:  # no chunks
        return prompt_len <= self.max_prompt_tokens

    def max_new_tokens(self, prompt_len: int) -> int:
        # the first token needs no slot and the last is never cached
        return max(self.capacity - prompt_len + 1, 0) if prompt_len <= self.capacity else 0

    def prefill(self, token_ids: Sequence[int], ledger: Ledger) -> FakeOutput:
        self.calls.append("prefill")
        self.context = len(token_ids)
        ledger.charge("prompt_in", Charge(kind=ChargeKind.HOST_IO, cycles=7, host_bytes=8))
        ledger.charge("layers", Charge(kind=ChargeKind.COMPUTE, cycles=1000 * len(token_ids)))
        return FakeOutput(self, token_ids[-1])

    def transition(self, ledger: Ledger) -> None:
        self.calls.append("transition")
        ledger.charge("relayout", Charge(kind=ChargeKind.COMM, cycles=300))

    def decode_step(self, token_id: int, ledger: Ledger) -> FakeOutput:
        self.calls.append("decode")
        assert self.context < self.capacity
        self.context += 1
        ledger.charge("layers", Charge(kind=ChargeKind.COMPUTE, cycles=100 + 10 * self.context))
        return FakeOutput(self, token_id)


def greedy_chain(start: int, n: int) -> list[int]:
    out, last = [], start
    for _ in range(n):
        last = (3 * last + 1) % VOCAB
        out.append(last)
    return out


def test_greedy_generation_yields_the_models_tokens_one_step_at_a_time():
    model = FakeModel()
    steps = list(Engine(model).generate([1, 2], SamplingParams(max_tokens=3, ignore_eos=True)))
    assert [s.token_id for s in steps] == greedy_chain(2, 3)
    assert [s.index for s in steps] == [0, 1, 2]
    assert [s.is_first for s in steps] == [True, False, False]
    assert [s.finish_reason for s in steps] == [None, None, FinishReason.LENGTH]
    assert model.calls == ["prefill", "transition", "decode", "decode"]
    assert model.fetches == 0  # greedy never moves logits to the host
    clock = model.device.clock_hz
    assert [s.modelled_s for s in steps] == [2000 / clock, 130 / clock, 140 / clock]


def test_nothing_runs_until_the_generation_is_iterated_and_it_runs_lazily():
    model = FakeModel()
    generation = Engine(model).generate([1], SamplingParams(max_tokens=4, ignore_eos=True))
    assert model.calls == []
    next(generation)
    assert model.calls == ["prefill"]
    trace = generation.run()
    assert model.calls == ["prefill", "transition", "decode", "decode", "decode"]
    assert len(trace.decode) == trace.output_len - 1 == 3


def test_generation_stops_at_eos_and_keeps_the_eos_token():
    # 2 -> 7 (EOS) in the greedy chain
    assert greedy_chain(2, 1) == [EOS]
    model = FakeModel()
    trace = Engine(model).generate([2], SamplingParams(max_tokens=5)).run()
    assert trace.token_ids == [EOS]
    assert trace.finish_reason is FinishReason.STOP
    assert model.calls == ["prefill"]  # no transition, no decode after the last token


def test_ignore_eos_generates_past_eos_up_to_max_tokens():
    trace = Engine(FakeModel()).generate([2], SamplingParams(max_tokens=5, ignore_eos=True)).run()
    assert trace.token_ids == greedy_chain(2, 5)
    assert trace.token_ids[0] == EOS
    assert trace.finish_reason is FinishReason.LENGTH


def test_one_token_requests_stop_after_prefill():
    model = FakeModel()
    trace = Engine(model).generate([3], SamplingParams(max_tokens=1)).run()
    assert trace.output_len == 1 and trace.decode == []
    assert model.calls == ["prefill"]


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], SamplingParams(), "empty"),
        (
            [1, VOCAB],
            SamplingParams(),
            rf"token id {VOCAB} is not in the vocabulary \[0, {VOCAB}\)",
        ),
        ([-1], SamplingParams(), "token id -1"),
        ([1.0], SamplingParams(), "token id 1.0"),
        (
            list(range(10)) * 5,
            SamplingParams(),
            "50 tokens, more than the KV cache holds \\(40 tokens",
        ),
        ([1] * 30, SamplingParams(max_tokens=12), "max_tokens=12 but only 11 new tokens fit"),
    ],
)
def test_bad_requests_are_refused_before_anything_runs(prompt, params, message):
    model = FakeModel()
    with pytest.raises(RequestError, match=message):
        Engine(model).generate(prompt, params)
    assert model.calls == []


def test_a_prompt_longer_than_the_prefill_plan_holds_is_refused_first():
    model = FakeModel(capacity=40, max_prompt_tokens=20)
    with pytest.raises(RequestError, match="21 tokens but the prefill plan holds at most 20"):
        Engine(model).generate([1] * 21, SamplingParams())
    assert Engine(model).generate([1] * 20, SamplingParams(max_tokens=1)).run().output_len == 1


def test_a_request_filling_the_cache_exactly_is_served():
    model = FakeModel(capacity=8)
    trace = Engine(model).generate([1] * 5, SamplingParams(max_tokens=4, ignore_eos=True)).run()
    assert trace.output_len == 4 and model.context == 8


def sampled(seed: int, model: FakeModel | None = None) -> Trace:
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=seed, ignore_eos=True)
    return Engine(model or FakeModel()).generate([4], params).run()


def test_seeded_sampling_is_reproducible_and_depends_on_the_seed():
    assert sampled(3).token_ids == sampled(3).token_ids
    assert {tuple(sampled(s).token_ids) for s in range(4)} != {tuple(sampled(3).token_ids)}
    greedy = Engine(FakeModel()).generate([4], SamplingParams(max_tokens=12, ignore_eos=True))
    assert any(t.token_ids != greedy.run().token_ids for t in map(sampled, range(4)))


def test_sampling_logits_are_host_io_outside_every_phase():
    model = FakeModel()
    trace = sampled(0, model)
    assert model.fetches == trace.output_len == 12
    assert trace.host_io.totals().host_io_cycles == 12 * 5000
    for ledger in [trace.prefill, trace.transition, *trace.decode]:
        assert all(not r.op.startswith("gather.logits") for r in ledger.records)
    greedy = Engine(FakeModel()).generate([4], SamplingParams(max_tokens=12, ignore_eos=True))
    greedy_trace = greedy.run()
    metrics = request_metrics(trace, device=model.device, occupancy=FOOT, config=SHAPE)
    greedy_metrics = request_metrics(
        greedy_trace, device=model.device, occupancy=FOOT, config=SHAPE
    )
    assert metrics == greedy_metrics  # same cost, sampling's host I/O excluded


SHAPE = from_hf_dict(
    {
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "vocab_size": VOCAB,
    },
    "shape",
)
FOOT = Occupancy(num_cores=4, peak_sram_bytes_per_core=1234, routes_per_core=9)


def test_request_metrics_follow_the_spec_definitions():
    model = FakeModel()
    trace = Engine(model).generate([1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True)).run()
    m = request_metrics(trace, device=model.device, occupancy=FOOT, config=SHAPE)
    clock = model.device.clock_hz
    ttft, transition = 3000 / clock, 300 / clock
    decode = (140 + 150 + 160) / clock  # context 4, 5, 6
    assert m.ttft_s == pytest.approx(ttft)
    assert m.transition_s == pytest.approx(transition)
    assert m.tpot_s == pytest.approx(decode / 3)
    assert m.prefill_tpr == pytest.approx(3 / ttft)
    assert m.decode_tpr == pytest.approx(3 / decode)
    assert m.e2e_tpr == pytest.approx(4 / (ttft + transition + decode))
    # energy per event: static power over the modelled time plus the ledgers' events
    energy = event_energy(
        model.device,
        [led.totals() for led in (trace.prefill, trace.transition, *trace.decode)],
        ttft + transition + decode,
    )
    assert m.energy_j == pytest.approx(energy.total_j)
    assert energy.static_j == pytest.approx(
        model.device.static_power_w * (ttft + transition + decode)
    )
    assert (m.peak_sram_bytes_per_core, m.routes_per_core) == (1234, 9)
    flops = model_flops(SHAPE, prompt_len=3, output_len=4)
    peak = 4 * model.device.flops_per_cycle_per_core * clock
    assert m.utilization == pytest.approx(flops / (peak * (ttft + transition + decode)))


def test_a_single_token_has_no_tpot_and_no_transition():
    model = FakeModel()
    trace = Engine(model).generate([2], SamplingParams(max_tokens=1)).run()
    m = request_metrics(trace, device=model.device, occupancy=FOOT, config=SHAPE)
    assert m.tpot_s is None and m.decode_tpr is None and m.transition_s == 0


def test_breakdown_splits_phases_and_reports_host_io_apart():
    model = FakeModel()
    trace = sampled(1, model)
    out = breakdown(trace, device=model.device)
    clock = model.device.clock_hz
    assert out["prefill"]["modelled_s"] == pytest.approx(1000 / clock)
    assert out["prefill"]["host_io_bytes"] == 8
    assert out["prefill"]["ops"] == {"layers": pytest.approx(1000 / clock), "prompt_in": 0.0}
    assert out["transition"]["comm_s"] == pytest.approx(300 / clock)
    assert out["decode"]["steps"] == 11
    assert out["sampling_host_io"] == {"host_io_s": 12 * 5000 / clock, "host_io_bytes": 12 * 22}
    assert out["finish_reason"] == "length"
    assert out["sampling"]["seed"] == 1


def test_a_request_longer_than_max_position_embeddings_is_refused_before_it_runs():
    model = FakeModel(capacity=40, max_prompt_tokens=30, max_positions=12)
    engine = Engine(model)
    with pytest.raises(RequestError, match="14 positions, more than .*max_position_embeddings=12"):
        engine.generate([2] * 10, SamplingParams(max_tokens=5))
    assert model.calls == []
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    assert len(engine.generate([2] * 10, params).run().token_ids) == 3
