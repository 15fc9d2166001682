"""Decode steps priced without tokens (`DecodeWalks`), and each phase's SRAM peaks.

`DecodeWalks` prices the decode steps of a batch of B identical sequences on one estimate-mode
model: one walk per cache-window width, the attention in closed form at other widths
(`kernels.attention_cost`), KV shifts scaled from one walked shift in closed form. `watching`
measures a walk's own SRAM peak per mesh; `phase_cost` pairs a phase's ledger with those peaks.
The caches of whole requests live in `cost.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from waferllm.errors import WaferError
from waferllm.mesh.cost import Ledger, PhaseLedger, Record, RegionPeak
from waferllm.mesh.geometry import split_sizes
from waferllm.mesh.memory import PeakWatch
from waferllm.mesh.meta import shape_only
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.kv_cache import Append, KvPolicy, RowCounts
from waferllm.model.layers import LayerLedgers
from waferllm.model.placement import Phase
from waferllm.model.steps import DecodeRecords
from waferllm.model.transformer import MeshTransformer

ShiftStart = Callable[[], tuple[Append, RowCounts]]  # a shift group's first append and counts
Widths = dict[int, tuple[RowCounts, int]]  # window width -> (counts before its first step, steps)


Peaks = tuple[int, ...]  # bytes per core, one per mesh of a phase's `all_meshes`


@dataclasses.dataclass(frozen=True)
class ShiftGroups:
    """A request's steps that shift KV rows, grouped by their first shifting row: the rows in
    order of first occurrence, each group's steps, and `start(first)`: the group's first
    append and the counts before it (asked for only when a walk needs them)."""

    firsts: list[int]
    steps: list[int]
    start: Callable[[int], tuple[Append, RowCounts]]

    def items(self) -> Iterator[tuple[int, tuple[ShiftStart, int]]]:
        """(first row, (its start, steps)) per group, in order."""
        for first, steps in zip(self.firsts, self.steps, strict=True):
            yield first, (functools.partial(self.start, first), steps)


def phase_cost(model: MeshTransformer, phase: Phase, ledger: Ledger, peaks: Peaks) -> PhaseLedger:
    """The phase's ledger with the request's own SRAM peak on each of its regions."""
    state = model.prefill_state if phase is Phase.PREFILL else model.decode_state
    return PhaseLedger(
        ledger=ledger,
        regions=tuple(
            RegionPeak(bytes_per_core=peak, cores=mesh.num_cores)
            for peak, mesh in zip(peaks, state.all_meshes, strict=True)
        ),
        routes_per_core=model.routes_per_core()[phase.value],
    )


@contextlib.contextmanager
def watching(meshes: Sequence[Mesh]) -> Iterator[list[PeakWatch]]:
    """Each mesh's own SRAM peak during the block (a walk's, not the running maximum over
    every walk the cached model made): read after the block ends."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(m.sram.watch()) for m in meshes]


def highest(*peaks: Peaks) -> Peaks:
    return tuple(max(p) for p in zip(*peaks, strict=True))


def _joined(*ledgers: Ledger) -> Ledger:
    out = Ledger()
    for ledger in ledgers:
        out.extend(ledger)
    return out


