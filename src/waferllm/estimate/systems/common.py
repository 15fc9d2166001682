"""What the baselines' layer plans share: the model's per-layer shapes, meta tensors on an
estimate-mode mesh, the layer's resident bytes (striped over the region), WaferLLM-style
elementwise charges, and each plan's result (`PhaseLedger`). No plan lives here.
Legend: L prompt tokens, S cached positions, D hidden, F FFN, H heads, Hd head dim, V vocab.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from waferllm.device import Device
from waferllm.mesh.compute import elementwise
from waferllm.mesh.cost import Ledger, PhaseLedger, RegionPeak
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import Mesh, Mode
from waferllm.model.config import ModelConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerShapes:
    """One decoder layer's dims."""

    d: int
    q: int
    kv: int
    f: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int

    @classmethod
    def of(cls, config: ModelConfig) -> LayerShapes:
        return cls(
            d=config.hidden_size,
            q=config.q_size,
            kv=config.kv_size,
            f=config.intermediate_size,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            vocab=config.vocab_size,
            layers=config.num_hidden_layers,
        )

    def projections(self, tokens: int) -> tuple[tuple[str, int, int, int], ...]:
        """(name, M, K, N) of the layer's seven projections for `tokens` rows."""
        d, q, kv, f = self.d, self.q, self.kv, self.f
        return (
            ("q_proj", tokens, d, q),
            ("k_proj", tokens, d, kv),
            ("v_proj", tokens, d, kv),
            ("o_proj", tokens, q, d),
            ("gate_proj", tokens, d, f),
            ("up_proj", tokens, d, f),
            ("down_proj", tokens, f, d),
        )

    def layer_elements(self, context: int) -> int:
        """Weights and the KV cache of `context` positions of one layer."""
        d = self.d
        return 2 * d * self.q + 2 * d * self.kv + 3 * d * self.f + 2 * d + 2 * context * self.kv


def estimate_mesh(device: Device, grid: tuple[int, int]) -> Mesh:
    return Mesh(device, grid[0], grid[1], mode=Mode.ESTIMATE)


def meta(
    mesh: Mesh,
    shape: tuple[int, ...],
    name: str,
    *,
    y_dim: int | None = None,
    x_dim: int | None = None,
) -> DistTensor:
    """A shape-only distributed tensor registered on `mesh` (its SRAM counted)."""
    layout = Layout(shape, y_dim=y_dim, x_dim=x_dim)
    return mesh.scatter(torch.empty(shape, device="meta"), layout, name)


def meta_tiles(mesh: Mesh, numel_per_core: int) -> torch.Tensor:
    """Shape-only per-core data of `numel_per_core` elements (for primitives)."""
    return torch.empty((mesh.rows, mesh.cols, max(numel_per_core, 1)), device="meta")


def hold_resident(mesh: Mesh, shapes: LayerShapes, context: int) -> None:
    """The layer's weights and KV cache striped evenly over `mesh` (both baselines keep one
    layer's tensors spread over its region: the paper's per-layer method)."""
    per_core = math.ceil(shapes.layer_elements(context) / mesh.num_cores)
    mesh.sram.alloc("resident", per_core * mesh.device.storage_bytes)


def charge_elementwise(
    mesh: Mesh, *, numel_per_core: int, ledger: Ledger, op: str, inputs: int = 1
) -> None:
    """A WaferLLM-style vector op over every core's tile (residual add, SiLU*mul, RoPE, exp)."""
    data = [meta_tiles(mesh, numel_per_core)] * inputs
    elementwise(mesh, lambda *xs: xs[0], *data, ledger=ledger, op=op)


def plan_cost(ledger: Ledger, meshes: list[Mesh]) -> PhaseLedger:
    return PhaseLedger(
        ledger=ledger,
        regions=tuple(
            RegionPeak(bytes_per_core=m.sram.peak_bytes, cores=m.num_cores) for m in meshes
        ),
        routes_per_core=max(m.routes.routes_per_core for m in meshes),
    )
