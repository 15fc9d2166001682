"""The virtual wafer: distributed tensors, communication primitives, the cost ledger, M/R checks.

Lower layers: `geometry` (pure index arithmetic), `ktree` (the K-tree's plan), `traffic` (the
message model), `patterns` (each primitive's traffic), `cost` (the ledger). `virtual.Mesh` ties
a device region to SRAM and route accounting; `comm` and `compute` are the primitives kernels
are written in (`charges` for data they move by index). `rings` and `relay` move GEMM tiles on
rings and relayed multicasts, `tiling` maps meshes to logical square grids, `relayout` prices
bulk moves between regions and plans. Only this package builds `Charge` and `Traffic`.
"""

from waferllm.mesh.comm import (
    ReduceAlgorithm,
    ReduceOp,
    allreduce,
    broadcast,
    reduce,
    ring_shift,
    shift,
)
from waferllm.mesh.comm_groups import segmented_allreduce
from waferllm.mesh.compute import elementwise, matmul, vector_op_cycles
from waferllm.mesh.cost import Charge, ChargeKind, Ledger, Record, Totals, UnpricedLedger
from waferllm.mesh.geometry import (
    Axis,
    RingKind,
    fanouts_from_groups,
    ring_order,
    ring_position,
    ring_successor,
)
from waferllm.mesh.ktree import TreePlan, best_fanouts, tree_plan
from waferllm.mesh.tensor import DistTensor, Layout
from waferllm.mesh.virtual import COMPUTE_DTYPES, Mesh, Mode, parse_grid

__all__ = [
    "COMPUTE_DTYPES",
    "Axis",
    "Charge",
    "ChargeKind",
    "DistTensor",
    "Layout",
    "Ledger",
    "Mesh",
    "Mode",
    "Record",
    "ReduceAlgorithm",
    "ReduceOp",
    "RingKind",
    "Totals",
    "TreePlan",
    "UnpricedLedger",
    "allreduce",
    "best_fanouts",
    "broadcast",
    "elementwise",
    "fanouts_from_groups",
    "matmul",
    "parse_grid",
    "reduce",
    "ring_order",
    "ring_position",
    "ring_shift",
    "ring_successor",
    "segmented_allreduce",
    "shift",
    "tree_plan",
    "vector_op_cycles",
]
