"""Weights held in a float16/bfloat16 checkpoint's own dtype (`mesh.virtual.held_dtype`).

Float32 compute widens them exactly (`DistTensor.values`), so tokens, logits and every ledger
record equal those of the same checkpoint placed as float32 tiles; the held tiles take half
the memory. The vocabulary tables and every layer matrix are checked, tied and untied, with
biases, on a square grid and a non-square one (MeshGEMM's logical grid pads B).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.checkpoints import DEFAULT_NEW_TOKENS, DEFAULT_PROMPT_IDS, make_checkpoint
from safetensors.torch import load_file, save_file

from waferllm import LLM, SamplingParams
from waferllm.engine.engine import Engine
from waferllm.mesh.tensor import DistTensor
from waferllm.mesh.virtual import held_dtype
from waferllm.model.placement import Phase
from waferllm.model.transformer import MeshTransformer
from waferllm.model.weights import load_checkpoint

GREEDY = SamplingParams(max_tokens=DEFAULT_NEW_TOKENS, temperature=0.0, ignore_eos=True)


def _narrowed(path: Path, dtype: torch.dtype) -> Path:
    """The checkpoint at `path` rewritten with every tensor in `dtype`."""
    for file in path.glob("*.safetensors"):
        tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(file)).items()}
        save_file(tensors, str(file), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def narrow_dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(scope="module", params=["qwen2", "qwen2_tied"])
def narrow_checkpoint(request, narrow_dtype, tmp_path_factory) -> Path:
    path = make_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return _narrowed(path, narrow_dtype)


def _matrices(model: MeshTransformer) -> list[DistTensor]:
    out = []
    for state in (model.prefill_state, model.decode_state):
        for layer in state.layers.values():
            out += [t for t in layer.tensors.values() if len(t.layout.shape) == 2]
        out += [state.lm_head, state.embed_view]
    return out


def _run(model: MeshTransformer) -> tuple[list[torch.Tensor], list]:
    """Logits of every step and the ledgers of one greedy request."""
    generation = Engine(model).generate(DEFAULT_PROMPT_IDS, GREEDY)
    logits = []
    for _ in generation:
        held = model._logits
        logits.append(held.mesh.gather(held))
    trace = generation.trace
    ledgers = [trace.prefill.records, trace.transition.records]
    return logits, ledgers + [d.records for d in trace.decode]


def test_only_float32_compute_holds_a_narrower_checkpoint_dtype():
    assert held_dtype(torch.float16, torch.float32) == torch.float16
    assert held_dtype(torch.bfloat16, torch.float32) == torch.bfloat16
    assert held_dtype(torch.float64, torch.float32) == torch.float32
    assert held_dtype(torch.bfloat16, torch.float16) == torch.float16
    assert held_dtype(torch.float32, torch.float32) == torch.float32


@pytest.mark.parametrize("grid", [6, "4x6"])
def test_held_weights_give_the_float32_placements_tokens_logits_and_ledgers(
    narrow_checkpoint, narrow_dtype, grid
):
    llm = LLM(narrow_checkpoint, device="tiny", grid=grid)
    matrices = _matrices(llm.model)
    assert all(t.data.dtype == narrow_dtype for t in matrices)
    wide = MeshTransformer(
        llm.config,
        load_checkpoint(narrow_checkpoint).weights,  # float32 on the host, float32 tiles
        device=llm.device,
        prefill_grid=llm.model.plan.grid(Phase.PREFILL),
        decode_grid=llm.model.plan.grid(Phase.DECODE),
    )
    assert all(t.data.dtype == torch.float32 for t in _matrices(wide))
    (held_logits, held_ledgers), (wide_logits, wide_ledgers) = _run(llm.model), _run(wide)
    assert len(held_logits) == len(wide_logits) == DEFAULT_NEW_TOKENS
    for ours, theirs in zip(held_logits, wide_logits, strict=True):
        assert ours.dtype == torch.float32
        assert torch.equal(ours, theirs)
    assert held_ledgers == wide_ledgers


def _placed_bytes(model: MeshTransformer) -> int:
    """Bytes behind every placed matrix, both phases (a buffer shared by views counted once)."""
    storages = {
        t.data.untyped_storage().data_ptr(): t.data.untyped_storage() for t in _matrices(model)
    }
    return sum(s.nbytes() for s in storages.values())


def test_placed_matrices_take_about_the_checkpoints_bytes_per_phase(tmp_path):
    path = _narrowed(make_checkpoint(tmp_path, "llama", hidden=48, intermediate=96), torch.float16)
    tensors = {k: v for f in path.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    stored = {k: v.numel() * v.element_size() for k, v in tensors.items() if v.dim() == 2}
    vocab = sum(n for k, n in stored.items() if "layers." not in k)
    layers = sum(stored.values()) - vocab
    held = LLM(path, device="tiny", grid=6).model
    # float16 tiles: each layer matrix in two layouts (prefill, decode), the vocabulary tables
    # once (a square grid's prefill table views the decode one); padding (heads' slots, ragged
    # tiles) adds under 10% here. Float32 tiles, or a buffer kept behind a view, would be 2x
    need = 2 * layers + vocab
    assert need <= _placed_bytes(held) <= 1.1 * need


@pytest.mark.parametrize(("grid", "shared"), [(6, True), ("4x6", False)])
def test_a_square_grids_prefill_vocab_tables_view_the_decode_ones(narrow_checkpoint, grid, shared):
    model = LLM(narrow_checkpoint, device="tiny", grid=grid).model
    pre, dec = model.prefill_state, model.decode_state
    for ours, theirs in ((pre.lm_head, dec.lm_head), (pre.embed_table, dec.embed_table)):
        same = ours.data.untyped_storage().data_ptr() == theirs.data.untyped_storage().data_ptr()
        assert same is shared
        if shared:
            assert torch.equal(ours.data, theirs.data.transpose(0, 1))
        assert ours.sram_key is not None  # charged on its own mesh all the same
