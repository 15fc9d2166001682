"""The decode layer's attention at one step: walked on the window's tensors, or in estimate
mode from the sizes alone (`kernels.attention_cost`: the same records, SRAM buffers and routes,
tests/kernels/test_attention_cost.py). `decode_layer` (layers.py) picks one by the mesh's
mode; `decode_attention_walk` prices a window's attention alone (the estimate layer's oracle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from waferllm.kernels.attention import decode_attention
from waferllm.kernels.attention_cost import estimated_decode_attention
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.cost import Ledger
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode

if TYPE_CHECKING:
    from waferllm.model.layers import CacheStep

Attend = Callable[[Mesh, DistTensor, "CacheStep", int, HeadLayout, Ledger], DistTensor]


def _attention_walked(
    mesh: Mesh, q: DistTensor, cache: CacheStep, index: int, heads: HeadLayout, ledger: Ledger
) -> DistTensor:
    """Layer `index`'s attention at `cache`'s step, on the window's tensors."""
    k_cache, v_cache = cache.window(index)
    cache.charge_read(ledger)
    return decode_attention(
        mesh,
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        slot_mask=cache.slot_mask,
        heads=heads,
        ledger=ledger,
    )


def _attention_estimated(
    mesh: Mesh, q: DistTensor, cache: CacheStep, index: int, heads: HeadLayout, ledger: Ledger
) -> DistTensor:
    """`_attention_walked` in estimate mode from the sizes alone (the same records, SRAM and
    routes: tests/kernels/test_attention_cost.py)."""
    return estimated_decode_attention(
        mesh,
        q=q,
        heads=heads,
        batch=len(cache.seqs),
        width=cache.width,
        stored=cache.store.stored,
        ledger=ledger,
    )


ATTEND: dict[Mode, Attend] = {
    Mode.FUNCTIONAL: _attention_walked,
    Mode.ESTIMATE: _attention_estimated,
}


def decode_attention_walk(mesh: Mesh, cache: CacheStep) -> Ledger:
    """One layer's decode attention at `cache`'s step (the windows it reads), charged as
    `decode_layer` charges it, for the estimate layer; q is a placeholder of the real q's tile
    (SRAM was checked at the widest window by a full walk)."""
    heads, batch = cache.store.heads, len(cache.seqs)
    attn = Ledger()
    with mesh.sram.scope():
        q = mesh.register(
            torch.empty((*mesh.shape, batch, heads.q_width), device="meta"),
            Layout((batch, mesh.cols * heads.q_width), x_dim=1),
            "q",
        )
        k_cache, v_cache = cache.window(cache.store.layers[0])
        with attn.scope("layer"), attn.scope("attn"):
            cache.charge_read(attn)
            decode_attention(
                mesh,
                q=q,
                k_cache=k_cache,
                v_cache=v_cache,
                slot_mask=cache.slot_mask,
                heads=heads,
                ledger=attn,
            )
    return attn
