"""The layer PAPER.md §3.3's rows measured (estimate/measured.py): one head, the code's trees."""

from __future__ import annotations

import pytest

from waferllm.device import wse2
from waferllm.errors import WaferError
from waferllm.estimate.measured import (
    DECODE_GROUP_NUM,
    as_run_decode_cycles,
    code_tree_extra_cycles,
    single_head,
)
from waferllm.kernels.gemv import best_ktree_fanouts
from waferllm.mesh.cost import Ledger, Record
from waferllm.mesh.ktree import allreduce_latency_cycles, tree_plan
from waferllm.model.config_sources import load_config


@pytest.mark.parametrize(("side", "root"), [(420, 220), (540, 283), (660, 345), (720, 375)])
def test_the_code_trees_have_their_final_root_where_the_code_notes_put_it(side, root):
    # code notes §3.1: R2 = (group_num / 2) * g + g / 2 with g = P / group_num
    groups = DECODE_GROUP_NUM[side]
    d = wse2()
    plan = tree_plan(side, (side // groups, groups), d.hop_latency_cycles, d.stage_latency_cycles)
    assert plan.root == root


@pytest.mark.parametrize("side", sorted(DECODE_GROUP_NUM))
def test_the_code_tree_costs_its_latency_less_the_default_trees(side):
    d = wse2()
    a, b = d.hop_latency_cycles, d.stage_latency_cycles
    groups = DECODE_GROUP_NUM[side]
    want = allreduce_latency_cycles(side, (side // groups, groups), a, b)
    want -= allreduce_latency_cycles(side, best_ktree_fanouts(d, side), a, b)
    assert code_tree_extra_cycles(d, side) == pytest.approx(want)
    assert code_tree_extra_cycles(d, side) >= 0  # the default is the fastest K = 2 tree


def test_a_grid_the_code_never_ran_is_refused():
    with pytest.raises(WaferError, match="no decode config"):
        code_tree_extra_cycles(wse2(), 421)


def test_a_step_as_run_adds_the_tree_difference_once_per_decoder_layer_allreduce():
    ledger = Ledger()
    ledger.records += [
        Record(op="head/lm_head.allreduce.reduce", comm_cycles=100.0),
        Record(op="layer/qkv.allreduce.reduce", count=32, comm_cycles=400.0),
        Record(op="layer/qkv.allreduce.bcast", count=32, comm_cycles=200.0),
        Record(op="layer/o_proj.allreduce.reduce", count=32, comm_cycles=390.0),
        Record(op="layer/o_proj.local", count=32, compute_cycles=90.0),
    ]
    extra = code_tree_extra_cycles(wse2(), 420)
    want = ledger.totals().latency_cycles + 64 * extra
    assert as_run_decode_cycles(ledger, wse2(), 420) == pytest.approx(want)


def test_the_measured_layer_has_one_head_over_the_hidden_size():
    cfg = single_head(load_config("llama3-8b"))
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (1, 1, 4096)
