"""Shape-only execution: every fast output has the shape and dtype torch's meta kernels give,
and an estimate under it neither imports torch._dynamo nor changes a number."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

from waferllm.api.bench import bench_gemv
from waferllm.api.estimate import estimate
from waferllm.device import tiny
from waferllm.estimate.cost import clear_cache
from waferllm.estimate.systems import estimate_system
from waferllm.mesh import meta
from waferllm.model.config_sources import load_config


class Checking(meta.ShapeOnly):
    """The fast rules, each output compared with torch's own (outside the mode)."""

    seen: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        rule = meta._RULES.get(func)
        fast = rule(func, args, kwargs) if rule is not None else None
        want = func(*args, **kwargs)
        if fast is not None:
            assert (tuple(fast.shape), fast.dtype, fast.device) == (
                tuple(want.shape),
                want.dtype,
                want.device,
            ), func
            Checking.seen.add(func)
        return want


def meta_tensor(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


CASES = [
    lambda: meta_tensor(4, 1, 3) * meta_tensor(5, 1),
    lambda: meta_tensor(2, 3, dtype=torch.int32) * 2.5,
    lambda: meta_tensor(2, 3, dtype=torch.int32) / 2,
    lambda: meta_tensor(2, 3, dtype=torch.int64) // 2,
    lambda: meta_tensor(2, 3, dtype=torch.float16) + meta_tensor(dtype=torch.float32),
    lambda: torch.where(meta_tensor(3, 1, dtype=torch.bool), meta_tensor(3, 4), 0.0),
    lambda: torch.where(meta_tensor(3, 4, dtype=torch.bool), 1, meta_tensor(4, dtype=torch.int8)),
    lambda: meta_tensor(3, 4, dtype=torch.bool).sum(dim=-1),
    lambda: meta_tensor(3, 4, 5).permute(2, 0, 1).sum(dim=(0, 2), keepdim=True),
    lambda: meta_tensor(3, 4, dtype=torch.float16).amax(dim=1),
    lambda: meta_tensor(3, 4).mean(dim=0),
    lambda: torch.rsqrt(meta_tensor(3, dtype=torch.int64)),
    lambda: torch.nan_to_num(meta_tensor(3, 4), nan=0.0),
    lambda: meta_tensor(3, 4) ** 2,
    lambda: torch.cat([meta_tensor(2, 3), meta_tensor(5, 3, dtype=torch.float16)]),
    lambda: torch.stack([meta_tensor(2, 3), meta_tensor(2, 3)], dim=-1),
    lambda: torch.roll(meta_tensor(2, 3).t(), 1, dims=0),
    lambda: meta_tensor(7, 2, 3) @ meta_tensor(3, 5),
    lambda: torch.bmm(meta_tensor(7, 2, 3), meta_tensor(7, 3, 5)),
    lambda: torch.arange(11, device="meta") * 3,
    lambda: torch.arange(1.0, 4.0, 0.5, device="meta"),
    lambda: meta_tensor(3, 4).clone().add_(meta_tensor(4)),
    lambda: torch.isfinite(meta_tensor(3, 4, dtype=torch.float16)),
    lambda: torch.zeros_like(meta_tensor(3, 4, dtype=torch.float16)),
    lambda: torch.zeros_like(meta_tensor(2, 1, 5).expand(2, 3, 5), dtype=torch.int32),
    lambda: torch.nn.functional.pad(meta_tensor(3, 4, 5, dtype=torch.float16), (0, 0, 0, 3)),
    lambda: torch.nn.functional.pad(meta_tensor(3, 4), (1, 2, -1, 2)),
    lambda: torch.gather(
        meta_tensor(4, 3, 2, dtype=torch.float16), 0, meta_tensor(6, 3, 1, dtype=torch.int64)
    ),
    lambda: torch.gather(meta_tensor(4, 3), -1, meta_tensor(2, 7, dtype=torch.int64)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_each_fast_rule_gives_torchs_shape_and_dtype(case, monkeypatch):
    want = CASES[case]()
    monkeypatch.setattr(meta, "ShapeOnly", Checking)
    with meta.shape_only():
        got = CASES[case]()
    assert (tuple(got.shape), got.dtype) == (tuple(want.shape), want.dtype)


MIXED = [  # one op, operands of one rank: only dtypes and Python number types tell them apart
    lambda: meta_tensor(2, 3, dtype=torch.int32) * 2,
    lambda: meta_tensor(2, 3, dtype=torch.int32) * 2.5,
    lambda: meta_tensor(2, 3, dtype=torch.int32) * True,
    lambda: meta_tensor(2, 3, dtype=torch.float16) * 2.5,
    lambda: meta_tensor(2, 3, dtype=torch.int64) ** 2,
    lambda: meta_tensor(2, 3, dtype=torch.int64) ** 0.5,
    lambda: meta_tensor(2, 3, dtype=torch.bool).sum(dim=-1),
    lambda: meta_tensor(2, 3, dtype=torch.bool).sum(dim=-1, dtype=torch.float16),
    lambda: torch.cat([meta_tensor(2, 3), meta_tensor(2, 3)]),
    lambda: torch.cat([meta_tensor(2, 3), meta_tensor(2, 3, dtype=torch.float64)]),
]


@pytest.mark.parametrize("order", [1, -1])
def test_remembered_output_dtypes_follow_every_operand_dtype_and_number_type(order):
    """The rules remember each op's output dtype per argument signature: ops that differ only
    in an operand's dtype or a Python number's type, run one after another from a cold
    memory in both orders, each get torch's own dtype."""
    meta._DTYPES.clear()
    cases = MIXED[::order]
    with meta.shape_only():
        got = [case().dtype for case in cases]
    assert got == [case().dtype for case in cases]
    assert meta._DTYPES  # the memory was used


MATMULS = [  # (a shape, b shape, a dtype, b dtype)
    ((7, 2, 3), (3, 5), torch.float32, torch.float32),
    ((4, 1, 2, 3), (6, 3, 5), torch.float16, torch.float16),
    ((2, 3), (3, 4), torch.float32, torch.float32),
    ((5, 3), (3,), torch.float32, torch.float32),  # a vector: torch's own matmul
    ((3,), (2, 3, 4), torch.float32, torch.float32),
    ((2, 3), (3, 5), torch.float32, torch.float16),  # mixed dtypes: torch's own matmul
]


@pytest.mark.parametrize("case", range(len(MATMULS)))
def test_meta_matmul_gives_the_shape_and_dtype_of_a_matmul(case):
    a_shape, b_shape, a_dtype, b_dtype = MATMULS[case]
    a, b = meta_tensor(*a_shape, dtype=a_dtype), meta_tensor(*b_shape, dtype=b_dtype)
    want = a @ b
    for active in (False, True):
        with meta.shape_only() if active else contextlib.nullcontext():
            got = meta.meta_matmul(a, b)
        assert (got.device.type, tuple(got.shape), got.dtype) == (
            "meta",
            tuple(want.shape),
            want.dtype,
        )


def test_meta_matmul_raises_torchs_error_on_operands_that_do_not_multiply():
    for a, b in (
        (meta_tensor(2, 3), meta_tensor(4, 5)),
        (meta_tensor(2, 2, 3), meta_tensor(3, 3, 5)),
    ):
        with pytest.raises(RuntimeError):
            meta.meta_matmul(a, b)


def test_shapes_that_do_not_broadcast_raise_torchs_error():
    with meta.shape_only(), pytest.raises(RuntimeError):
        meta_tensor(3, 4) + meta_tensor(5)


def test_an_estimate_gives_every_fast_output_torchs_shape_and_dtype(monkeypatch):
    """The ops an estimate still dispatches on meta tiles (the kernels priced from their tile
    shapes alone, norms, softmax, MeshGEMM, attention, GEMV, embedding, argmax, dispatch none;
    every rule is also checked on its own in CASES)."""
    monkeypatch.setattr(meta, "ShapeOnly", Checking)
    Checking.seen = set()
    clear_cache()
    for storage in ("float16", "int8"):
        estimate(
            "tiny",
            device="tiny",
            prompt_len=9,
            output_len=5,
            prefill_grid=4,
            decode_grid=(3, 4),
            kv_dtype=storage,
        )
    clear_cache()
    assert Checking.seen  # some rules ran (and matched torch), not torch's fallback only
    # the residual adds and the gated FFN give their meta outputs without a dispatch
    # (`elementwise.meta_pointwise`)
    pointwise = {torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor, torch.ops.aten.silu.default}
    assert not pointwise & Checking.seen, Checking.seen


def test_reproduces_baselines_and_benches_give_every_fast_output_torchs_shape_and_dtype(
    monkeypatch,
):
    """`reproduce` runs T10's and Ladder's plans and the kernel benches under shape_only."""
    monkeypatch.setattr(meta, "ShapeOnly", Checking)
    Checking.seen = set()
    with meta.shape_only():
        for system in ("t10", "ladder"):
            estimate_system(
                system,
                config=load_config("tiny"),
                device=tiny(),
                prefill_grid=(4, 4),
                decode_grid=(3, 3),
                prompt_len=9,
                output_len=3,
            )
        bench_gemv(algo="meshgemv", grid=(4, 4), m=64, n=48, device="tiny")
    assert torch.ops.aten.gather.default in Checking.seen  # T10's skewed weights


ESTIMATE = "waferllm.estimate({})"
IN_SHAPE_ONLY = "with shape_only():\n    {}"


@pytest.mark.parametrize(
    "work",
    [
        ESTIMATE.format(
            "'llama3-8b', device='wse2', placement='per-layer', prompt_len=64, output_len=4,"
            " prefill_grid=360, decode_grid=360"
        ),
        # a prompt in chunks: the cached keys' online softmax (torch.isfinite)
        ESTIMATE.format(
            "'tiny', device=dataclasses.replace(tiny(), sram_bytes_per_core=32768),"
            " prompt_len=400, output_len=3, prefill_grid=4, decode_grid=4"
        ),
        # attention in passes of fewer query heads (torch.zeros_like)
        ESTIMATE.format(
            "'codellama-34b', device='wse2', placement='per-layer', prompt_len=4096,"
            " output_len=2, prefill_grid=284, decode_grid=420"
        ),
        # reproduce's baselines (T10's weights skewed by torch.gather) and kernel benches
        IN_SHAPE_ONLY.format(
            "estimate_system('t10', config=load_config('llama3-8b'), device=get_device('wse2'),"
            " prefill_grid=(480, 480), decode_grid=(420, 420), prompt_len=4096, output_len=2)"
        ),
        IN_SHAPE_ONLY.format(
            "bench_gemv(algo='meshgemv', grid=(360, 360), m=4096, n=4096, device='wse2')"
        ),
    ],
)
def test_work_on_meta_tensors_after_import_imports_neither_dynamo_nor_sympy(work):
    code = (
        "import dataclasses, sys, warnings, waferllm\n"
        "from waferllm.api.bench import bench_gemv\n"
        "from waferllm.device import get_device, tiny\n"
        "from waferllm.estimate.systems import estimate_system\n"
        "from waferllm.mesh.meta import shape_only\n"
        "from waferllm.model.config_sources import load_config\n"
        "warnings.simplefilter('ignore')\n"
        f"{work}\n"
        "print('torch._dynamo' in sys.modules or 'sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.int64, torch.bool])
def test_meta_empty_is_torch_empty_on_meta_inside_the_mode_and_out(dtype):
    want = torch.empty((3, 1, 4), dtype=dtype, device="meta")
    for mode in (meta.shape_only, contextlib.nullcontext):
        with mode():
            got = meta.meta_empty((3, 1, 4), dtype)
            with meta.native():
                viewed = got.reshape(3, 4).permute(1, 0)
        assert (got.shape, got.dtype, got.device, got.stride()) == (
            want.shape,
            want.dtype,
            want.device,
            want.stride(),
        )
        assert (viewed.shape, viewed.dtype) == ((4, 3), want.dtype)


def test_the_mode_prices_ops_again_once_a_native_block_ends(monkeypatch):
    seen = []
    add = torch.ops.aten.add.Tensor
    rule = meta._RULES[add]
    monkeypatch.setitem(meta._RULES, add, lambda f, a, k: seen.append(f) or rule(f, a, k))
    x = torch.empty((2, 3), device="meta")
    with meta.shape_only():
        with meta.native():
            viewed = x.reshape(6)
        summed = x + x
    assert viewed.shape == (6,) and summed.shape == (2, 3)
    assert seen == [add]
