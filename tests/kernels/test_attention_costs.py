"""Closed-form ledger tests of attention and of the KV cache's shift (STYLE.md §18).

Every record of prefill attention (the dist-GEMM-T steps with their streamed reduce: first,
middle and last; the softmax along X within kv-groups; the P multicast with the P V steps),
of decode attention and of the KV-cache shift equals the docstrings' formulas exactly, on
small meshes: kv-groups of one column, shared kv-groups (more columns than kv heads, owners
at a group end and inside it) and odd non-square meshes.
Legend: R rows, C columns, G kv heads per column, n query heads per kv head, H head-dim slots,
Lt tokens per row, Kc key blocks per column, s storage bytes, alpha per hop, beta per stage,
W link (= ramp) bytes per cycle.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from waferllm.device import tiny
from waferllm.kernels.attention import decode_attention, prefill_attention
from waferllm.kernels.attention_chunked import RESCALE_ADD, KeyChunk, cached_prefill_attention
from waferllm.kernels.heads import HeadLayout, head_layout
from waferllm.kernels.vector import (
    EXP_SUB,
    MASK_SELECT,
    MAX_ACC,
    NORMALISE,
    RECIPROCAL,
    SCALE,
    SUM_ACC,
)
from waferllm.mesh import Layout, Ledger, Mesh, Mode, Record
from waferllm.mesh.compute import matmul_cycles, vector_op_cycles
from waferllm.mesh.geometry import ring_successor
from waferllm.model.kv_cache import KvPolicy, RowCounts
from waferllm.model.kv_store import KvStore

DEVICE = dataclasses.replace(
    tiny(), step_overhead_cycles=5.0, op_overhead_cycles=7.0, scalar_cycles_per_element=2.0
)
ALPHA, BETA = DEVICE.hop_latency_cycles, DEVICE.stage_latency_cycles
S = DEVICE.storage_bytes
W = DEVICE.link_bytes_per_cycle
assert DEVICE.ramp_bytes_per_cycle == W  # the formulas below read one bandwidth


def _records(ledger: Ledger, op: str) -> list[Record]:
    return [r for r in ledger.expanded() if r.op == op]


def _prefill(rows: int, cols: int, heads: HeadLayout, length: int, mode=Mode.FUNCTIONAL):
    mesh = Mesh(DEVICE, rows, cols, mode=mode)
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots

    def place(width: int, name: str):
        host = torch.empty(length, width, device="meta") if mode is Mode.ESTIMATE else None
        host = torch.randn(length, width) if host is None else host
        return mesh.scatter(host, Layout((length, width), y_dim=0, x_dim=1), name)

    q, k = place(cols * g * n * h, "q"), place(cols * g * h, "k")
    v = place(cols * g * heads.value_slots, "v")  # v in its own value slots
    ledger = Ledger()
    prefill_attention(
        mesh, q=q, k=k, v=v, heads=heads, length=length, sliding_window=None, ledger=ledger
    )
    return ledger


@dataclasses.dataclass(frozen=True)
class Owners:
    """The docstring's owners at step 0: row y holds key block y, owned in a group of s
    columns by its local column floor(y*s/R); `far` the farthest column from its owner,
    `interior` whether some owner has columns on both sides, `senders` the columns per row
    that are not owners, `sides` the multicast streams of all rows (one per side with columns)."""

    far: int
    interior: bool
    senders: int
    sides: int

    @classmethod
    def of(cls, group_sizes: tuple[int, ...], rows: int) -> Owners:
        far, interior, sides = 0, False, []
        for s in group_sizes:
            for y in range(rows):
                o = y * s // rows
                far = max(far, o, s - 1 - o)
                interior = interior or 0 < o < s - 1
            sides.append([int(y * s // rows > 0) + int(y * s // rows < s - 1) for y in range(rows)])
        return cls(far, interior, sum(group_sizes) - len(group_sizes), int(np.sum(sides)))


def _ring_hops(rows: int) -> tuple[int, int]:
    """(the longest hop, the sum of hops) of one interleaved-ring step on a line of `rows`."""
    hops = np.abs(ring_successor(rows) - np.arange(rows))
    return int(hops.max()), int(hops.sum())


CASES = [
    # (rows, cols, kv heads, n_rep, head_dim, length): what it exercises
    pytest.param(3, 4, 2, 2, 8, 7, id="groups-of-2-owner-at-an-end"),
    pytest.param(3, 7, 1, 3, 12, 8, id="odd-non-square-one-group-of-7-interior-owners"),
    pytest.param(4, 6, 2, 1, 8, 12, id="shared-groups-of-3"),
    pytest.param(3, 2, 4, 2, 4, 6, id="fewer-columns-than-kv-heads"),
]


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length"), CASES)
def test_prefill_qk_steps_stream_their_reduces_and_pay_the_chain_latency_once(
    rows, cols, kv, n_rep, hd, length
):
    heads = head_layout(kv, n_rep, hd, cols)
    ledger = _prefill(rows, cols, heads, length)
    g, n, h, lt = heads.kv_per_tile, heads.n_rep, heads.head_slots, -(-length // rows)
    shared = max(heads.group_sizes) > 1
    own = Owners.of(heads.group_sizes, rows)
    k_bytes = g * h * lt * S  # the circulating K tile [G, 1, H, Lt]
    p_bytes = g * n * lt * lt * S  # one step's partial block [G, n, Lt, Lt]
    ring_far, ring_sum = _ring_hops(rows)
    mac = g * n * matmul_cycles(DEVICE, m=lt, k=h, n=lt)
    shift_bytes, shift_byte_hops = k_bytes * rows * cols, k_bytes * cols * ring_sum
    reduce_bytes = p_bytes * rows * own.senders if shared else 0  # every sender: one hop
    steps = _records(ledger, "qk.step")
    assert len(steps) == rows
    first, middle = steps[0], steps[1:]
    # first: max(Lt*H MACs of Lt per head, 2 alpha + k/W) + overhead; nothing to reduce yet
    assert first.compute_cycles == pytest.approx(mac)
    assert first.comm_busy_cycles == pytest.approx(ring_far * ALPHA + k_bytes / W)
    assert (first.bytes_injected, first.link_byte_hops) == (shift_bytes, shift_byte_hops)
    assert (first.critical_hops, first.critical_stages) == (ring_far, 0)
    assert first.overhead_cycles == DEVICE.step_overhead_cycles
    # middle: the previous block streams behind the one ahead: only its size term, which
    # shares the ramps with K (an interior owner takes two partials in)
    ramp = k_bytes + (2 if own.interior else 1) * p_bytes * shared
    for rec in middle:
        assert rec.compute_cycles == pytest.approx(mac)
        assert rec.comm_busy_cycles == pytest.approx(ring_far * ALPHA + ramp / W)
        assert rec.bytes_injected == shift_bytes + reduce_bytes
        assert rec.link_byte_hops == shift_byte_hops + reduce_bytes
        assert (rec.critical_hops, rec.critical_stages) == (ring_far, 0)
    # last: the chains' whole latency, once: d hops, d-1 stages, one (or two) partials
    last = _records(ledger, "qk.reduce_last")
    if not shared:
        assert last == []
        return
    (rec,) = last
    d = own.far
    size = (2 if own.interior else 1) * p_bytes / W
    assert (rec.critical_hops, rec.critical_stages) == (d, d - 1)
    assert rec.comm_cycles == pytest.approx(d * ALPHA + (d - 1) * BETA + size)
    assert (rec.bytes_injected, rec.link_byte_hops) == (reduce_bytes, reduce_bytes)
    assert rec.compute_cycles == 0 and rec.overhead_cycles == 0


def test_a_long_group_chain_is_slower_than_the_k_shift_so_streaming_is_visible():
    """The mutation guard: with one group of 7 columns the chain (6 hops, 5 stages) is slower
    than the K shift (2 hops); a middle step that paid it would show 6 hops."""
    heads = head_layout(1, 3, 12, 7)
    ledger = _prefill(3, 7, heads, 8)
    assert Owners.of(heads.group_sizes, 3).far == 6
    assert {r.critical_hops for r in _records(ledger, "qk.step")} == {2}
    assert _records(ledger, "qk.reduce_last")[0].critical_hops == 6


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length"), CASES)
def test_prefill_softmax_runs_along_x_within_each_kv_group(rows, cols, kv, n_rep, hd, length):
    heads = head_layout(kv, n_rep, hd, cols)
    ledger = _prefill(rows, cols, heads, length)
    g, n, lt = heads.kv_per_tile, heads.n_rep, -(-length // rows)
    kc = max(
        -(-(j + 1) * rows // s) - -(-j * rows // s) for s in heads.group_sizes for j in range(s)
    )
    count, width = g * n * lt, kc * lt  # one instruction per softmax row, of the owned keys
    for op, cost in (
        ("scale", SCALE),
        ("mask", MASK_SELECT),
        ("max", MAX_ACC),
        ("exp", EXP_SUB),
        ("sum", SUM_ACC),
        ("normalise", NORMALISE),
    ):
        (rec,) = _records(ledger, f"softmax.{op}")
        flops, sram, scalar = cost
        want = (
            vector_op_cycles(
                DEVICE,
                num_instructions=count,
                length=width,
                flops_per_element=flops,
                sram_elements_per_element=sram,
            )
            + count * width * scalar * DEVICE.scalar_cycles_per_element
        )
        assert rec.compute_cycles == pytest.approx(want)
        assert rec.flops == count * width * flops * rows * cols
        assert rec.sram_bytes == count * width * sram * S * rows * cols
    # one reciprocal per softmax row (code notes §4.2 multiplies by 1/sum)
    (rec,) = _records(ledger, "softmax.reciprocal")
    flops, sram, scalar = RECIPROCAL
    want = vector_op_cycles(
        DEVICE,
        num_instructions=1,
        length=count,
        flops_per_element=flops,
        sram_elements_per_element=sram,
    )
    assert rec.compute_cycles == pytest.approx(want + count * DEVICE.scalar_cycles_per_element)
    # segmented allreduces of one value per softmax row, to each group's middle (g // 2)
    nbytes = count * S
    far = max(s // 2 for s in heads.group_sizes)
    interior = any(s >= 3 for s in heads.group_sizes)
    senders = rows * sum(s - 1 for s in heads.group_sizes)
    for name in ("allreduce_max", "allreduce_sum"):
        reduce = _records(ledger, f"softmax.{name}.reduce")
        bcast = _records(ledger, f"softmax.{name}.bcast")
        if far == 0:  # every group is one column: nothing moves
            assert reduce == bcast == []
            continue
        ((red,), (bc,)) = reduce, bcast
        size = (2 if interior else 1) * nbytes / W
        assert (red.critical_hops, red.critical_stages) == (far, far - 1)
        assert red.comm_cycles == pytest.approx(far * ALPHA + (far - 1) * BETA + size)
        assert red.bytes_injected == nbytes * senders
        assert (bc.critical_hops, bc.critical_stages) == (far, 0)
        assert bc.comm_cycles == pytest.approx(far * ALPHA + size)
        assert red.overhead_cycles == bc.overhead_cycles == DEVICE.op_overhead_cycles


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length"), CASES)
def test_prefill_pv_steps_multicast_each_p_block_within_its_group(
    rows, cols, kv, n_rep, hd, length
):
    heads = head_layout(kv, n_rep, hd, cols)
    ledger = _prefill(rows, cols, heads, length)
    g, n, hv, lt = heads.kv_per_tile, heads.n_rep, heads.value_slots, -(-length // rows)
    shared = max(heads.group_sizes) > 1
    own = Owners.of(heads.group_sizes, rows)
    v_bytes, p_bytes = g * hv * lt * S, g * n * lt * lt * S
    ring_far, ring_sum = _ring_hops(rows)
    mac = g * n * matmul_cycles(DEVICE, m=lt, k=lt, n=hv)
    # the owner sends one stream to each side of its group; every other column takes it in
    bcast_bytes = p_bytes * own.sides if shared else 0
    bcast_byte_hops = p_bytes * rows * sum(s - 1 for s in heads.group_sizes)
    hops = max(ring_far, own.far if shared else 0)
    ramp = v_bytes + (2 if own.interior else 1) * p_bytes * shared
    steps = _records(ledger, "pv.step")
    assert len(steps) == rows
    for rec in steps:
        assert rec.compute_cycles == pytest.approx(mac)
        assert rec.bytes_injected == v_bytes * rows * cols + bcast_bytes
        assert rec.link_byte_hops == v_bytes * cols * ring_sum + bcast_byte_hops
        assert (rec.critical_hops, rec.critical_stages) == (hops, 0)
        assert rec.comm_busy_cycles == pytest.approx(hops * ALPHA + ramp / W)
        assert rec.overhead_cycles == DEVICE.step_overhead_cycles


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length"), CASES)
def test_prefill_attention_ledgers_agree_in_estimate_mode(rows, cols, kv, n_rep, hd, length):
    heads = head_layout(kv, n_rep, hd, cols)
    functional = _prefill(rows, cols, heads, length).expanded()
    estimate = _prefill(rows, cols, heads, length, mode=Mode.ESTIMATE).expanded()
    assert functional == estimate


# ---- chunked prefill: a chunk against a cached chunk and itself -----------------------------
def _chunked(rows, cols, heads, cached: int, own: int, mode=Mode.FUNCTIONAL) -> Ledger:
    """The chunk at positions cached .. cached + own - 1 against the cached chunk 0 .. cached
    - 1 and itself."""
    mesh = Mesh(DEVICE, rows, cols, mode=mode)
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots

    def place(length: int, width: int, name: str):
        host = torch.empty(length, width, device="meta") if mode is Mode.ESTIMATE else None
        host = torch.randn(length, width) if host is None else host
        return mesh.scatter(host, Layout((length, width), y_dim=0, x_dim=1), name)

    chunks = [
        KeyChunk(k=place(t, cols * g * h, "k"), v=place(t, cols * g * hv, "v"), start=s, length=t)
        for s, t in ((0, cached), (cached, own))
    ]
    ledger = Ledger()
    cached_prefill_attention(
        mesh,
        q=place(own, cols * g * n * h, "q"),
        query_start=cached,
        query_length=own,
        keys=chunks,
        heads=heads,
        sliding_window=None,
        ledger=ledger,
    )
    return ledger


def _vector_cycles(count: int, width: int, cost: tuple[int, int, int]) -> float:
    flops, sram, scalar = cost
    cycles = vector_op_cycles(
        DEVICE,
        num_instructions=count,
        length=width,
        flops_per_element=flops,
        sram_elements_per_element=sram,
    )
    return cycles + count * width * scalar * DEVICE.scalar_cycles_per_element


CHUNKED = [
    # (rows, cols, kv heads, n_rep, head_dim, cached tokens, own tokens)
    pytest.param(3, 4, 2, 2, 8, 6, 3, id="groups-of-2-cached-tile-2-own-tile-1"),
    pytest.param(3, 7, 1, 3, 12, 9, 5, id="one-group-of-7-interior-owners"),
    pytest.param(2, 2, 4, 1, 4, 4, 4, id="fewer-columns-than-kv-heads"),
]


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "cached", "own"), CHUNKED)
def test_a_chunk_attends_each_key_chunk_with_the_prefill_loops_at_its_tile_sizes(
    rows, cols, kv, n_rep, hd, cached, own
):
    heads = head_layout(kv, n_rep, hd, cols)
    ledger = _chunked(rows, cols, heads, cached, own)
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots
    lt = -(-own // rows)
    shared = max(heads.group_sizes) > 1
    owners = Owners.of(heads.group_sizes, rows)
    ring_far, ring_sum = _ring_hops(rows)
    steps_qk, steps_pv = _records(ledger, "qk.step"), _records(ledger, "pv.step")
    assert len(steps_qk) == len(steps_pv) == 2 * rows  # R steps per key chunk
    for chunk, length in enumerate((cached, own)):
        lk = -(-length // rows)
        k_bytes, v_bytes = g * h * lk * S, g * hv * lk * S  # the circulating K and V tiles
        p_bytes = g * n * lt * lk * S  # one block of scores [G, n, Lt, Lk]
        qk, pv = steps_qk[chunk * rows], steps_pv[chunk * rows : (chunk + 1) * rows]
        # Q K^T: Lk*H instructions of Lt per head, K shifted one ring position along Y
        assert qk.compute_cycles == pytest.approx(g * n * matmul_cycles(DEVICE, m=lt, k=h, n=lk))
        assert qk.comm_busy_cycles == pytest.approx(ring_far * ALPHA + k_bytes / W)
        assert qk.bytes_injected == k_bytes * rows * cols
        assert qk.link_byte_hops == k_bytes * cols * ring_sum
        # P V: the unnormalised P block multicast within the group, V shifted along Y
        hops = max(ring_far, owners.far if shared else 0)
        ramp = v_bytes + (2 if owners.interior else 1) * p_bytes * shared
        for rec in pv:
            assert rec.compute_cycles == pytest.approx(
                g * n * matmul_cycles(DEVICE, m=lt, k=lk, n=hv)
            )
            assert rec.bytes_injected == v_bytes * rows * cols + (
                p_bytes * owners.sides if shared else 0
            )
            assert (rec.critical_hops, rec.critical_stages) == (hops, 0)
            assert rec.comm_busy_cycles == pytest.approx(hops * ALPHA + ramp / W)
            assert rec.overhead_cycles == DEVICE.step_overhead_cycles


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "cached", "own"), CHUNKED)
def test_the_online_softmax_costs_its_closed_form_per_key_chunk(
    rows, cols, kv, n_rep, hd, cached, own
):
    heads = head_layout(kv, n_rep, hd, cols)
    ledger = _chunked(rows, cols, heads, cached, own)
    g, n, hv = heads.kv_per_tile, heads.n_rep, heads.value_slots
    count = g * n * -(-own // rows)  # one query row per (kv head, query head, token)
    kc = max(
        -(-(j + 1) * rows // s) - -(-j * rows // s) for s in heads.group_sizes for j in range(s)
    )
    for chunk, length in enumerate((cached, own)):
        width = kc * -(-length // rows)  # the owned keys of this key chunk
        for op, cost, (num, wide) in (
            ("scale", SCALE, (count, width)),
            ("mask", MASK_SELECT, (count, width)),
            ("max", MAX_ACC, (count, width)),
            ("exp", EXP_SUB, (count, width)),
            ("sum", SUM_ACC, (count, width)),
            ("online.max", MAX_ACC, (count, 1)),  # m' = max(m, block max)
            ("online.exp", EXP_SUB, (count, 1)),  # alpha = exp(m - m')
            ("online.sum", RESCALE_ADD, (count, 1)),  # l = l*alpha + block sum
            ("online.rescale", RESCALE_ADD, (count, hv)),  # acc = acc*alpha + P V
        ):
            rec = _records(ledger, f"softmax.{op}")[chunk]
            assert rec.compute_cycles == pytest.approx(_vector_cycles(num, wide, cost)), op
            assert rec.flops == num * wide * cost[0] * rows * cols
    # the state's max and sum: one value per query row, segmented within kv-groups
    far = max(s // 2 for s in heads.group_sizes)
    for name in ("allreduce_max", "allreduce_sum"):
        reduce = _records(ledger, f"softmax.{name}.reduce")
        if far == 0:
            assert reduce == []
            continue
        assert len(reduce) == 2
        interior = any(s >= 3 for s in heads.group_sizes)
        for red in reduce:
            size = (2 if interior else 1) * count * S / W
            assert red.comm_cycles == pytest.approx(far * ALPHA + (far - 1) * BETA + size)
            assert red.bytes_injected == count * S * rows * sum(s - 1 for s in heads.group_sizes)
    # out = acc * (1 / l), once: a reciprocal per query row, a multiply per output entry
    (reciprocal,) = _records(ledger, "online.reciprocal")
    assert reciprocal.compute_cycles == pytest.approx(_vector_cycles(1, count, RECIPROCAL))
    (normalise,) = _records(ledger, "online.normalise")
    assert normalise.compute_cycles == pytest.approx(_vector_cycles(count, hv, NORMALISE))


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "cached", "own"), CHUNKED)
def test_chunked_attention_ledgers_agree_in_estimate_mode(rows, cols, kv, n_rep, hd, cached, own):
    heads = head_layout(kv, n_rep, hd, cols)
    functional = _chunked(rows, cols, heads, cached, own).expanded()
    estimate = _chunked(rows, cols, heads, cached, own, mode=Mode.ESTIMATE).expanded()
    assert functional == estimate


def test_chunked_attention_equals_the_whole_prompts_causal_attention():
    """The dense oracle: chunk 1's output against chunks 0 and 1 equals the rows of the
    unchunked prefill attention over the whole prompt."""
    rows, cols, cached, own = 3, 4, 6, 5
    heads = head_layout(2, 2, 8, cols)
    g, n, h = heads.kv_per_tile, heads.n_rep, heads.head_slots
    torch.manual_seed(0)
    total = cached + own
    host = {"q": torch.randn(total, cols * g * n * h), "k": torch.randn(total, cols * g * h)}
    host["v"] = torch.randn(total, cols * heads.v_width)
    mesh = Mesh(DEVICE, rows, cols)

    def place(name: str, lo: int, hi: int):
        data = host[name][lo:hi]
        return mesh.scatter(data, Layout(tuple(data.shape), y_dim=0, x_dim=1), name)

    whole = prefill_attention(
        mesh,
        q=place("q", 0, total),
        k=place("k", 0, total),
        v=place("v", 0, total),
        heads=heads,
        length=total,
        sliding_window=4,
        ledger=Ledger(),
    )
    chunks = [
        KeyChunk(k=place("k", lo, hi), v=place("v", lo, hi), start=lo, length=hi - lo)
        for lo, hi in ((0, cached), (cached, total))
    ]
    part = cached_prefill_attention(
        mesh,
        q=place("q", cached, total),
        query_start=cached,
        query_length=own,
        keys=chunks,
        heads=heads,
        sliding_window=4,
        ledger=Ledger(),
    )
    torch.testing.assert_close(mesh.gather(part), mesh.gather(whole)[cached:], rtol=1e-5, atol=1e-5)


# ---- decode --------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    ("cols", "kv", "n_rep"), [(5, 2, 2), (4, 4, 1), (2, 3, 2), (9, 1, 4), (7, 2, 1), (12, 2, 8)]
)
def test_decode_attention_costs_its_closed_form(cols, kv, n_rep, batch):
    # B sequences: every instruction count and message size times B, one message each
    rows, hd, width = 2, 8, 3
    heads = head_layout(kv, n_rep, hd, cols)
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots
    mesh = Mesh(DEVICE, rows, cols)
    features = cols * g * n * h
    q = mesh.scatter(torch.randn(batch, features), Layout((batch, features), x_dim=1), "q")
    k_cache = torch.randn(rows, cols, batch, g, h, width)
    v_cache = torch.randn(rows, cols, batch, g, width, hv)
    mask = torch.ones(rows, 1, batch, 1, 1, width, dtype=torch.bool)
    ledger = Ledger()
    decode_attention(
        mesh, q=q, k_cache=k_cache, v_cache=v_cache, slot_mask=mask, heads=heads, ledger=ledger
    )

    # per kv head of each sequence, scores [n, H] @ [H, w] and P@V [n, w] @ [w, Hv], each in
    # the loop order with fewer cycles: along the output rows (n*k instructions of the row)
    # or along the n query heads (k*row instructions of n)
    def cheaper(k: int, out: int) -> float:
        by_rows = vector_op_cycles(
            DEVICE,
            num_instructions=n * k,
            length=out,
            flops_per_element=2,
            sram_elements_per_element=3,
        )
        by_heads = vector_op_cycles(
            DEVICE,
            num_instructions=k * out,
            length=n,
            flops_per_element=2,
            sram_elements_per_element=3,
        )
        return batch * g * min(by_rows, by_heads)

    (scores,) = _records(ledger, "scores")
    assert scores.compute_cycles == pytest.approx(cheaper(h, width))
    (pv,) = _records(ledger, "pv")
    assert pv.compute_cycles == pytest.approx(cheaper(width, hv))
    # the scores' segmented reduce onto each kv-group's root: B*G*n*w values per core
    sizes = heads.group_sizes
    far = max(s // 2 for s in sizes)
    nbytes = batch * g * n * width * S
    interior = any(s >= 3 for s in sizes)
    reduce = _records(ledger, "scores.group.reduce")
    whole_row = len(sizes) == 1  # one kv head: the row's K-tree allreduce, no spread
    if whole_row:
        assert reduce == [] and _records(ledger, "scores.allreduce.reduce")
        assert _records(ledger, "scores.allreduce.bcast")
        far = 0
    elif far == 0:
        assert reduce == []
    else:
        (red,) = reduce
        size = (2 if interior else 1) * nbytes / W
        assert red.comm_cycles == pytest.approx(far * ALPHA + (far - 1) * BETA + size)
        assert red.bytes_injected == nbytes * rows * sum(s - 1 for s in sizes)
    # the group's columns nearest its root share the G*n softmax rows: ceil(G*n / narrowest
    # group) each, on ceil(G*n / that) columns; a chain gathers their rows to the root, which
    # multicasts the probabilities to the group (groups of one column: every column alone)
    per_core = -(-g * n // min(sizes)) if far else g * n
    cores = -(-g * n // per_core)
    per_core *= batch  # each sequence's rows
    (exp,) = _records(ledger, "softmax.exp")
    flops, sram, scalar = EXP_SUB
    assert exp.compute_cycles == pytest.approx(
        vector_op_cycles(
            DEVICE,
            num_instructions=per_core,
            length=width,
            flops_per_element=flops,
            sram_elements_per_element=sram,
        )
        + per_core * width * scalar * DEVICE.scalar_cycles_per_element
    )
    gather, bcast = _records(ledger, "probs.gather"), _records(ledger, "probs.bcast")
    if far == 0 or cores == 1:
        assert gather == []
    else:
        (gat,) = gather
        d = cores // 2
        assert (gat.critical_hops, gat.critical_stages) == (d, d - 1)
        assert gat.bytes_injected == nbytes * rows * len(sizes) * (cores - 1)
    if far == 0:
        assert bcast == []
    else:
        (bc,) = bcast
        assert (bc.critical_hops, bc.critical_stages) == (far, 0)
        assert bc.comm_cycles == pytest.approx(far * ALPHA + (2 if interior else 1) * nbytes / W)
    # along Y (2 rows): the softmax's two allreduces of G*n values and P@V's of G*n*Hv, each
    # one hop up and a one-hop broadcast back
    for op, values in (
        ("softmax.allreduce_max", batch * g * n),
        ("softmax.allreduce_sum", batch * g * n),
        ("pv.allreduce", batch * g * n * hv),
    ):
        for part in ("reduce", "bcast"):
            (rec,) = _records(ledger, f"{op}.{part}")
            assert (rec.critical_hops, rec.critical_stages) == (1, 0)
            assert rec.comm_cycles == pytest.approx(ALPHA + values * S / W)
            assert rec.bytes_injected == values * S * cols


# ---- the KV cache's shift -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("counts", "first"),
    [
        ([3, 3, 2, 2], 3),
        ([3, 2, 2, 2, 2], 2),
        ([2, 2, 2], 1),
        ([0, 0, 0], None),
        ([4, 4, 3], None),
        ([4, 3, 3], 2),
    ],
)
def test_the_kv_shift_sends_one_hop_north_from_the_rows_south_of_r0(counts, first):
    rows, cols = len(counts), 3
    heads = head_layout(2, 2, 8, cols)
    g, h, hv = heads.kv_per_tile, heads.head_slots, heads.value_slots
    mesh = Mesh(DEVICE, rows, cols)
    cache = RowCounts(KvPolicy.SHIFT, rows, 10, np.array(counts))
    store = KvStore(mesh, heads, layers=range(1), slots=10)
    total = cache.total
    k_host = torch.arange(total, dtype=torch.float32)[:, None].expand(total, 2 * 8)
    store.fill(0, k_host, k_host, cache)
    append = cache.plan_append()
    assert list(append.senders) == ([] if first is None else list(range(first, rows)))
    ledger = Ledger()
    new_k = torch.full((rows, cols, g, h), float(total))
    new_v = torch.full((rows, cols, g, hv), float(total))
    store.write(0, new_k, new_v, append, cache, ledger)
    shifts = _records(ledger, "kv_shift")
    if first is None:
        assert shifts == []
    else:
        # k and v of the widest column (its real slots: k's RoPE pairs, v's value dims) from
        # every column of rows first..R-1, one hop each
        nbytes = int(max(g * (2 * heads.num_pairs + heads.num_vdims))) * S
        (rec,) = shifts
        assert (rec.critical_hops, rec.critical_stages) == (1, 0)
        assert rec.bytes_injected == rec.link_byte_hops == nbytes * (rows - first) * cols
        assert rec.comm_cycles == pytest.approx(ALPHA + nbytes / W)
        assert rec.overhead_cycles == DEVICE.op_overhead_cycles
    # the data: positions stay in order, row 0 the oldest, the counts as planned
    cache.commit(append)
    k, _ = store.window(0, int(cache.counts.max()))
    positions = [
        k[y, 0, 0, 0, : cache.counts[y]].tolist() for y in range(rows)
    ]  # column 0 holds kv head 0's first slot
    assert sum(positions, []) == [float(p) for p in range(total + 1)]


@pytest.mark.parametrize("batch", [1, 2])
def test_decode_attention_multiplies_only_the_rows_holding_an_attended_slot(batch, monkeypatch):
    """Rows with no attended slot add nothing (their scores are masked, their probabilities
    zero): multiplying only the others gives the same output and the same ledger."""
    from waferllm.kernels import attention

    rows, cols, hd, width = 5, 4, 8, 3
    heads = head_layout(2, 2, hd, cols)
    g, n, h, hv = heads.kv_per_tile, heads.n_rep, heads.head_slots, heads.value_slots
    gen = torch.Generator().manual_seed(5)
    features = cols * g * n * h
    q_host = torch.randn(batch, features, generator=gen)
    k_cache = torch.randn(rows, cols, batch, g, h, width, generator=gen)
    v_cache = torch.randn(rows, cols, batch, g, width, hv, generator=gen)
    mask = torch.zeros(rows, 1, batch, 1, 1, width, dtype=torch.bool)
    mask[1, ..., :2] = True
    mask[3, ..., -1] = True  # 2 of 5 rows
    monkeypatch.setattr(attention, "ROW_SKIP_MIN_CORES", 1)
    assert attention._attended_rows(Mesh(DEVICE, rows, cols), mask).tolist() == [1, 3]
    outs, ledgers = [], []
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(attention, "_attended_rows", lambda mesh, slot_mask: None)
        mesh, ledger = Mesh(DEVICE, rows, cols), Ledger()
        q = mesh.scatter(q_host, Layout((batch, features), x_dim=1), "q")
        out = decode_attention(
            mesh, q=q, k_cache=k_cache, v_cache=v_cache, slot_mask=mask, heads=heads, ledger=ledger
        )
        outs.append(mesh.gather(out))
        ledgers.append(ledger.records)
    assert torch.equal(outs[0], outs[1])
    assert ledgers[0] == ledgers[1]
