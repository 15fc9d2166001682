"""Key-streamed prefill attention: numerics against the dense kernel and a dense reference,
and its ledger in closed form (STYLE.md §18).
Legend: R rows, C columns, G kv heads per column, n query heads per kv head, H head-dim slots,
Lt tokens per row, s storage bytes, W link bytes per cycle, alpha per hop, beta per stage.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from waferllm.device import tiny
from waferllm.kernels.attention import prefill_attention
from waferllm.kernels.attention_stream import prefill_attention_streamed, streamed_attention_numel
from waferllm.kernels.heads import gather_rows, head_layout
from waferllm.kernels.vector import (
    EXP_SUB,
    MASK_SELECT,
    MAX_ACC,
    NORMALISE,
    RECIPROCAL,
    SCALE,
    SUM_ACC,
)
from waferllm.mesh import Layout, Ledger, Mesh, Mode
from waferllm.mesh.compute import matmul_cycles, vector_op_cycles

DEVICE = dataclasses.replace(
    tiny(), step_overhead_cycles=5.0, op_overhead_cycles=7.0, scalar_cycles_per_element=2.0
)
CASES = [
    # (rows, cols, kv heads, n_rep, head_dim, length, sliding window)
    pytest.param(3, 4, 2, 2, 8, 7, None, id="groups-of-2"),
    pytest.param(3, 7, 1, 3, 12, 8, None, id="one-group-of-7-non-square"),
    pytest.param(4, 6, 2, 1, 8, 12, 5, id="shared-groups-of-3-sliding-window"),
    pytest.param(3, 2, 4, 2, 4, 6, None, id="fewer-columns-than-kv-heads"),
]


def _run(kernel, rows, cols, kv, n_rep, hd, length, window, *, mode=Mode.FUNCTIONAL):
    """The kernel on random q, k, v placed in the head layout; (mesh, out, ledger, hosts)."""
    heads = head_layout(kv, n_rep, hd, cols)
    mesh = Mesh(DEVICE, rows, cols, mode=mode)
    gen = torch.Generator().manual_seed(rows * 100 + cols)
    hosts = [torch.randn(length, heads * hd, generator=gen) for heads in (kv * n_rep, kv, kv)]

    def place(host: torch.Tensor, index, name: str):
        padded = gather_rows(host.T, index).T
        if mode is Mode.ESTIMATE:
            padded = torch.empty(padded.shape, device="meta")
        width = padded.shape[1]
        return mesh.scatter(padded, Layout((length, width), y_dim=0, x_dim=1), name)

    q = place(hosts[0], heads.q_index(), "q")
    k, v = place(hosts[1], heads.kv_index(), "k"), place(hosts[2], heads.v_index(), "v")
    ledger = Ledger()
    out = kernel(
        mesh, q=q, k=k, v=v, heads=heads, length=length, sliding_window=window, ledger=ledger
    )
    return mesh, out, ledger, hosts


def _reference(q, k, v, n_rep, hd, window) -> torch.Tensor:
    """Causal (windowed) attention of every query head on the host [L, Hq*hd]."""
    length = q.shape[0]
    qh, kh, vh = (t.reshape(length, -1, hd).transpose(0, 1) for t in (q, k, v))
    kh, vh = kh.repeat_interleave(n_rep, 0), vh.repeat_interleave(n_rep, 0)
    pos = torch.arange(length)
    keep = pos[None, :] <= pos[:, None]
    if window is not None:
        keep &= pos[:, None] - pos[None, :] < window
    scores = (qh @ kh.transpose(1, 2)) / math.sqrt(hd)
    probs = torch.softmax(scores.masked_fill(~keep, -math.inf), dim=-1)
    return (probs @ vh).transpose(0, 1).reshape(length, -1)


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length", "window"), CASES)
def test_streamed_attention_equals_the_dense_kernel_and_the_dense_reference(
    rows, cols, kv, n_rep, hd, length, window
):
    args = (rows, cols, kv, n_rep, hd, length, window)
    mesh, streamed, _, hosts = _run(prefill_attention_streamed, *args)
    other, dense, _, _ = _run(prefill_attention, *args)
    got = mesh.gather(streamed)
    torch.testing.assert_close(got, other.gather(dense), rtol=1e-5, atol=1e-5)
    index = head_layout(kv, n_rep, hd, cols).o_index()  # the output is in the value slots
    real = index >= 0
    on_host = torch.zeros(length, kv * n_rep * hd)
    on_host[:, index[real]] = got[:, torch.as_tensor(real)]
    want = _reference(*hosts, n_rep, hd, window)
    torch.testing.assert_close(on_host, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length", "window"), CASES)
def test_streamed_attention_keeps_one_score_block_per_core(
    rows, cols, kv, n_rep, hd, length, window
):
    mesh, _, _, _ = _run(prefill_attention_streamed, rows, cols, kv, n_rep, hd, length, window)
    heads = head_layout(kv, n_rep, hd, cols)
    lt = -(-length // rows)
    q_tile, out_tile = lt * heads.q_width, lt * heads.o_width
    inputs = q_tile + lt * (heads.kv_width + heads.v_width)
    extra = out_tile + streamed_attention_numel(heads, lt)
    assert mesh.sram.peak_bytes == (inputs + extra) * DEVICE.storage_bytes


def _vector(cost: tuple[int, int, int], *, count: int, length: int) -> float:
    flops, sram, scalar = cost
    cycles = vector_op_cycles(
        DEVICE,
        num_instructions=count,
        length=length,
        flops_per_element=flops,
        sram_elements_per_element=sram,
    )
    return cycles + count * length * scalar * DEVICE.scalar_cycles_per_element


@pytest.mark.parametrize(("rows", "cols", "kv", "n_rep", "hd", "length", "window"), CASES)
def test_streamed_attention_charges_each_key_block_in_closed_form(
    rows, cols, kv, n_rep, hd, length, window
):
    args = (rows, cols, kv, n_rep, hd, length, window)
    _, _, ledger, _ = _run(prefill_attention_streamed, *args, mode=Mode.ESTIMATE)
    _, _, functional, _ = _run(prefill_attention_streamed, *args)
    assert ledger.expanded() == functional.expanded()
    heads = head_layout(kv, n_rep, hd, cols)
    g, n, h, lt = heads.kv_per_tile, heads.n_rep, heads.head_slots, -(-length // rows)
    hv = heads.value_slots
    r = g * n * lt  # query rows per core
    s = DEVICE.storage_bytes
    shared = max(heads.group_sizes) > 1
    senders = sum(size - 1 for size in heads.group_sizes)
    # per block: Q K^T and P V MACs, the owner's softmax of the block, the online update
    compute = (
        g * n * (matmul_cycles(DEVICE, m=lt, k=h, n=lt) + matmul_cycles(DEVICE, m=lt, k=lt, n=hv))
    )
    for cost in (SCALE, MASK_SELECT, MAX_ACC, EXP_SUB, SUM_ACC):
        compute += _vector(cost, count=r, length=lt)
    for cost in (MAX_ACC, EXP_SUB, SUM_ACC):
        compute += _vector(cost, count=1, length=r)
    compute += _vector(SCALE, count=r, length=hv)
    ring = g * (h + hv) * lt * s * rows * cols  # K and V one ring position
    reduce = r * lt * s * rows * senders if shared else 0  # every sender's partial, one hop
    steps = [rec for rec in ledger.expanded() if rec.op == "attn.step"]
    assert len(steps) == rows
    for rec in steps:
        assert rec.compute_cycles == pytest.approx(compute)
        assert rec.overhead_cycles == DEVICE.step_overhead_cycles
        bcast = rec.bytes_injected - ring - reduce
        # the multicast carries the block, the new max and the row sums: Lt + 2 per row
        assert bcast == (r * (lt + 2) * s * _sides(heads.group_sizes, rows) if shared else 0)
    middle, last = steps[:-1], steps[-1]
    assert all(rec.critical_stages == 0 for rec in middle)  # reduces streamed
    far = max(
        max(size - 1 - y * size // rows, y * size // rows)
        for size in heads.group_sizes
        for y in range(rows)
    )
    assert last.critical_stages == (far - 1 if shared and far > 1 else 0)
    tail = {
        rec.op: rec
        for rec in ledger.expanded()
        if rec.op.startswith("attn.") and rec.op != "attn.step"
    }
    assert tail["attn.reciprocal"].compute_cycles == pytest.approx(
        _vector(RECIPROCAL, count=1, length=r)
    )
    assert tail["attn.normalise"].compute_cycles == pytest.approx(
        _vector(NORMALISE, count=r, length=hv)
    )


def _sides(group_sizes: tuple[int, ...], rows: int) -> int:
    """Multicast streams of all rows: one per side of the owner that has columns."""
    return sum(
        int(y * size // rows > 0) + int(y * size // rows < size - 1)
        for size in group_sizes
        for y in range(rows)
    )
