"""`torch_device` (`--torch-device cpu|cuda`): where the virtual wafer's functional tensors live.

The CUDA runs skip cleanly on a machine without a GPU; the error path (cuda asked for, none
present) and the CPU path run everywhere.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import DEFAULT_NEW_TOKENS, DEFAULT_PROMPT_IDS

from waferllm import LLM, SamplingParams, tiny
from waferllm.api.bench import bench_gemm, bench_gemv
from waferllm.cli import main
from waferllm.errors import WaferError
from waferllm.mesh.virtual import Mesh, Mode, resolve_torch_device

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")
without_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
GREEDY = SamplingParams(max_tokens=DEFAULT_NEW_TOKENS, temperature=0.0)


def test_cpu_is_the_default_and_estimate_mode_stays_on_meta():
    assert resolve_torch_device("cpu") == torch.device("cpu")
    mesh = Mesh(tiny(), 2, 3)
    assert mesh.torch_device == torch.device("cpu")
    assert Mesh(tiny(), 2, 3, mode=Mode.ESTIMATE).torch_device == torch.device("meta")
    assert mesh.submesh(1, 2).torch_device == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "meta", "", "cuda:x"])
def test_an_unknown_torch_device_is_a_wafer_error(name):
    with pytest.raises(WaferError, match="torch device"):
        resolve_torch_device(name)


@without_cuda
def test_asking_for_cuda_without_a_gpu_is_a_wafer_error_before_loading(tmp_path):
    with pytest.raises(WaferError, match="no CUDA device"):
        LLM(tmp_path / "not-even-a-checkpoint", device="tiny", torch_device="cuda")
    with pytest.raises(WaferError, match="no CUDA device"):
        bench_gemm(algo="meshgemm", grid=2, m=4, k=4, n=4, mode="functional", torch_device="cuda")


@without_cuda
def test_the_cli_says_so_in_one_line_and_exits_2(capsys, llama_checkpoint):
    code = main(
        ["generate", "--model", str(llama_checkpoint), "--prompt-ids", "1,2", "--torch-device",
         "cuda"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "no CUDA device" in err and len(err.strip().splitlines()) == 1
    code = main(["bench", "gemm", "--grid", "2", "--m", "4", "--k", "4", "--n", "4",
                 "--mode", "functional", "--torch-device", "cuda"])  # fmt: skip
    assert code == 2


def test_an_explicit_cpu_device_changes_nothing(llama_checkpoint):
    default = LLM(llama_checkpoint, device="tiny", grid="2x3").generate(
        [DEFAULT_PROMPT_IDS], GREEDY
    )
    cpu = LLM(llama_checkpoint, device="tiny", grid="2x3", torch_device="cpu")
    assert cpu.generate([DEFAULT_PROMPT_IDS], GREEDY)[0].token_ids == default[0].token_ids


@needs_cuda
def test_cuda_generates_the_cpu_tokens(llama_checkpoint):
    cpu = LLM(llama_checkpoint, device="tiny", grid="2x3").generate([DEFAULT_PROMPT_IDS], GREEDY)
    gpu = LLM(llama_checkpoint, device="tiny", grid="2x3", torch_device="cuda")
    assert gpu.model.prefill_state.meshes[0].torch_device.type == "cuda"
    out = gpu.generate([DEFAULT_PROMPT_IDS], GREEDY)
    assert out[0].token_ids == cpu[0].token_ids
    assert json.dumps(out[0].report.to_dict()["metrics"]) == json.dumps(
        cpu[0].report.to_dict()["metrics"]
    )


@needs_cuda
@pytest.mark.parametrize("algo", ["meshgemm", "summa"])
def test_cuda_kernels_match_their_references(algo):
    kwargs = dict(algo=algo, grid=3, m=7, k=9, n=5, mode="functional")
    gpu = bench_gemm(**kwargs, torch_device="cuda")
    cpu = bench_gemm(**kwargs)
    assert gpu.max_rel_error is not None and gpu.max_rel_error < 1e-5
    assert gpu.latency_cycles == cpu.latency_cycles
    gemv = bench_gemv(algo="meshgemv", grid=3, m=9, n=5, mode="functional", torch_device="cuda")
    assert gemv.max_rel_error is not None and gemv.max_rel_error < 1e-5
