"""The prefill walk of one whole prompt and what every prefill shares: the hop between regions,
the head (final norm, LM head for the last position), estimate mode's kept k/v and the k/v's
checkpoint order at the hand-off.

`prefill_walk` runs a prompt the plan holds at once through every region; a longer one runs in
chunks (`chunked.py`). Selecting the token and the hand-off to decode are `transformer.py`'s.
Legend: L prompt tokens, D model dim, V vocab; R x C the prefill grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from waferllm.device import Device
from waferllm.kernels.attention_chunked import KeyChunk
from waferllm.kernels.heads import HeadLayout
from waferllm.mesh.comm import broadcast
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.meta import meta_empty
from waferllm.mesh.relayout import hop
from waferllm.mesh.system_link import system_link_hop
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model import vocab
from waferllm.model.layers import LayerContext, charge_rope_tables, prefill_layer, rope_tables
from waferllm.model.placement import heads_for
from waferllm.model.plan import PhaseState
from waferllm.model.steps import Uncharged
from waferllm.model.transfers import per_layer_hops

if TYPE_CHECKING:
    from waferllm.model.transformer import MeshTransformer


def prefill_walk(
    model: MeshTransformer, ids: list[int], ledger: Ledger
) -> tuple[DistTensor, dict[int, list[KeyChunk]]]:
    """The prompt through every region: (hidden states [L_y, D_x], every layer's k/v as one
    chunk). The first layer is priced and its records extended by the layer count; estimate
    mode walks each region's last layer only, after placing the others' k/v (the region's
    SRAM peak): they cost the same; without `walk_every_region`, the first region's only."""
    length, config, state = len(ids), model.config, model.prefill_state
    state.meshes[0].charge_host_io(ledger, "host.prompt_in", length)
    x = vocab.embed(state, ids, ledger, config=config, device=model.device, tokens_axis=Axis.Y)
    kv: dict[int, list[KeyChunk]] = {}
    layer_ledger = Ledger()
    for r, region in enumerate(state.regions.regions):
        mesh = state.meshes[r]
        if r:
            x = enter_region(model.device, state, r, x, ledger)
        heads = heads_for(config, mesh.cols)
        charge_rope_tables(mesh, heads, x.tile_shape[0], ledger)
        cos, sin = rope_tables(
            mesh, heads, model.inv_freq, torch.arange(length), tokens_axis=Axis.Y
        )
        ctx = LayerContext(
            config=config,
            heads=heads,
            cos=cos,
            sin=sin,
            length=length,
            head_chunk=model.plan.attention_chunk(length),
            streamed=model.plan.attention_streamed(length),
        )
        walked = region.layers
        if model.mode is Mode.ESTIMATE:
            walked = region.layers[-1:] if r == 0 or model.walk_every_region else region.layers[:0]
            placed = region.layers[: len(region.layers) - len(walked)]
            kept = kept_kv(mesh, heads, start=0, length=length, layers=placed)
            for i, chunk in zip(placed, kept, strict=True):
                kv[i] = [chunk]
        for j, i in enumerate(walked):
            target = layer_ledger if (r, j) == (0, 0) else Uncharged()
            with target.scope("layer"):
                x, k, v = prefill_layer(mesh, state.layers[i], x, ctx, target)
            kv[i] = [KeyChunk(k=k, v=v, start=0, length=length)]
        cos.free()
        sin.free()
    ledger.extend(layer_ledger, count=config.num_hidden_layers)
    per_layer_hops(model.plan, x, ledger)
    return x, kv


def enter_region(
    device: Device, state: PhaseState, r: int, x: DistTensor, ledger: Ledger
) -> DistTensor:
    """The residual stream from region r-1 to region r: an on-wafer hop, or the
    inter-system link where region r starts the next device."""
    regions = state.regions.regions
    if regions[r].device != regions[r - 1].device:
        return system_link_hop(device, x, state.meshes[r], ledger, op=f"hop{r}")
    return hop(device, x, state.meshes[r], ledger, op=f"hop{r}")


def prefill_logits(
    model: MeshTransformer, x: DistTensor, length: int, ledger: Ledger
) -> DistTensor:
    """Final norm and LM head for the last of x's `length` positions (`[D_x, V_y]`
    placement): the logits [V] (x is freed)."""
    mesh, config = x.mesh, model.config
    lt = x.tile_shape[0]
    row, i = divmod(length - 1, lt)
    last = x.data[:, :, i, :]  # (R, C, Dt): the last token's row, valid on `row`
    with ledger.scope("head"):
        last = broadcast(mesh, last, axis=Axis.Y, root=row, ledger=ledger, op="last_token")
        h = mesh.register(last.contiguous(), Layout((config.hidden_size,), x_dim=0), "last_hidden")
        x.free()
        return vocab.lm_head(model.prefill_state, h, ledger, config=config, axis=Axis.X)


def kept_kv(
    mesh: Mesh, heads: HeadLayout, *, start: int, length: int, layers: Sequence[int]
) -> list[KeyChunk]:
    """Estimate mode: each of `layers`' prefill k [L_y, kv_x] and v [L_y, v_x] for positions
    start .. start + length - 1 (named `prefill.k{i}`, `prefill.v{i}`), SRAM charged in layer
    order. Their tiles are meta tensors: one k and one v tile shared by every layer (only
    their shapes are ever read)."""
    tiles = []
    for width in (heads.kv_width, heads.v_width):
        layout = Layout((length, heads.num_cols * width), y_dim=0, x_dim=1)
        shape = (*mesh.shape, *layout.tile_shape(*mesh.shape))
        tiles.append((layout, meta_empty(shape)))
    (k_layout, k_tile), (v_layout, v_tile) = tiles
    return [
        KeyChunk(
            k=mesh.register(k_tile, k_layout, f"prefill.k{i}"),
            v=mesh.register(v_tile, v_layout, f"prefill.v{i}"),
            start=start,
            length=length,
        )
        for i in layers
    ]


def logical_kv(t: DistTensor, index: np.ndarray) -> torch.Tensor:
    """Prefill k [L_y, (C*G*H)_x] or v [L_y, (C*G*Hv)_x] -> [L, Hkv*hd] in the checkpoint's
    feature order; `index` its slots' features (`HeadLayout.kv_index`, `v_index`)."""
    joined = t.mesh.gather(t)  # [L, C*G*H] in the heads' slot order
    out = joined.new_zeros(joined.shape[0], int(index.max()) + 1)
    real = np.flatnonzero(index >= 0)
    out[:, torch.as_tensor(index[real])] = joined[:, torch.as_tensor(real)]
    return out
