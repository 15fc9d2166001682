"""The vocabulary ends of the model: token embedding in, final norm and LM head out, argmax.

The [D, V] table is placed by `placement.vocab_spec` (`[D_x, V_y]` in prefill, `[D_y, V_x]` in
decode) on the first region (embedding) and the last (LM head), the same tensor when tied; in
`per-layer` on regions of their own (`plan.build_phase`).
No decoder layers here (`layers.py`), no request state (`transformer.py`).
Legend: L tokens, D model dim, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from waferllm.device import Device
from waferllm.kernels import elementwise
from waferllm.kernels.gemv import meshgemv, pipeline_gemv
from waferllm.kernels.norm import rms_norm
from waferllm.mesh.comm import ReduceAlgorithm
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.relayout import hop
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import Mode
from waferllm.model.config import ModelConfig
from waferllm.model.layers import PREFILL_REDUCE
from waferllm.model.placement import Phase
from waferllm.model.plan import PhaseState


def embed(
    state: PhaseState,
    ids: Sequence[int],
    ledger: Ledger,
    *,
    config: ModelConfig,
    device: Device,
    tokens_axis: Axis | None,
) -> DistTensor:
    """Token ids -> hidden states on the first region (prefill [L_y, D_x], decode [B, D_y])."""
    mesh, table = state.embed_mesh, state.embed_view
    if mesh.mode is Mode.FUNCTIONAL:
        held = torch.tensor(list(ids), dtype=torch.int64)
    else:  # estimate mode reads only how many ids there are
        held = torch.empty((len(ids),), dtype=torch.int64, device="meta")
    with ledger.scope("embed"):
        out = elementwise.embed(
            mesh,
            ids=held,
            table=table,
            ledger=ledger,
            tokens_axis=tokens_axis,
        )
        if mesh is not state.meshes[0]:  # the embedding's own region (device: the widest)
            out = hop(mesh.device, out, state.meshes[0], ledger, op="to_first_region")
    return out


def lm_head(
    state: PhaseState, x: DistTensor, ledger: Ledger, *, config: ModelConfig, axis: Axis
) -> DistTensor:
    """Final norm and the LM head GEMV on the last hidden state `x` (freed). Decode reduces
    along Y with the K-tree like every decode GEMV; prefill reduces along X by the chain to
    the middle column, whose routes its layers already hold (SPEC.md §10.7). `x` hops to the
    head's region first when that is not the last layer's (`per-layer`)."""
    if x.mesh is not state.head_mesh:
        x = hop(state.head_mesh.device, x, state.head_mesh, ledger, op="to_head_region")
    mesh = x.mesh
    prefill = state.phase is Phase.PREFILL
    h = rms_norm(
        mesh,
        x=x,
        weight=state.final_norm,
        ledger=ledger,
        eps=config.rms_norm_eps,
        op="final_norm",
        algorithm=PREFILL_REDUCE if prefill else ReduceAlgorithm.KTREE,
    )
    x.free()
    gemv = pipeline_gemv if prefill else meshgemv
    logits = gemv(mesh, x=h, w=state.lm_head, ledger=ledger, reduce_axis=axis, op="lm_head")
    h.free()
    return logits.out


def argmax_tokens(logits: DistTensor, ledger: Ledger, *, algorithm: ReduceAlgorithm) -> list[int]:
    """On-mesh argmax of logits [V] or [B, V], one token per row to the host (0s in estimate
    mode, which has no numbers).
    Prefill's logits are split along Y: its argmax uses the Y ring the MeshGEMMs configured,
    keeping the prefill program within its route budget."""
    mesh = logits.mesh
    ids = elementwise.argmax(mesh, logits=logits, ledger=ledger, algorithm=algorithm)
    count = math.prod(ids.layout.shape)
    if mesh.mode is Mode.FUNCTIONAL:
        token = mesh.gather(ids, ledger=ledger)
        ids.free()
        return [int(t) for t in token.reshape(-1)]
    # estimate mode: the gather's host I/O charge alone (its meta tiles are never read)
    mesh.charge_host_io(ledger, f"gather.{ids.name}", count)
    ids.free()
    return [0] * count