class DecodeWalks:
    """Decode steps of one estimate-mode model priced without tokens, walks cached, for a
    batch of `batch` identical sequences (each in an equal share of the KV slots).

    A step's cost depends on the width of the cache window it reads (under the shift policy
    it grows once every R tokens) and on its one-hop KV shifts (whose bytes depend on which
    rows shift; one per sequence); steps with the same (width, first shifting row) share one
    walk.
    """

    def __init__(self, model: MeshTransformer, *, batch: int = 1) -> None:
        if model.mode is not Mode.ESTIMATE:
            raise WaferError("decode costs need an estimate-mode model (weights=None)")
        self.model = model
        self.batch = batch
        self.share = model.kv_budget.equal_share(batch)  # slots per row of each sequence
        self._steps: dict[tuple[int, int, bool], tuple[LayerLedgers, Ledger, Peaks]] = {}
        self._widths: dict[int, tuple[Ledger, Ledger]] = {}
        # per (width, held logits) walked in full: the step's fixed part, the layer's pre/post,
        # the walk's SRAM peak on each region
        self._walked: dict[tuple[int, bool], tuple[Ledger, Ledger, Ledger, Peaks]] = {}
        self._walked_shift: tuple[Record, int] | None = None  # (its record, first row)

    def shift(self, append: Append, counts: RowCounts) -> Ledger:
        """One layer's KV shift for `append` (which has senders): in estimate mode it depends on
        the first shifting row only. The first one is walked (`kv_shift_records`); the others
        follow from it in closed form (`_scaled_shift`), hundreds per request on a new grid."""
        ledger = Ledger()
        ledger.records.append(self._shift(append.senders[0], lambda: (append, counts)))
        return ledger

    def _shift(self, first: int, start: ShiftStart, times: int = 1) -> Record:
        """`shift`'s one record for the steps whose first shifting row is `first`, counted
        `times` more; `start()` gives their append and counts, asked for only when a walk
        needs them (the first shift asked for is walked, the others scaled from it)."""
        return self._shifts([first], [times], start)[0]

    def _shifts(self, firsts: list[int], times: list[int], start: ShiftStart) -> list[Record]:
        """The records of `_shift` for each of `firsts` (counted `times` more each), built in
        one pass; `start()` is the first one's append and counts, walked when no shift was."""
        if self._walked_shift is None:
            append, counts = start()
            with shape_only():
                (walked,) = self.model.kv_shift_records(append, counts).records
            self._walked_shift = (walked, firsts[0])
        walked, seen = self._walked_shift
        rows = self.model.plan.decode.grid[0]
        return _scaled_shifts(walked, rows - seen, [rows - f for f in firsts], times)

    @shape_only()
    def records(self, counts: RowCounts) -> tuple[DecodeRecords, Peaks]:
        """The step after `counts` (committed), its layer walked once per cost shape (and
        per held logits), with the step's SRAM peak on each region."""
        append = counts.plan_append()
        first = append.senders[0] if append.senders else -1
        key = (int(append.counts_after.max()), first, self.model.holds_decode_logits)
        meshes = self.model.decode_state.all_meshes
        cached = key in self._steps
        with watching(meshes) as watches:
            walked = self.model.decode_records(self._batch(counts), walk_layers=not cached)
        peaks = tuple(w.bytes_per_core for w in watches)
        if not cached:
            self._steps[key] = (walked.layer, walked.kv, peaks)
            return walked, peaks
        layer, kv, layer_peaks = self._steps[key]
        records = DecodeRecords(before=walked.before, layer=layer, kv=kv, after=walked.after)
        return records, highest(peaks, layer_peaks)

    def _batch(self, counts: RowCounts) -> list[RowCounts]:
        return [counts.copy() for _ in range(self.batch)]

    @shape_only()
    def decode_step(self, context_len: int, prompt_len: int | None = None) -> Ledger:
        """The ledger of the decode step whose new token is position `context_len - 1` (the
        cache then holds `context_len` tokens). `prompt_len` matters for the concat policy
        (the prompt is balanced, the rest piles on the last row)."""
        model = self.model
        rows, slots = model.plan.decode.grid[0], self.share
        before = context_len - 1
        if model.kv_policy is KvPolicy.SHIFT or prompt_len is None:
            window = model.config.sliding_window  # evicting: the last window held
            counts = RowCounts.balanced(model.kv_policy, rows, slots, before, window)
        else:
            counts = RowCounts.balanced(model.kv_policy, rows, slots, prompt_len)
            counts.counts[-1] += before - prompt_len
        append = counts.plan_append()
        width = int(append.counts_after.max())
        if width not in self._widths:  # walk the step once per cache window width
            self._widths[width] = self._width_ledgers(counts, width)
        fixed, layer_ledger = self._widths[width]
        layers = model.config.num_hidden_layers
        ledger = Ledger()
        ledger.extend(fixed)
        ledger.extend(layer_ledger, count=layers)
        if append.senders:
            ledger.extend(self.shift(append, counts), count=layers * self.batch)
        return ledger

    def _width_ledgers(self, counts: RowCounts, width: int) -> tuple[Ledger, Ledger]:
        """(embedding, hops and head; one layer) of the step after `counts`: walked in full,
        or, where a wider window's full walk checked this one's SRAM (`_covers`), its fixed
        part and layer pre/post with this window's attention in closed form, as `decode`
        prices narrower windows (only attention reads the window; the held logits charge
        nothing)."""
        held = self.model.holds_decode_logits
        wider = [(w, h) for w, h in self._walked if w > width and self._covers(w, h, held)]
        if wider:
            fixed, pre, post, _ = self._walked[min(wider)]
            attn = self.model.decode_attention_records(self._batch(counts))
            return fixed, _joined(pre, attn, post)
        walked, peaks = self.records(counts.copy())
        fixed, layer = _joined(walked.before, walked.after), walked.layer
        self._walked[width, held] = (fixed, layer.pre, layer.post, peaks)
        return fixed, _joined(layer.pre, layer.attn, layer.post)

    def _covers(self, width: int, held_then: bool, held: bool) -> bool:
        """Whether the full walk of the wider window `width`, made with the decode logits held
        (`held_then`) or not, checked the SRAM of a narrower window's step with them held now
        (`held`) or not. The steps allocate the same buffers but attention's scores, narrower
        here, and the held logits (from the step's start until its argmax frees them): a walk
        that held them covers a step without; one that did not covers a step holding them
        when its peak plus their bytes fits every region (the same walk otherwise)."""
        if held_then or not held:
            return True
        peaks = self._walked[width, held_then][3]
        extra, head = self.model.held_logits_bytes, self.model.decode_state.head_mesh
        meshes = self.model.decode_state.all_meshes
        return all(
            peak + (extra if mesh is head else 0) <= mesh.sram.capacity_bytes
            for peak, mesh in zip(peaks, meshes, strict=True)
        )

    @shape_only()
    def decode(self, prompt_len: int, output_len: int) -> PhaseLedger:
        """The ledger of a request's O-1 decode steps after a `prompt_len`-token prompt, and
        the request's own SRAM peak on each region (its KV cache allocated; the logits of
        the step before held from the second step on).

        Each width is walked once, widest first (the SRAM peak, checked on every region;
        narrower widths price one layer's attention in closed form) and counted for all its steps;
        each shift is priced once per set of shifting rows. The records equal those of the O-1
        `decode_step` ledgers after expanding counts, in another order.
        """
        model = self.model
        handoff = model.handoff_counts(prompt_len, slots=self.share)
        widths, shifts = _step_shapes(handoff, output_len)
        slots, hold = self.share * self.batch, output_len > 2
        model.ready_decode(slots=slots, batch=self.batch, hold_logits=hold)
        with watching(model.decode_state.all_meshes) as watches:
            ledger, walked = self._steps_ledger(widths, shifts, output_len)
        peaks = highest(tuple(w.bytes_per_core for w in watches), *walked)
        return phase_cost(model, Phase.DECODE, ledger, peaks)

    def _steps_ledger(
        self,
        widths: Widths,
        shifts: ShiftGroups,
        output_len: int,
    ) -> tuple[Ledger, list[Peaks]]:
        """`decode`'s ledger, and the peaks of the step walked in full (cached or not)."""
        layers = self.model.config.num_hidden_layers
        ledger = Ledger()
        widest: LayerLedgers | None = None
        peaks: list[Peaks] = []
        for width in sorted(widths, reverse=True):
            start, seen = widths[width]
            if widest is None:  # the whole step once: every region walked at the SRAM peak
                walked, step_peaks = self.records(start.copy())
                peaks.append(step_peaks)
                widest = walked.layer
                # embedding, hops, head: every step
                ledger.extend(_joined(walked.before, walked.after), count=output_len - 1)
                attn = widest.attn
            else:
                attn = self.model.decode_attention_records(self._batch(start))
            ledger.extend(_joined(widest.pre, attn, widest.post), count=seen * layers)
        if shifts.firsts:  # Ledger.extend of one record per group, inlined
            first = shifts.firsts[0]
            times = [steps * layers * self.batch for steps in shifts.steps]
            begin = functools.partial(shifts.start, first)
            ledger.records.extend(self._shifts(shifts.firsts, times, begin))
        return ledger, peaks


