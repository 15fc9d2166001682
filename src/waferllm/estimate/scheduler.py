"""Continuous batching over a request trace, timed by a `StepCost` (SPEC.md §10.13).

vLLM-like iteration-level scheduling: FCFS admission of arrived requests while the batch has
room (`max_batch` admitted at once) and the KV cache holds them, prefill priority (admitted
prompts are prefilled before the next decode step), and a named preemption policy. Modes:
`time-multiplexed` (one engine; the phases take turns and every switch pays its re-layout)
and `disaggregated` (a prefill engine and a decode engine run concurrently; a prefilled
request joins the decode batch after its KV transfer). Metrics live in `serving_metrics.py`.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import math
from collections import deque
from collections.abc import Sequence

from waferllm.errors import WaferError
from waferllm.estimate.requests import Request
from waferllm.estimate.step_cost import StepCost

__all__ = ["Iteration", "Mode", "Preemption", "RequestRecord", "Schedule", "simulate"]


class Mode(enum.StrEnum):
    TIME_MULTIPLEXED = "time-multiplexed"
    DISAGGREGATED = "disaggregated"


class Preemption(enum.StrEnum):
    """`recompute`: a request's KV grows one token per step; when the next step does not fit,
    the newest running request is preempted (its KV freed, re-prefilled over prompt and tokens
    generated so far when readmitted; vLLM's recompute). `reserve`: admission reserves the
    request's whole final context (prompt + output - 1), so nothing is ever preempted."""

    RECOMPUTE = "recompute"
    RESERVE = "reserve"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """When one request got its first and last token (modelled seconds)."""

    arrival_s: float
    prompt_len: int
    output_len: int
    first_token_s: float
    finish_s: float
    finish_iteration: int  # index into Schedule.timeline of the iteration that ended it
    preemptions: int

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first; None for a one-token request."""
        if self.output_len == 1:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_len - 1)

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s


@dataclasses.dataclass(frozen=True, kw_only=True)
class Iteration:
    """One scheduled piece of work: `phase` is prefill, decode, to_decode or to_prefill (the
    re-layouts); `batch_size` sequences; `kv_tokens` allocated when it ends. A decode
    iteration is a run of `num_steps` steps of the same batch with nothing else between them
    (each step produces one token per sequence)."""

    phase: str
    start_s: float
    end_s: float
    batch_size: int
    kv_tokens: int
    num_steps: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    """The outcome of a simulation: one record per request (in trace order) and the timeline."""

    mode: Mode
    records: tuple[RequestRecord, ...]
    timeline: tuple[Iteration, ...]
    kv_capacity_tokens: int
    kv_peak_tokens: int
    preemptions: int

    def busy_s(self, phase: str) -> float:
        return sum(it.end_s - it.start_s for it in self.timeline if it.phase == phase)


class _Seq:
    """A request's mutable state while it is simulated."""

    __slots__ = ("index", "req", "generated", "kv", "allocated", "first_token_s", "preemptions")

    def __init__(self, index: int, req: Request) -> None:
        self.index, self.req = index, req
        self.generated = 0  # tokens emitted so far
        self.kv = 0  # tokens cached (the decode step's context)
        self.allocated = 0  # KV tokens allocated to it (== kv, or the reservation)
        self.first_token_s: float | None = None  # set by its first prefill
        self.preemptions = 0

    @property
    def prefill_len(self) -> int:
        return self.req.prompt_len + self.generated  # after a preemption: recompute it all


class _Sim:
    """The shared state and the steps both modes use."""

    def __init__(
        self, requests: Sequence[Request], cost: StepCost, *, max_batch: int, policy: Preemption
    ) -> None:
        self.cost, self.max_batch, self.policy = cost, max_batch, policy
        self.capacity, self.window = cost.kv_capacity_tokens, cost.kv_window_tokens
        order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)
        self.pending = deque(_Seq(i, requests[i]) for i in order)
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []  # decoding, in admission order (newest last)
        self.in_flight = 0  # admitted and not finished
        self.kv_used = self.kv_peak = self.preemptions = 0
        self.timeline: list[Iteration] = []
        self.records: dict[int, RequestRecord] = {}

    def held(self, tokens: int) -> int:
        """KV tokens one sequence of `tokens` cached positions holds (at most the window)."""
        return tokens if self.window is None else min(tokens, self.window)

    def growth(self, running: Sequence[_Seq], steps: int) -> int:
        """KV tokens `steps` more decode steps of `running` allocate (recompute policy)."""
        if self.window is None:
            return len(running) * steps
        return sum(self.held(seq.kv + steps) - self.held(seq.kv) for seq in running)

    def arrive(self, now_s: float) -> None:
        while self.pending and self.pending[0].req.arrival_s <= now_s:
            self.waiting.append(self.pending.popleft())

    def admit(self, headroom: int = 0) -> list[_Seq]:
        """FCFS: admit waiting requests in order until one does not fit (batch or KV, keeping
        `headroom` tokens free under the recompute policy)."""
        admitted = []
        free = self.capacity - (headroom if self.policy is Preemption.RECOMPUTE else 0)
        while self.waiting and self.in_flight < self.max_batch:
            seq = self.waiting[0]
            need = self.held(seq.prefill_len)
            if self.policy is Preemption.RESERVE:
                need = self.held(seq.req.max_context_tokens)
            if self.kv_used + need > free:
                break
            self.waiting.popleft()
            seq.allocated = need
            self._allocate(need)
            self.in_flight += 1
            admitted.append(seq)
        return admitted

    def _allocate(self, tokens: int) -> None:
        self.kv_used += tokens
        self.kv_peak = max(self.kv_peak, self.kv_used)

    def record(
        self, phase: str, start_s: float, end_s: float, batch_size: int, num_steps: int = 1
    ) -> int:
        self.timeline.append(
            Iteration(
                phase=phase,
                start_s=start_s,
                end_s=end_s,
                batch_size=batch_size,
                kv_tokens=self.kv_used,
                num_steps=num_steps,
            )
        )
        return len(self.timeline) - 1

    def relayout(self, phase: str, start_s: float, cost_s: float) -> float:
        """A re-layout between the phases (recorded unless free); returns its end."""
        if cost_s > 0:
            self.record(phase, start_s, start_s + cost_s, len(self.running))
        return start_s + cost_s

    def after_prefill(self, batch: list[_Seq], end_s: float, iteration: int) -> list[_Seq]:
        """Each prefilled prompt emits a token; returns those that still need decode steps."""
        unfinished = []
        for seq in batch:
            seq.kv = seq.prefill_len
            if seq.generated == 0:
                seq.first_token_s = end_s
            seq.generated += 1
            if seq.generated == seq.req.output_len:
                self.finish(seq, end_s, iteration)
            else:
                unfinished.append(seq)
        return unfinished

    def make_room(self) -> None:
        """Recompute policy: preempt the newest running requests until every running one can
        cache one more token."""
        if self.policy is Preemption.RESERVE:
            return
        while self.running and self.kv_used + self.growth(self.running, 1) > self.capacity:
            seq = self.running.pop()
            self.kv_used -= seq.allocated
            seq.kv = seq.allocated = 0
            seq.preemptions += 1
            self.preemptions += 1
            self.in_flight -= 1
            self.waiting.appendleft(seq)

    def start_decode(self, start_s: float, until_s: float) -> tuple[float, int]:
        """Start a run of decode steps of every running request; returns (its end, its
        iteration). The run ends after the step in which a request finishes, before the KV
        cache would need a preemption, or at the first step boundary at or after `until_s`
        (when something else may happen: an arrival to admit, a request joining). The new
        tokens' KV slots are allocated now; the tokens exist at the end."""
        running = self.running
        batch = len(running)
        steps = min(seq.req.output_len - seq.generated for seq in running)
        if self.policy is Preemption.RECOMPUTE:
            steps = self._steps_that_fit(steps)
        assert steps >= 1, "make_room leaves every running request room for one step"
        contexts = [seq.kv for seq in running]
        end_s, done = start_s + self.cost.decode_step_s(contexts), 1
        while done < steps and end_s < until_s:
            end_s += self.cost.decode_step_s([c + done for c in contexts])
            done += 1
        if self.policy is Preemption.RECOMPUTE:
            self._allocate(self.growth(running, done))
        return end_s, self.record("decode", start_s, end_s, batch, num_steps=done)

    def _steps_that_fit(self, steps: int) -> int:
        """The most decode steps (at most `steps`) whose new KV tokens fit the free cache."""
        free = self.capacity - self.kv_used
        if self.window is None:
            return min(steps, free // len(self.running))
        low, high = 0, steps  # growth is monotone in the steps: bisect the largest that fits
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.growth(self.running, mid) <= free else (low, mid - 1)
        return low

    def end_decode(self, end_s: float, iteration: int) -> None:
        """Every running request emits the run's tokens; the finished ones leave the batch."""
        steps = self.timeline[iteration].num_steps
        recompute = self.policy is Preemption.RECOMPUTE
        still = []
        for seq in self.running:
            seq.kv += steps
            seq.generated += steps
            if recompute:
                seq.allocated = self.held(seq.kv)
            if seq.generated == seq.req.output_len:
                self.finish(seq, end_s, iteration)
            else:
                still.append(seq)
        self.running = still

    def finish(self, seq: _Seq, end_s: float, iteration: int) -> None:
        self.kv_used -= seq.allocated
        self.in_flight -= 1
        self.timeline[iteration] = dataclasses.replace(
            self.timeline[iteration], kv_tokens=self.kv_used
        )
        req = seq.req
        assert seq.first_token_s is not None  # a finished request has been prefilled
        self.records[seq.index] = RequestRecord(
            arrival_s=req.arrival_s,
            prompt_len=req.prompt_len,
            output_len=req.output_len,
            first_token_s=seq.first_token_s,
            finish_s=end_s,
            finish_iteration=iteration,
            preemptions=seq.preemptions,
        )

    def busy(self) -> bool:
        return bool(self.pending or self.waiting or self.in_flight)


def simulate(
    requests: Sequence[Request],
    cost: StepCost,
    *,
    mode: Mode = Mode.TIME_MULTIPLEXED,
    max_batch: int = 256,
    preemption: Preemption = Preemption.RECOMPUTE,
) -> Schedule:
    """Replay `requests` under continuous batching with the costs of `cost` (modelled time).

    Raises WaferError for an empty trace, a `max_batch` below 1, or a request whose final
    context (prompt + output - 1) exceeds the KV capacity (it could never finish).
    """
    if not requests:
        raise WaferError("no requests to simulate")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise WaferError(f"max_batch={max_batch!r} must be a positive integer")
    _check_capacity(requests, cost.kv_capacity_tokens, cost.kv_window_tokens)
    sim = _Sim(requests, cost, max_batch=max_batch, policy=Preemption(preemption))
    if Mode(mode) is Mode.TIME_MULTIPLEXED:
        _time_multiplexed(sim)
    else:
        _disaggregated(sim)
    return Schedule(
        mode=Mode(mode),
        records=tuple(sim.records[i] for i in range(len(requests))),
        timeline=tuple(sim.timeline),
        kv_capacity_tokens=sim.capacity,
        kv_peak_tokens=sim.kv_peak,
        preemptions=sim.preemptions,
    )


def _check_capacity(requests: Sequence[Request], capacity: int, window: int | None) -> None:
    for number, req in enumerate(requests, start=1):
        held = req.max_context_tokens if window is None else min(req.max_context_tokens, window)
        if held > capacity:
            capped = "" if window is None else f", at most the window of {window}"
            raise WaferError(
                f"request {number} needs {held} KV tokens (prompt_len {req.prompt_len} + "
                f"output_len {req.output_len} - 1{capped}) but the KV cache holds {capacity}; "
                "shorten it or use a device with more memory"
            )


def _time_multiplexed(sim: _Sim) -> None:
    """One engine. The wafer starts in the prefill layout; a decode step after a prefill pays
    `to_decode_s` (for the prompts prefilled since the last decode step), a prefill after a
    decode step pays `to_prefill_s`."""
    now_s, in_decode_layout = 0.0, False
    prefilled: list[int] = []  # prompts prefilled since the last decode (their KV moves)
    while sim.busy():
        sim.arrive(now_s)
        batch = sim.admit()
        if batch:
            if in_decode_layout:
                now_s = sim.relayout("to_prefill", now_s, sim.cost.to_prefill_s())
                in_decode_layout = False
            prompt_lens = [seq.prefill_len for seq in batch]
            end_s = now_s + sim.cost.prefill_s(prompt_lens)
            iteration = sim.record("prefill", now_s, end_s, len(batch))
            now_s = end_s
            unfinished = sim.after_prefill(batch, end_s, iteration)
            sim.running.extend(unfinished)
            prefilled.extend(seq.kv for seq in unfinished)
        elif sim.running:
            if not in_decode_layout:
                now_s = sim.relayout("to_decode", now_s, sim.cost.to_decode_s(prefilled))
                in_decode_layout, prefilled = True, []
            sim.make_room()
            if sim.running:
                now_s, iteration = sim.start_decode(now_s, _admission_s(sim))
                sim.end_decode(now_s, iteration)
        else:
            now_s = max(now_s, sim.pending[0].req.arrival_s)


def _disaggregated(sim: _Sim) -> None:
    """Two engines. The prefill engine takes admitted prompts whenever it is idle, leaving the
    running batch room for its next step; each prefilled request's KV moves to the decode
    region (`to_decode_s` of its prompt, delaying that request only) and joins the decode batch
    at the first step boundary after it arrives. A decode run ends at the next event of the
    prefill side (a prefill's end, a KV arrival, an admissible request's arrival)."""
    now_s = 0.0
    prefill_batch: list[_Seq] = []
    prefill_end_s: float | None = None  # None: the engine is idle
    decode_end_s: float | None = None
    prefill_iteration = decode_iteration = 0
    moving: list[tuple[float, int, _Seq]] = []  # (ready time, order, request): KV in transit
    while sim.busy():
        sim.arrive(now_s)
        if prefill_end_s is not None and prefill_end_s <= now_s:
            for seq in sim.after_prefill(prefill_batch, prefill_end_s, prefill_iteration):
                ready_s = prefill_end_s + sim.cost.to_decode_s([seq.kv])
                heapq.heappush(moving, (ready_s, seq.index, seq))
            prefill_batch, prefill_end_s = [], None
        decode_idle = decode_end_s is None or decode_end_s <= now_s
        if decode_idle:
            if decode_end_s is not None:
                sim.end_decode(decode_end_s, decode_iteration)
                decode_end_s = None
            while moving and moving[0][0] <= now_s:
                sim.running.append(heapq.heappop(moving)[2])
            sim.make_room()
        if prefill_end_s is None:
            prefill_batch = sim.admit(headroom=len(sim.running))
            if prefill_batch:
                prefill_end_s = now_s + sim.cost.prefill_s([s.prefill_len for s in prefill_batch])
                prefill_iteration = sim.record("prefill", now_s, prefill_end_s, len(prefill_batch))
        if decode_idle and sim.running:
            until_s = min(
                _admission_s(sim),
                moving[0][0] if moving else math.inf,
                math.inf if prefill_end_s is None else prefill_end_s,
            )
            decode_end_s, decode_iteration = sim.start_decode(now_s, until_s)
        now_s = _next_event_s(sim, now_s, prefill_end_s, decode_end_s, moving)


def _admission_s(sim: _Sim) -> float:
    """When the next arrival could be admitted: its arrival time if nobody waits ahead of it
    (FCFS: a waiting head that does not fit blocks it until a request leaves, which ends a
    decode run anyway) and the batch has room; never otherwise."""
    if sim.pending and not sim.waiting and sim.in_flight < sim.max_batch:
        return sim.pending[0].req.arrival_s
    return math.inf


def _next_event_s(
    sim: _Sim,
    now_s: float,
    prefill_end_s: float | None,
    decode_end_s: float | None,
    moving: list[tuple[float, int, _Seq]],
) -> float:
    events = [t for t in (prefill_end_s, decode_end_s) if t is not None and t > now_s]
    if decode_end_s is None and moving:
        events.append(moving[0][0])
    if sim.pending:
        events.append(sim.pending[0].req.arrival_s)
    return min(events) if events else now_s
