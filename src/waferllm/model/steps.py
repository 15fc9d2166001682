"""What the model's calls hand back and keep: `StepOutput` (one sequence's selected token and
its logits handle), `DecodeRecords` (a decode step's ledgers kept apart for the estimate
layer), `SeqState` (one sequence of the batch in flight), `Uncharged` (the ledger of layers
whose cost is the walked layer's) and the logits' finiteness check. No walks here: the prefill
walk is in `prefill.py`/`chunked.py`, the decode step in `decode.py`.
"""

from __future__ import annotations

import dataclasses

import torch

from waferllm.errors import NonFiniteError
from waferllm.mesh.cost import Ledger, UnpricedLedger
from waferllm.mesh.tensor import DistTensor
from waferllm.model.kv_cache import RowCounts
from waferllm.model.layers import LayerLedgers


@dataclasses.dataclass(frozen=True, eq=False)
class StepOutput:
    """One model call's result: `token` is the on-mesh argmax of the last position's logits
    (0 in estimate mode, which has no numbers); `position` is how many tokens the model has
    now seen. `fetch_logits` brings the logits [V] to the host, charged as host I/O."""

    token: int
    position: int
    logits: DistTensor  # [V] after a prefill, [B, V] after a decode step of B sequences
    row: int = 0  # this sequence's row of a decode step's logits

    def fetch_logits(self, ledger: Ledger) -> torch.Tensor:
        values = self.logits.mesh.gather(self.logits, ledger=ledger).float()
        return values[self.row] if values.dim() == 2 else values


@dataclasses.dataclass(eq=False, kw_only=True)
class SeqState:
    """One sequence of the batch in flight: its prompt, its share of the KV slots per row, its
    prompt's prefill chunks and, once its prompt's KV is in its decode rows, its per-row
    counts."""

    prompt_len: int
    slots: int
    chunk_tokens: int | None = None  # None: the prompt was prefilled in one piece
    counts: RowCounts | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class DecodeRecords:
    """One decode step's ledgers kept apart: `before` the layers (the token in, embedding,
    region hops, RoPE tables), one layer's (`layer`) and its KV shift (`kv`), `after` the
    layers (final norm, LM head, argmax). The step's ledger is before, layer and kv times
    the layer count, after."""

    before: Ledger
    layer: LayerLedgers
    kv: Ledger
    after: Ledger


class Uncharged(UnpricedLedger):
    """A ledger that keeps and prices nothing, for the layers whose cost is the walked layer's
    (the same shapes on the same grid): functional runs compute every layer but price one.
    Routes and SRAM are still checked."""


def check_finite(logits: DistTensor, labels: list[str]) -> None:
    """Stop with a clear error when the logits behind the next token hold NaN or inf (the
    argmax of such logits is meaningless); float16 compute names the likely cause."""
    values = logits.mesh.gather(logits)  # host copy, uncharged: a check, not a transfer
    finite = torch.isfinite(values).reshape(len(labels), -1).all(dim=1)
    if bool(finite.all()):
        return
    step = labels[int((~finite).nonzero()[0, 0])]
    dtype = logits.mesh.compute_dtype
    cause = (
        f"{dtype} overflow: values beyond the float16 range (+-65504); use dtype float32"
        if dtype in (torch.float16, torch.bfloat16)
        else "check the checkpoint's weights for NaN, inf or huge values"
    )
    raise NonFiniteError(f"the logits of {step} hold NaN or inf; {cause}")
