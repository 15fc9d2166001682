"""Compressed weights and KV cache: the numerics (SPEC.md §10.2).

Symmetric integer codes with one float16 scale per group of 32 along the reduced axis:
scale = float16(max |x| / qmax) per group, code = clamp(round(x / scale), -qmax, qmax),
value = code * scale (exact in float32). The checkpoint is quantised once at load, grouped
along each matrix's input dimension in the checkpoint's order (HF `[out, in]`: the axis every
matmul reduces), so the prefill and decode plans and any grid hold the same values, and
transformers can run the very same dequantised weights (`dequantised_state_dict`). The mesh's
tiles hold those values in the compute dtype; SRAM, links and the ledger count the stored
codes and scales (`mesh.storage`), the dequantisation per use is priced in `kernels.dequant`.
A token's k and v are quantised when written to the cache, per kv head in groups of 32 head-dim
slots of a core's tile. No byte counts or costs here.
"""

from __future__ import annotations

import dataclasses

import torch

from waferllm.errors import WaferError
from waferllm.mesh.storage import GROUP_SIZE, StoredDtype, parse_stored_dtype
from waferllm.model.weights import LayerWeights, ModelWeights

QMAX = {StoredDtype.INT8: 127, StoredDtype.INT4: 7}  # symmetric code range [-qmax, qmax]
FLOAT16_MAX = 65504.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Storage:
    """How the model's weights (every matrix: projections, embedding, LM head; norms and
    biases stay in the storage dtype) and its KV cache are stored on the device."""

    weights: StoredDtype = StoredDtype.FLOAT16
    kv: StoredDtype = StoredDtype.FLOAT16

    @classmethod
    def of(cls, weight_dtype: str | StoredDtype, kv_dtype: str | StoredDtype) -> Storage:
        return cls(
            weights=parse_stored_dtype(weight_dtype, what="weight_dtype"),
            kv=parse_stored_dtype(kv_dtype, what="kv_dtype"),
        )


UNCOMPRESSED = Storage()  # weights and KV cache in the device's storage dtype


def fake_quantise(x: torch.Tensor, dtype: StoredDtype) -> torch.Tensor:
    """x quantised to `dtype` along its last dim in groups of 32 and dequantised, float32
    (the values the device computes with); x itself (as float32) for the storage dtype."""
    if not dtype.compressed:
        return x.float()
    qmax = QMAX[dtype]
    width = x.shape[-1]
    groups = -(-width // GROUP_SIZE)
    pad = groups * GROUP_SIZE - width
    padded = torch.nn.functional.pad(x.float(), (0, pad))
    grouped = padded.reshape(*x.shape[:-1], groups, GROUP_SIZE)
    amax = grouped.abs().amax(dim=-1, keepdim=True)
    if bool((amax / qmax > FLOAT16_MAX).any()):
        raise WaferError(
            f"a value of magnitude {float(amax.max()):.3g} needs a scale beyond the float16 "
            f"range; it cannot be stored as {dtype.value}"
        )
    scale = (amax / qmax).to(torch.float16).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(grouped / safe), -qmax, qmax)
    values = torch.where(scale > 0, codes * scale, torch.zeros_like(codes))
    return values.reshape(*x.shape[:-1], groups * GROUP_SIZE)[..., :width]


def quantise_weights(weights: ModelWeights, dtype: StoredDtype) -> ModelWeights:
    """The checkpoint's matrices (every 2-D tensor) quantised and dequantised in their own
    dtype; norms and biases unchanged. A tied table is quantised once, for both uses."""
    if not dtype.compressed:
        return weights

    def q(t: torch.Tensor) -> torch.Tensor:
        return fake_quantise(t, dtype).to(t.dtype) if t.dim() == 2 else t

    embed = q(weights.embed)
    tied = weights.lm_head is weights.embed
    return dataclasses.replace(
        weights,
        embed=embed,
        layers=tuple(
            LayerWeights({k: q(t) for k, t in layer.tensors.items()}) for layer in weights.layers
        ),
        lm_head=embed if tied else q(weights.lm_head),
    )


def dequantised_state_dict(
    state: dict[str, torch.Tensor], dtype: str | StoredDtype
) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict with the weights waferllm runs for `dtype`: every 2-D tensor
    (`[out, in]` matrices, `[V, D]` tables) quantised along its last dim, the rest unchanged;
    load it into the transformers model to get the oracle of a compressed run."""
    stored = parse_stored_dtype(dtype, what="weight_dtype")
    return {
        name: fake_quantise(t, stored).to(t.dtype) if t.dim() == 2 else t
        for name, t in state.items()
    }


def quantise_kv_tile(tile: torch.Tensor, dtype: StoredDtype) -> torch.Tensor:
    """A token's k or v tiles (R, C, G, H) as the cache stores them: per core and kv head,
    groups of 32 head-dim slots; in the tile's own dtype."""
    if not dtype.compressed:
        return tile
    return fake_quantise(tile, dtype).to(tile.dtype)


__all__ = [
    "UNCOMPRESSED",
    "Storage",
    "dequantised_state_dict",
    "fake_quantise",
    "quantise_kv_tile",
    "quantise_weights",
]
