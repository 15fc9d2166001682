"""Local compute: per-core results equal the dense ones; cycles follow the per-core roofline
with its per-instruction floor (SPEC.md §3)."""

from __future__ import annotations

import pytest
import torch

from waferllm.device import with_overrides
from waferllm.mesh import Ledger, Mesh, Mode, elementwise, matmul, vector_op_cycles

from .spy import device as tiny  # F = 8, S = 12, floor = 10 pinned


def test_matmul_multiplies_every_cores_tiles_and_accumulates():
    mesh = Mesh(tiny(), 2, 3)
    a, b, c = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6), torch.randn(2, 3, 4, 6)
    out = matmul(mesh, a=a, b=b, ledger=Ledger(), op="mm", accumulate=c)
    assert torch.allclose(out, c + torch.einsum("yxmk,yxkn->yxmn", a, b), atol=1e-5)


@pytest.mark.parametrize(("m", "k", "n"), [(16, 3, 5), (8, 2, 2), (64, 1, 1), (1, 4, 4)])
def test_a_gemm_tile_costs_k_n_instructions_of_length_m_at_the_roofline_or_the_floor(m, k, n):
    """Each multiply-accumulate element: 2 FLOP and 3 storage elements through SRAM (read the
    accumulator and one operand, write the accumulator). Per instruction of length m:
    max(floor, 2m / F, 3 * 2 bytes * m / S) with F = 8, S = 12, floor = 10."""
    mesh = Mesh(tiny(), 2, 2)
    ledger = Ledger()
    matmul(mesh, a=torch.ones(2, 2, m, k), b=torch.ones(2, 2, k, n), ledger=ledger, op="mm")
    (record,) = ledger.records
    assert record.compute_cycles == k * n * max(10.0, 2 * m / 8, 6 * m / 12)
    assert record.flops == 2 * m * k * n * 4  # every core of the 2x2 mesh


def test_a_gemv_issues_m_k_instructions_of_length_n():
    mesh = Mesh(tiny(), 1, 1)
    ledger = Ledger()
    matmul(
        mesh, a=torch.ones(1, 1, 3, 4), b=torch.ones(1, 1, 4, 40), ledger=ledger, op="v", vector="n"
    )
    assert ledger.records[0].compute_cycles == 3 * 4 * max(10.0, 2 * 40 / 8, 6 * 40 / 12)


def test_batched_tiles_repeat_the_cost_per_batch_entry():
    mesh = Mesh(tiny(), 1, 2)
    ledger = Ledger()
    matmul(mesh, a=torch.ones(1, 2, 3, 16, 2), b=torch.ones(1, 2, 3, 2, 2), ledger=ledger, op="mm")
    assert ledger.records[0].compute_cycles == 3 * 2 * 2 * max(10.0, 32 / 8, 96 / 12)


def test_a_faster_sram_makes_long_vectors_compute_bound():
    device = with_overrides(tiny(), {"sram_bytes_per_cycle": 1000, "vector_instr_floor_cycles": 0})
    cycles = vector_op_cycles(
        device, num_instructions=2, length=64, flops_per_element=2, sram_elements_per_element=3
    )
    assert cycles == 2 * 64 * 2 / 8


def test_elementwise_reads_every_input_and_writes_the_output_once():
    mesh = Mesh(tiny(), 2, 2)
    ledger = Ledger()
    x, y = torch.randn(2, 2, 40), torch.randn(2, 2, 40)
    out = elementwise(mesh, torch.add, x, y, ledger=ledger, op="add")
    assert torch.equal(out, x + y)
    # 40 elements, 1 FLOP each, 3 storage elements through SRAM: max(10, 40/8, 3*2*40/12)
    assert ledger.records[0].compute_cycles == 20.0
    assert ledger.records[0].flops == 40 * 4


def test_float16_accumulates_in_float32_unless_the_hardware_order_is_asked_for():
    torch.manual_seed(0)
    a, b = torch.randn(1, 1, 8, 512), torch.randn(1, 1, 512, 8)
    exact = (a.double() @ b.double()).float()
    errors = {}
    for f16_accumulate in (False, True):
        mesh = Mesh(tiny(), 1, 1, compute_dtype=torch.float16, f16_accumulate=f16_accumulate)
        out = matmul(mesh, a=a.half(), b=b.half(), ledger=Ledger(), op="mm")
        assert out.dtype == torch.float16
        errors[f16_accumulate] = (out.float() - exact).abs().max().item()
    assert errors[False] < errors[True]
    assert errors[False] < 2e-2 * exact.abs().max().item()


