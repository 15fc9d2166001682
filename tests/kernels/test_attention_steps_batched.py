"""Prefill attention's ring loops (QK^T by dist-GEMM-T, then P V) form every step's products
in batched ops for small tiles: bit-identical to the step-by-step loop, with the same ledger."""

from __future__ import annotations

import pytest
import torch

from waferllm.device import tiny
from waferllm.kernels import attention, gemm_t
from waferllm.kernels.gemm_t import block_owners, gemm_t_steps
from waferllm.mesh import Ledger, Mesh


def _random(*shape: int, seed: int, zero_rows: int) -> torch.Tensor:
    data = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    if zero_rows:
        data[shape[0] - zero_rows :] = 0.0  # a short prompt's zero padding
    return data


def _both(monkeypatch, module, run):
    """(batched result, ledger), (looped result, ledger) of `run(mesh, ledger)`."""
    out = []
    for looped in (False, True):
        if looped:
            monkeypatch.setattr(module, "small_tiles", lambda a, b: False)
        mesh, ledger = Mesh(tiny(), 4, 4), Ledger()
        out.append((run(mesh, ledger), ledger.records))
    return out


@pytest.mark.parametrize("groups", [(4,), (2, 2), (1, 1, 1, 1)])
@pytest.mark.parametrize("zero_rows", [0, 3])
def test_qk_steps_batched_equal_the_loop_bit_for_bit(monkeypatch, groups, zero_rows):
    owners = block_owners(groups, 4)
    a_t = _random(4, 4, 1, 2, 1, 8, seed=1, zero_rows=zero_rows)  # [G, n, Lt, H]
    b_t = _random(4, 4, 1, 1, 8, 1, seed=2, zero_rows=0)  # [G, 1, H, Lt]

    def run(mesh, ledger):
        return gemm_t_steps(mesh, a_t=a_t, b_t=b_t, owners=owners, ledger=ledger, op="qk")

    (got, got_records), (want, want_records) = _both(monkeypatch, gemm_t, run)
    assert got.view(torch.int32).equal(want.view(torch.int32))
    assert got_records == want_records


@pytest.mark.parametrize("groups", [(4,), (2, 2)])
@pytest.mark.parametrize("zero_rows", [0, 2])
def test_pv_steps_batched_equal_the_loop_bit_for_bit(monkeypatch, groups, zero_rows):
    owners = block_owners(groups, 4)
    probs = _random(4, 4, 1, 2, 1, owners.per_col, seed=3, zero_rows=zero_rows)
    v_t = _random(4, 4, 1, 1, 1, 8, seed=4, zero_rows=0)

    def run(mesh, ledger):
        return attention.pv_steps(mesh, probs, v_t, owners, ledger)

    (got, got_records), (want, want_records) = _both(monkeypatch, attention, run)
    assert got.view(torch.int32).equal(want.view(torch.int32))
    assert got_records == want_records
