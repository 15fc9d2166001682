"""Dequantisation costs in closed form (kernels/dequant.py) and where the kernels charge them:
a compressed GEMV weight, a compressed MeshGEMM B (its shifts at the stored size), a
compressed KV cache's reads and writes."""

from __future__ import annotations

import math

import pytest
import torch

from waferllm.device import wse2
from waferllm.kernels.dequant import dequant_cycles
from waferllm.kernels.gemm import align_a, meshgemm, prealign_b
from waferllm.kernels.gemv import meshgemv
from waferllm.mesh.cost import Ledger
from waferllm.mesh.geometry import Axis
from waferllm.mesh.storage import StoredDtype
from waferllm.mesh.tensor import Layout
from waferllm.mesh.virtual import Mesh, Mode

INSTRUCTIONS = {"int8": 2, "int4": 4}  # unpack (1 or 3) + the scale multiply


def _closed_form(device, dtype: str, kt: int, nt: int) -> float:
    """ceil(Kt/32) groups x instructions x max(floor, n*2/F, n*2*2/S), n = min(Kt, 32)*Nt."""
    n = min(kt, 32) * nt
    per = max(
        device.vector_instr_floor_cycles,
        n * 2 / device.flops_per_cycle_per_core,
        n * 2 * 2 / device.sram_bytes_per_cycle,
    )
    return math.ceil(kt / 32) * INSTRUCTIONS[dtype] * per


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize(("kt", "nt"), [(7, 11), (32, 64), (100, 300)])
def test_dequant_cycles_follow_the_closed_form(dtype, kt, nt):
    device = wse2()
    got = dequant_cycles(device, StoredDtype(dtype), reduced=kt, other=nt)
    assert got == pytest.approx(_closed_form(device, dtype, kt, nt), rel=1e-12)
    assert dequant_cycles(device, StoredDtype.FLOAT16, reduced=kt, other=nt) == 0.0


def _gemv_ledger(dtype: StoredDtype, mode: Mode) -> Ledger:
    mesh = Mesh(wse2(), 3, 4, mode=mode)
    k, n = 90, 200  # tiles [30, 50]
    host_x = torch.randn(k) if mode is Mode.FUNCTIONAL else torch.empty(k, device="meta")
    host_w = torch.randn(k, n) if mode is Mode.FUNCTIONAL else torch.empty(k, n, device="meta")
    x = mesh.scatter(host_x, Layout((k,), y_dim=0), "x")
    w = mesh.scatter(host_w, Layout((k, n), y_dim=0, x_dim=1), "w", stored=dtype)
    ledger = Ledger()
    meshgemv(mesh, x=x, w=w, ledger=ledger, reduce_axis=Axis.Y, op="g")
    return ledger


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_compressed_gemv_weight_adds_one_dequant_record_and_changes_nothing_else(dtype):
    plain = _gemv_ledger(StoredDtype.FLOAT16, Mode.ESTIMATE)
    for mode in (Mode.ESTIMATE, Mode.FUNCTIONAL):
        packed = _gemv_ledger(StoredDtype(dtype), mode)
        extra = [r for r in packed.expanded() if r.op.endswith("dequant")]
        assert len(extra) == 1
        assert extra[0].compute_cycles == pytest.approx(_closed_form(wse2(), dtype, 30, 50))
        assert extra[0].overhead_cycles == 0 and extra[0].flops == 0
        rest = [r for r in packed.expanded() if not r.op.endswith("dequant")]
        assert rest == plain.expanded()


def _gemm_ledger(dtype: StoredDtype) -> Ledger:
    mesh = Mesh(wse2(), 4, 4, mode=Mode.ESTIMATE)
    m, k, n = 32, 256, 128  # b tiles [64, 32]
    a = mesh.scatter(torch.empty(m, k, device="meta"), Layout((m, k), y_dim=0, x_dim=1), "a")
    b = prealign_b(mesh, torch.empty(k, n, device="meta"), name="b", stored=dtype)
    ledger = Ledger()
    a = align_a(mesh, a=a, ledger=Ledger()).out
    meshgemm(mesh, a=a, b=b, ledger=ledger, op="mm")
    return ledger


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_compressed_meshgemm_weight_moves_at_its_stored_size_and_dequantises_every_step(dtype):
    plain, packed = _gemm_ledger(StoredDtype.FLOAT16), _gemm_ledger(StoredDtype(dtype))
    # per step: a [8, 64] f16 tile and b [64, 32] as stored (codes + 2 scales per column)
    bits = {"int8": 8, "int4": 4}[dtype]
    b_stored = 64 * 32 * bits // 8 + 2 * 2 * 32
    steps = 4
    sent = packed.totals().bytes_injected - plain.totals().bytes_injected
    assert sent == steps * 16 * (b_stored - 64 * 32 * 2)  # 16 cores each send one b tile
    dequant = _closed_form(wse2(), dtype, 64, 32)
    assert packed.totals().compute_cycles > plain.totals().compute_cycles
    step_records = [r for r in packed.expanded() if r.op.endswith("step")]
    plain_steps = [r for r in plain.expanded() if r.op.endswith("step")]
    assert len(step_records) == len(plain_steps) == steps
    for ours, theirs in zip(step_records, plain_steps, strict=True):
        assert ours.compute_cycles == pytest.approx(theirs.compute_cycles + dequant)