def _scaled_shifts(
    rec: Record, walked_senders: int, senders: list[int], times: list[int]
) -> list[Record]:
    """The KV shifts of `senders[i]` rows from a walked one of `walked_senders` rows (one
    record, `patterns.tail_shift_traffic`), counted `times[i]` more: every sender moves its
    tile one hop at once, so the time (alpha + bytes/W) is the same and the bytes injected and
    byte-hops are per sender (exact integers; tests/estimate/test_cost_fast_paths.py checks
    every row against the walk). Built field for field (`Record.with_fields`: a copy of the
    walked record's fields, three of them replaced, set as the new record's `__dict__`),
    hundreds per request on a new grid."""
    injected = rec.bytes_injected // walked_senders
    byte_hops = rec.link_byte_hops // walked_senders
    copy, make, place = rec.__dict__.copy, object.__new__, object.__setattr__
    out = []
    for n, t in zip(senders, times, strict=True):
        fields = copy()
        fields["count"] = rec.count * t
        if n != walked_senders:  # the walked rows keep their own bytes
            fields["bytes_injected"] = injected * n
            fields["link_byte_hops"] = byte_hops * n
        new = make(Record)
        place(new, "__dict__", fields)
        out.append(new)
    return out


def _step_shapes(counts: RowCounts, output_len: int) -> tuple[Widths, ShiftGroups]:
    """The O-1 steps grouped: per window width (counts before its first step, steps), per
    first shifting row (its append and counts, steps). Raises KvCacheFullError."""
    if _balanced_shift(counts, output_len):
        return _balanced_step_shapes(counts, output_len)
    widths: Widths = {}
    shifts: dict[int, int] = {}  # first shifting row -> steps
    begins: dict[int, tuple[Append, RowCounts]] = {}  # each group's last append, first counts
    for _ in range(output_len - 1):
        append = counts.plan_append()  # raises KvCacheFullError when the cache is full
        width = int(append.counts_after.max())
        start, seen = widths.get(width, (None, 0))
        widths[width] = (start or counts.copy(), seen + 1)
        if append.senders:
            first = append.senders[0]
            begin = begins[first][1] if first in begins else counts.copy()
            begins[first] = (append, begin)
            shifts[first] = shifts.get(first, 0) + 1
        counts.commit(append)
    return widths, ShiftGroups(list(shifts), list(shifts.values()), begins.__getitem__)


