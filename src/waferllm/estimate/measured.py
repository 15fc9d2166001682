"""The decoder layer PAPER.md §3.3's rows measured, for calibrating like with like.

The public code (code notes §3.1, §4, §7.1; PAPER.md §5) runs one attention head over the
whole hidden size: one softmax per token, its score reductions spanning whole rows, and its
decode allreduces use each config's `group_num` rather than the model's fastest tree. The model
runs the real heads and trees; the calibration compares the published rows with the layer as
measured.
Its numerical bugs (code notes §7 items 7-11, e.g. SiLU on dim/P entries) are not modelled:
the notes class them as affecting numerics, not timing. Predictions never use this module.
"""

from __future__ import annotations

import dataclasses

from waferllm.device import Device
from waferllm.errors import WaferError
from waferllm.kernels.gemv import best_ktree_fanouts
from waferllm.mesh.cost import Ledger
from waferllm.mesh.ktree import allreduce_latency_cycles
from waferllm.model.config import ModelConfig

# `group_num` of the public code's LLaMA3-8B decode configs by grid side (code notes §3.1): the
# K = 2 tree the published decode rows ran, P / group_num cores per first-level group
DECODE_GROUP_NUM = {
    240: 15,
    256: 16,
    300: 15,
    360: 18,
    420: 20,
    480: 20,
    512: 32,
    540: 20,
    600: 24,
    660: 22,
    720: 24,
}


def single_head(config: ModelConfig) -> ModelConfig:
    """`config` as the public code configures it: n_heads = n_kv_heads = 1 and head_dim =
    hidden size (code notes §3.1), named `<name>-single-head`."""
    return dataclasses.replace(
        config,
        name=f"{config.name}-single-head",
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=config.hidden_size,
    )


def code_tree_extra_cycles(device: Device, side: int) -> float:
    """Latency of one allreduce over `side` cores on the public code's tree (`DECODE_GROUP_NUM`)
    less that on the model's default tree (>= 0: the default is the fastest K = 2 tree). The
    size terms are the same on both trees (each link carries each stream once)."""
    if side not in DECODE_GROUP_NUM:
        raise WaferError(f"the public code has no decode config for a {side}x{side} grid")
    alpha, beta = device.hop_latency_cycles, device.stage_latency_cycles
    groups = DECODE_GROUP_NUM[side]
    code = allreduce_latency_cycles(side, (side // groups, groups), alpha, beta)
    return code - allreduce_latency_cycles(side, best_ktree_fanouts(device, side), alpha, beta)


def as_run_decode_cycles(ledger: Ledger, device: Device, side: int) -> float:
    """A decode step of the measured layer on a side x side grid (its estimate-mode ledger) as
    the public code ran it: every decoder layer's allreduce moved onto the code's tree."""
    allreduces = sum(
        r.count for r in ledger.records if r.op.startswith("layer/") and r.op.endswith(".reduce")
    )
    return ledger.totals().latency_cycles + allreduces * code_tree_extra_cycles(device, side)
