"""Distributed GEMM numerics: every kernel against the dense reference on square, odd and
non-square meshes, awkward sizes, half precision, batch dims, reuse of skewed operands, and
the errors a user can hit (SPEC.md §4, §8)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from waferllm.device import tiny
from waferllm.errors import GridError
from waferllm.kernels.gemm import align_a, meshgemm, prealign_b
from waferllm.kernels.gemm_t import block_owners, gemm_t
from waferllm.kernels.reference import compare, gemm_reference, gemm_t_reference
from waferllm.kernels.registry import GEMM_KERNELS, WEIGHT_SKEW, store_b_for
from waferllm.mesh import Layout, Ledger, Mesh, RingKind
from waferllm.mesh.tiling import grid_works, padded_k

GRIDS = [(1, 1), (2, 2), (3, 3), (4, 4), (3, 5), (8, 8), (16, 16)]
ALGOS = sorted(GEMM_KERNELS)


def _operands(m: int, k: int, n: int, seed: int, *, batch: tuple[int, ...] = ()):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, m, k, generator=gen), torch.randn(k, n, generator=gen)


def _run(algo: str, grid: tuple[int, int], a: torch.Tensor, b: torch.Tensor, **mesh_kw):
    """Scatter A (K zero-padded as the ring kernels need it) and B as `algo`'s weights, run."""
    mesh = Mesh(tiny(), *grid, **mesh_kw)
    k = a.shape[-1]
    kp = padded_k(*grid, k) if algo in WEIGHT_SKEW else k
    a_p = torch.nn.functional.pad(a, (0, kp - k))
    b_p = torch.nn.functional.pad(b, (0, 0, 0, kp - k))
    nd = a_p.dim()
    a_d = mesh.scatter(a_p, Layout(tuple(a_p.shape), y_dim=nd - 2, x_dim=nd - 1), "a")
    b_d = store_b_for(mesh, b_p, algo=algo)
    result = GEMM_KERNELS[algo](mesh, a=a_d, b=b_d, ledger=Ledger())
    return mesh, result


def _relative_error(mesh: Mesh, result, want: torch.Tensor) -> float:
    return compare(mesh.gather(result.out), want).relative_error


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("algo", ALGOS)
def test_every_gemm_matches_the_dense_reference_in_float32(algo, grid):
    a, b = _operands(37, 41, 29, seed=hash((algo, grid)) % 2**31)  # no grid divides these
    mesh, result = _run(algo, grid, a, b)
    assert result.out.layout.shape == (37, 29)
    assert (result.out.layout.y_dim, result.out.layout.x_dim) == (0, 1)
    assert _relative_error(mesh, result, gemm_reference(a, b)) <= 1e-4