def _balanced_shift(counts: RowCounts, output_len: int) -> bool:
    """Whether `counts` is a shift-policy cache balanced as `RowCounts.balanced` leaves it
    (the hand-off's state) and holds the request's O-1 steps without filling up; an evicting
    cache (sliding window) steps instead: its appends stop growing once the window is full."""
    if counts.policy is not KvPolicy.SHIFT or counts.window is not None:
        return False
    rows, total = counts.rows, counts.total
    if total + output_len - 1 > rows * counts.slots:
        return False
    return bool(np.array_equal(counts.counts, split_sizes(total, rows)))


def _balanced_step_shapes(counts: RowCounts, output_len: int) -> tuple[Widths, ShiftGroups]:
    """`_step_shapes` in closed form for a balanced shift-policy cache: a shift append keeps
    it balanced, so after n positions the next token goes to row t = n mod R (the first
    row of the shorter ones), rows t+1..R-1 shifting once n >= R, and the window it reads
    is ceil((n+1)/R) wide. Groups are built from these formulas without stepping; a shift
    group's append and counts only when asked for (one walk prices every first row)."""
    rows, slots, policy = counts.rows, counts.slots, counts.policy
    totals = counts.total + np.arange(output_len - 1)
    widths: Widths = {}
    width_of = -(-(totals + 1) // rows)
    values, starts, seen = np.unique(width_of, return_index=True, return_counts=True)
    for width, start, n in zip(values.tolist(), starts.tolist(), seen.tolist(), strict=True):
        widths[width] = (RowCounts.balanced(policy, rows, slots, int(totals[start])), n)
    shifting = totals[(totals >= rows) & (totals % rows + 1 < rows)]
    firsts = shifting % rows + 1
    values, starts, seen = np.unique(firsts, return_index=True, return_counts=True)
    order = np.argsort(starts)  # in order of first occurrence, as stepping finds them
    firsts = values[order].tolist()
    totals_at = dict(zip(firsts, shifting[starts[order]].tolist(), strict=True))
    start = functools.partial(_balanced_append, policy, rows, slots, totals_at)
    return widths, ShiftGroups(firsts, seen[order].tolist(), start)


def _balanced_append(
    policy: KvPolicy, rows: int, slots: int, totals: dict[int, int], first: int
) -> tuple[Append, RowCounts]:
    """The append of a balanced cache whose first shifting row is `first` (the target: row
    first - 1, the first shorter one) after its `totals[first]` positions, and the counts
    before it."""
    begin = RowCounts.balanced(policy, rows, slots, totals[first])
    after = begin.counts.copy()
    after[first - 1] += 1
    return Append(target=first - 1, senders=range(first, rows), counts_after=after), begin


__all__ = ["DecodeWalks", "Peaks", "highest", "phase_cost", "watching"]
