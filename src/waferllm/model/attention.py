"""Prefill attention of one layer as the plan schedules it: in passes of query heads, each
pass dense (every owned score block live) or key-streamed (one block live, online softmax).

The kernels are `kernels.attention` and `kernels.attention_stream`; the schedule comes from
`plan.ModelPlan.attention_schedule`, its SRAM from `scratch.prefill_scratch`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from waferllm.kernels.attention import attention_output_layout, prefill_attention
from waferllm.kernels.attention_stream import prefill_attention_streamed
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import split_sizes
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode


def prefill_attention_passes(
    mesh: Mesh,
    *,
    q: DistTensor,
    k: DistTensor,
    v: DistTensor,
    heads: HeadLayout,
    length: int,
    sliding_window: int | None,
    head_chunk: int,
    streamed: bool,
    ledger: Ledger,
) -> DistTensor:
    """Prefill attention in passes of `head_chunk` query heads per kv head (sizes within
    one), so that only one pass's scores are live (the public code's prefill is single-head:
    one score block per core). Each pass circulates K and V again. The passes' outputs fill
    one [L_y, o_x] buffer; estimate mode walks each distinct pass size once and repeats it.
    With `streamed` (the plan's choice when no pass size fits), each pass streams the key
    blocks through an online softmax (`prefill_attention_streamed`)."""
    rows, cols = mesh.shape
    sizes = split_sizes(heads.n_rep, -(-heads.n_rep // head_chunk))
    kernel = prefill_attention_streamed if streamed else prefill_attention

    def run(q_part: DistTensor, n: int, out_ledger: Ledger) -> DistTensor:
        return kernel(
            mesh,
            q=q_part,
            k=k,
            v=v,
            heads=dataclasses.replace(heads, n_rep=n),
            length=length,
            sliding_window=sliding_window,
            ledger=out_ledger,
        )

    if len(sizes) == 1:
        return run(q, heads.n_rep, ledger)
    lt, g, h, hv = q.tile_shape[0], heads.kv_per_tile, heads.head_slots, heads.value_slots
    q_heads = q.data.reshape(rows, cols, lt, g, heads.n_rep, h)
    out = q.data.new_zeros((rows, cols, lt, g, heads.n_rep, hv))
    key = mesh.sram.alloc("attn", lt * heads.o_width * mesh.device.storage_bytes)
    walked: set[int] = set()
    for start, n in zip(np.cumsum(sizes) - sizes, sizes, strict=True):
        n = int(n)
        if mesh.mode is Mode.ESTIMATE and n in walked:
            continue
        walked.add(n)
        part = q_heads[..., start : start + n, :].reshape(rows, cols, lt, g * n * h)
        layout = Layout((length, cols * g * n * h), y_dim=0, x_dim=1)
        q_part = DistTensor(part, layout, mesh, "q_pass", None)
        count = int((sizes == n).sum()) if mesh.mode is Mode.ESTIMATE else 1
        with ledger.repeat(count):
            o = run(q_part, n, ledger)
        if mesh.mode is Mode.FUNCTIONAL:
            out[..., start : start + n, :] = o.data.reshape(rows, cols, lt, g, n, hv)
        o.free()
    layout = attention_output_layout(q.layout, heads)
    return DistTensor(out.reshape(rows, cols, lt, heads.o_width), layout, mesh, "attn", key)