def test_estimate_mode_prices_a_matmul_without_numbers():
    ledgers = []
    for mode in Mode:
        mesh = Mesh(tiny(), 2, 2, mode=mode)
        ledger = Ledger()
        out = matmul(
            mesh,
            a=torch.ones(2, 2, 4, 5, device=mesh.torch_device),
            b=torch.ones(2, 2, 5, 3, device=mesh.torch_device),
            ledger=ledger,
            op="mm",
        )
        assert out.shape == (2, 2, 4, 3)
        ledgers.append(ledger.records)
    assert ledgers[0] == ledgers[1]


def test_many_small_products_are_bitwise_torchs_batched_matmul():
    """Below 400 multiply-accumulates per matrix torch's CPU bmm runs a plain loop; the mesh
    computes it as k whole-mesh multiplies and adds, with the same roundings."""
    from waferllm.mesh.compute import _loops

    gen = torch.Generator().manual_seed(3)
    mesh = Mesh(tiny(), 64, 64)
    for lead, m, k, n in [((), 1, 3, 6), ((), 4, 8, 12), ((2, 1), 1, 2, 7), ((1, 3), 3, 1, 5)]:
        a = torch.randn(64, 1, *lead, m, k, generator=gen).expand(64, 64, *lead, m, k)
        b = torch.randn(64, 64, *lead, k, n, generator=gen)
        assert _loops(a, b)
        out = matmul(mesh, a=a, b=b, ledger=Ledger(), op="mm")
        assert torch.equal(out, torch.bmm(*_batched(a.contiguous(), b)).reshape(out.shape))


def _batched(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a, b = a.expand(*shape, *a.shape[-2:]), b.expand(*shape, *b.shape[-2:])
    return a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])


def test_products_of_long_k_or_few_cores_use_torchs_matmul():
    from waferllm.mesh.compute import _loops

    assert not _loops(torch.ones(64, 64, 1, 9), torch.ones(64, 64, 9, 2))  # k > 8
    assert not _loops(torch.ones(64, 64, 1, 3), torch.ones(64, 64, 3, 205))  # 615 MACs
    assert not _loops(torch.ones(8, 8, 1, 3), torch.ones(8, 8, 3, 6))  # 64 matrices


@pytest.mark.parametrize("line_dim", [0, 1])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 3, 7), (1, 36, 96), (2, 5, 13)])
def test_a_gemv_input_held_once_along_a_line_is_multiplied_once_per_line(line_dim, m, k, n):
    """GEMV weights scattered from the host keep its order (each line's tiles side by side,
    k-major): with the input held once along the other mesh dim every core's product comes
    out of one multiply per line, equal to the per-core products up to summation order."""
    from waferllm.mesh.compute import _line_products
    from waferllm.mesh.tensor import Layout, split_host

    gen = torch.Generator().manual_seed(4)
    rows, cols = 3, 5
    lines = rows if line_dim == 0 else cols
    w = torch.randn(lines * k, (cols if line_dim == 0 else rows) * n, generator=gen)
    layout = (
        Layout(tuple(w.shape), y_dim=0, x_dim=1)
        if line_dim == 0
        else Layout(tuple(w.shape), y_dim=1, x_dim=0)
    )
    b = split_host(w, layout, rows, cols)
    assert b.shape == (rows, cols, k, n) and not b.is_contiguous()
    x = torch.randn(lines, m, k, generator=gen)
    a = x[:, None] if line_dim == 0 else x[None]
    a = a.expand(rows, cols, m, k)
    got = _line_products(a, b)
    assert got is not None
    want = torch.einsum("yxmk,yxkn->yxmn", a.double(), b.double())
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-5)
    assert torch.equal(got, matmul(Mesh(tiny(), rows, cols), a=a, b=b, ledger=Ledger(), op="v"))


def test_inputs_that_differ_per_core_or_weights_stored_per_core_take_per_core_products():
    from waferllm.mesh.compute import _line_products

    a = torch.randn(3, 5, 1, 4)
    b = torch.randn(3, 5, 4, 6)
    assert _line_products(a, b) is None  # every core's own input
    assert _line_products(a[:, :1].expand(3, 5, 1, 4), b) is None  # b tile by tile