@pytest.mark.parametrize("grid", [(1, 1), (3, 3), (3, 5), (8, 8)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("algo", ALGOS)
def test_every_gemm_in_float16_with_float32_accumulation_is_within_1e_2(algo, grid):
    a, b = _operands(24, 40, 19, seed=7)
    a, b = a.half().float(), b.half().float()  # the operands as the mesh stores them
    mesh, result = _run(algo, grid, a, b, compute_dtype=torch.float16)
    assert result.out.data.dtype == torch.float16
    assert _relative_error(mesh, result, gemm_reference(a, b)) <= 1e-2


def _gemm_t_dense(mesh: Mesh, result, n: int) -> torch.Tensor:
    """C with N in order: column x's tile holds the blocks of N it owns, from its first."""
    owners = block_owners((mesh.cols,), mesh.rows)
    c = mesh.gather(result.out)
    if result.out.layout.tag == "":
        return c
    blocks = c.reshape(*c.shape[:-1], mesh.cols, owners.per_col, -1)  # [..., M, C, Kc, Nt]
    parts = [
        blocks[..., x, i, :] for x in range(mesh.cols) for i in range(int(owners.num_blocks[x]))
    ]  # in block order: owners hold contiguous runs
    return torch.cat(parts, dim=-1)[..., :n]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_gemm_t_matches_the_dense_reference_with_broadcast_heads(grid):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(3, 19, 26, generator=gen)  # q: [H, M, K]
    k = torch.randn(1, 23, 26, generator=gen)  # k: [1, N, K], shared by the 3 heads
    mesh = Mesh(tiny(), *grid)
    q_d = mesh.scatter(q, Layout(tuple(q.shape), y_dim=1, x_dim=2), "q")
    k_d = mesh.scatter(k, Layout(tuple(k.shape), y_dim=1, x_dim=2), "k")
    result = gemm_t(mesh, a=q_d, b=k_d, ledger=Ledger())
    want = gemm_t_reference(q, k)
    assert compare(_gemm_t_dense(mesh, result, 23), want).relative_error <= 1e-4


def test_gemm_t_gives_c_in_the_normal_layout_when_the_columns_divide_the_rows():
    mesh = Mesh(tiny(), 4, 2)
    a, b = torch.randn(6, 10), torch.randn(8, 10)
    a_d = mesh.scatter(a, Layout((6, 10), y_dim=0, x_dim=1), "a")
    b_d = mesh.scatter(b, Layout((8, 10), y_dim=0, x_dim=1), "b")
    out = gemm_t(mesh, a=a_d, b=b_d, ledger=Ledger()).out
    assert out.layout == Layout((6, 8), y_dim=0, x_dim=1)
    assert compare(mesh.gather(out), gemm_t_reference(a, b)).relative_error <= 1e-4


@pytest.mark.parametrize("groups", [(2, 3), (1, 1, 3), (5,)])
def test_grouped_gemm_t_reduces_within_each_group_of_columns(groups):
    """Group g's columns split the K of its own product: C_g = A_g @ B_g^T."""
    rows, cols = 3, sum(groups)
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(6, cols * 2, generator=gen)
    b = torch.randn(rows * 2, cols * 2, generator=gen)
    mesh = Mesh(tiny(), rows, cols)
    a_d = mesh.scatter(a, Layout(tuple(a.shape), y_dim=0, x_dim=1), "a")
    b_d = mesh.scatter(b, Layout(tuple(b.shape), y_dim=0, x_dim=1), "b")
    out = gemm_t(mesh, a=a_d, b=b_d, ledger=Ledger(), group_sizes=groups).out
    owners = block_owners(groups, rows)
    c = mesh.gather(out).reshape(6, cols, owners.per_col, 2)
    start = 0
    for g, size in enumerate(groups):
        k = slice(2 * start, 2 * (start + size))
        want = a[:, k] @ b[:, k].T  # [6, R*2]
        for j in range(rows):
            col, slot = owners.column[g, j], owners.slot[g, j]
            assert torch.allclose(c[:, col, slot], want[:, 2 * j : 2 * j + 2], atol=1e-5)
        start += size


@pytest.mark.parametrize("grid", [(2, 2), (3, 5)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("algo", ALGOS)
def test_batched_a_multiplies_every_batch_entry_by_the_same_b(algo, grid):
    a, b = _operands(11, 15, 9, seed=5, batch=(2,))
    mesh, result = _run(algo, grid, a, b)
    assert result.out.layout.shape == (2, 11, 9)
    assert _relative_error(mesh, result, gemm_reference(a, b)) <= 1e-4


@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    m=st.integers(1, 20),
    k=st.integers(1, 20),
    n=st.integers(1, 20),
    algo=st.sampled_from(ALGOS),
)
@settings(max_examples=30, deadline=None)
def test_any_shape_on_any_accepted_grid_matches_the_reference(rows, cols, m, k, n, algo):
    if algo in WEIGHT_SKEW and not grid_works(rows, cols):
        return
    a, b = _operands(m, k, n, seed=rows * 100 + cols)
    mesh, result = _run(algo, (rows, cols), a, b)
    assert _relative_error(mesh, result, gemm_reference(a, b)) <= 1e-4


@pytest.mark.parametrize("kernel", ["meshgemm", "cannon"])
def test_ring_kernels_on_5x7_say_which_nearby_grids_work(kernel):
    mesh = Mesh(tiny(), 5, 7)
    a = mesh.scatter(torch.randn(10, 35), Layout((10, 35), y_dim=0, x_dim=1), "a")
    b = mesh.scatter(torch.randn(35, 35), Layout((35, 35), y_dim=0, x_dim=1), "b")
    fn = GEMM_KERNELS[kernel]
    with pytest.raises(GridError) as err:
        fn(mesh, a=a, b=b, ledger=Ledger())
    message = str(err.value)
    assert "lcm(5, 7) = 35 > 4 x max(5, 7)" in message
    assert "nearby grids that work: 4x7, 6x6, 4x8, 5x5" in message
    for near in ((4, 7), (6, 6), (4, 8), (5, 5)):
        assert grid_works(*near)


@pytest.mark.parametrize("algo", ["summa", "allgather"])
def test_broadcast_baselines_run_on_5x7(algo):
    a, b = _operands(17, 23, 13, seed=11)
    mesh, result = _run(algo, (5, 7), a, b)
    assert _relative_error(mesh, result, gemm_reference(a, b)) <= 1e-4


@pytest.mark.parametrize("grid", [(4, 4), (2, 4)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_meshgemm_skews_a_plain_b_on_the_device_with_the_same_result(grid):
    a, b = _operands(12, 16, 10, seed=2)
    mesh = Mesh(tiny(), *grid)
    a_d = mesh.scatter(a, Layout((12, 16), y_dim=0, x_dim=1), "a")
    b_d = mesh.scatter(b, Layout((16, 10), y_dim=0, x_dim=1), "b")  # not pre-skewed
    result = meshgemm(mesh, a=a_d, b=b_d, ledger=Ledger())
    assert _relative_error(mesh, result, gemm_reference(a, b)) <= 1e-4
    if grid == (4, 4):  # X and Y rings, forward and reverse, 3 colours each
        assert mesh.routes.routes_per_core == 12


def test_a_skewed_once_serves_several_meshgemms():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(20, 24, generator=gen)
    weights = [torch.randn(24, 16, generator=gen) for _ in range(3)]
    mesh = Mesh(tiny(), 4, 4)
    ledger = Ledger()
    x_d = mesh.scatter(x, Layout((20, 24), y_dim=0, x_dim=1), "x")
    skewed = align_a(mesh, a=x_d, ledger=ledger).out
    assert skewed.layout.tag == "meshgemm_a_aligned"
    assert all(r.tag == "align" for r in ledger.records)
    for i, w in enumerate(weights):
        w_d = prealign_b(mesh, w, name=f"w{i}")
        result = meshgemm(mesh, a=skewed, b=w_d, ledger=ledger)
        assert not any(r.tag == "align" for r in result.records)
        assert _relative_error(mesh, result, gemm_reference(x, w)) <= 1e-4


def test_non_square_ring_gemm_refuses_k_tiles_that_do_not_line_up():
    mesh = Mesh(tiny(), 2, 4)
    a = mesh.scatter(torch.randn(8, 6), Layout((8, 6), y_dim=0, x_dim=1), "a")  # K tiles 2 x 4
    b = mesh.scatter(torch.randn(6, 8), Layout((6, 8), y_dim=0, x_dim=1), "b")  # K tiles 3 x 2
    with pytest.raises(ValueError, match="pad K to a multiple of 4"):
        meshgemm(mesh, a=a, b=b, ledger=Ledger())


def test_operands_in_the_wrong_layout_are_refused_with_the_expected_sharding():
    mesh = Mesh(tiny(), 2, 2)
    a = mesh.scatter(torch.randn(4, 4), Layout((4, 4), y_dim=1, x_dim=0), "a")
    b = prealign_b(mesh, torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"A\[M_y, K_x\]"):
        meshgemm(mesh, a=a, b=b, ledger=Ledger())
    plain_a = mesh.scatter(torch.randn(4, 4), Layout((4, 4), y_dim=0, x_dim=1), "a2")
    cannon_b = prealign_b(mesh, torch.randn(4, 4), name="cb", kind=RingKind.PLAIN)
    with pytest.raises(ValueError, match="cannon_b_aligned"):
        meshgemm(mesh, a=plain_a, b=cannon_b, ledger=Ledger())
    b6 = mesh.scatter(torch.randn(6, 4), Layout((6, 4), y_dim=0, x_dim=1), "b6")
    with pytest.raises(ValueError, match="differ in K"):
        GEMM_KERNELS["summa"](mesh, a=plain_a, b=b6, ledger=Ledger())


def test_store_b_for_names_the_known_algorithms():
    with pytest.raises(ValueError, match="meshgemm, cannon, summa, allgather"):
        store_b_for(Mesh(tiny(), 2, 2), torch.randn(4, 4), algo="strassen")
