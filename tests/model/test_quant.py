"""Compressed weights and KV cache (SPEC.md §10.2): numerics against transformers running the
same dequantised weights, and the stored bytes in SRAM in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.checkpoints import (
    DEFAULT_PROMPT_IDS,
    assert_margins,
    check_token_identity,
    reference_run,
    reference_run_dequantised,
    reference_run_kv_quantised,
)
from model.test_transformer import NEW_TOKENS, build, greedy, teacher_forced_logits

from waferllm.device import tiny, wse3
from waferllm.errors import WaferError
from waferllm.mesh.storage import (
    StoredDtype,
    bytes_per_element,
    parse_stored_dtype,
    stored_bytes,
)
from waferllm.model.config_sources import load_config
from waferllm.model.kv_store import KvStore
from waferllm.model.placement import (
    Phase,
    heads_for,
    kv_slot_bytes_per_core,
    layer_bytes_per_core,
    layer_specs,
)
from waferllm.model.quant import Storage, fake_quantise
from waferllm.model.transformer import MeshTransformer

PROMPT = list(DEFAULT_PROMPT_IDS)
QMAX = {"int8": 127, "int4": 7}


# ---- numerics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_fake_quantise_keeps_each_group_within_half_a_step_of_its_float16_scale(dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 70) * torch.linspace(0.01, 10, 70)  # 3 groups, the last of 6
    x[2, 32:64] = 0.0  # an all-zero group stays zero
    q = fake_quantise(x, StoredDtype(dtype))
    for start in range(0, 70, 32):
        group, qgroup = x[:, start : start + 32], q[:, start : start + 32]
        scale = (group.abs().amax(-1, keepdim=True) / QMAX[dtype]).half().float()
        codes = qgroup / torch.where(scale > 0, scale, torch.ones_like(scale))
        assert torch.equal(codes, codes.round()) and codes.abs().max() <= QMAX[dtype]
        assert ((group - qgroup).abs() <= scale / 2 + 1e-6 * group.abs()).all()
    assert torch.equal(q[2, 32:64], torch.zeros(32))
    levels = len(torch.unique(q[0, :32]))
    assert levels <= 2 * QMAX[dtype] + 1


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize(
    ("family", "prefill", "decode"),
    [("llama", (2, 3), (2, 3)), ("qwen2_tied", (4, 4), (2, 3))],
)
def test_compressed_weights_give_transformers_tokens_on_the_same_dequantised_weights(
    checkpoint_factory, dtype, family, prefill, decode
):
    path = checkpoint_factory(family)
    ref = reference_run_dequantised(path, PROMPT, NEW_TOKENS, dtype)
    assert_margins(ref.logits[len(PROMPT) - 1 :])
    plain = reference_run(path, PROMPT, NEW_TOKENS)
    assert (ref.logits - plain.logits).abs().max() > 1e-3  # the quantisation is visible
    model = build(path, prefill, decode, storage=Storage.of(dtype, "float16"))
    ours = teacher_forced_logits(model, ref.sequence_ids, len(PROMPT))
    report = check_token_identity(ours, ref.logits[len(PROMPT) - 1 :])
    assert report.num_argmax_checked == NEW_TOKENS
    assert greedy(model, PROMPT, NEW_TOKENS) == list(ref.generated_ids)


def test_an_int8_kv_cache_holds_quantised_values_and_keeps_the_greedy_tokens(checkpoint_factory):
    path = checkpoint_factory("llama")
    ref = reference_run(path, PROMPT, NEW_TOKENS)
    model = build(path, (2, 2), (2, 3), storage=Storage.of("float16", "int8"))
    assert greedy(model, PROMPT, NEW_TOKENS) == list(ref.generated_ids)
    store = model._stores[0]
    k = store.k[0, 0]  # sequence 0, layer 0: (R, C, G, H, S), groups run along H
    assert torch.equal(fake_quantise(k.transpose(-1, -2), StoredDtype.INT8), k.transpose(-1, -2))
    float_model = build(path, (2, 2), (2, 3))
    greedy(float_model, PROMPT, NEW_TOKENS)
    assert not torch.equal(float_model._stores[0].k[0, 0], k)


# ---- stored bytes ------------------------------------------------------------------------------
def _closed_form(dtype: str, kt: int, nt: int) -> int:
    """Bytes of one [Kt, Nt] tile: float16 2 B each; codes packed plus a float16 scale per
    32 rows of each column."""
    if dtype == "float16":
        return 2 * kt * nt
    bits = {"int8": 8, "int4": 4}[dtype]
    return math.ceil(kt * nt * bits / 8) + 2 * math.ceil(kt / 32) * nt


def test_a_32_by_32_tile_stores_2048_1088_and_576_bytes_and_a_40_row_one_two_groups():
    for dtype, square, ragged in (("float16", 2048, 240), ("int8", 1088, 132), ("int4", 576, 72)):
        stored = StoredDtype(dtype)
        assert stored_bytes(stored, reduced=32, other=32, storage_bytes=2) == square
        assert stored_bytes(stored, reduced=40, other=3, storage_bytes=2) == ragged
        assert _closed_form(dtype, 40, 3) == ragged


@pytest.mark.parametrize("dtype", ["float16", "int8", "int4"])
@pytest.mark.parametrize("phase", [Phase.PREFILL, Phase.DECODE])
def test_a_layer_stores_its_matrices_compressed_and_its_vectors_in_float16(dtype, phase):
    config = load_config("llama3-8b")
    rows, cols = (8, 8) if phase is Phase.PREFILL else (6, 10)
    expected = 0
    for spec in layer_specs(config, rows, cols, phase).values():
        tile = spec.layout().tile_shape(rows, cols)
        if len(tile) == 1:
            expected += 2 * tile[0]
        else:
            expected += _closed_form(dtype, *tile)
    stored = StoredDtype(dtype)
    assert layer_bytes_per_core(config, rows, cols, phase, 2, stored) == expected
    if dtype != "float16":
        f16 = layer_bytes_per_core(config, rows, cols, phase, 2)
        ratio = expected / f16
        assert ratio == pytest.approx(bytes_per_element(stored, 2) / 2, rel=0.01)


@pytest.mark.parametrize("dtype", ["float16", "int8", "int4"])
def test_the_placed_weights_allocate_exactly_the_planned_bytes(dtype):
    config = load_config("tiny")
    model = MeshTransformer(
        config,
        None,
        device=tiny(),
        prefill_grid=(4, 4),
        decode_grid=(3, 5),
        storage=Storage.of(dtype, dtype),
    )
    for phase, state in ((Phase.PREFILL, model.prefill_state), (Phase.DECODE, model.decode_state)):
        mesh = state.meshes[0]
        placed = sum(b for k, b in mesh.sram.live.items() if k.startswith("layer0."))
        rows, cols = mesh.shape
        assert placed == layer_bytes_per_core(config, rows, cols, phase, 2, StoredDtype(dtype))


@pytest.mark.parametrize("dtype", ["float16", "int8", "int4"])
def test_kv_bytes_per_token_are_codes_plus_a_scale_per_32_head_dim_slots(dtype):
    config = load_config("llama3-8b")  # 8 kv heads of 128
    for cols in (4, 8, 64, 420):
        heads = heads_for(config, cols)
        g = heads.kv_per_tile

        def one(h: int, g: int = g) -> int:  # G heads x h real slots, as stored
            if dtype == "float16":
                return 2 * g * h
            bits = {"int8": 8, "int4": 4}[dtype]
            return math.ceil(g * h * bits / 8) + 2 * math.ceil(h / 32) * g

        # the widest column's k (its RoPE pairs) and v (its value dims)
        widest = max(
            one(2 * int(p)) + one(int(v))
            for p, v in zip(heads.num_pairs, heads.num_vdims, strict=True)
        )
        assert kv_slot_bytes_per_core(config, cols, 2, StoredDtype(dtype)) == widest
    # 420 columns, groups of 52-53: k 2 pairs and v 1 dim, or k 1 pair and v 2-3 dims (5 slots,
    # 10 bytes; k and v each padded to 2 pairs took 16)
    assert kv_slot_bytes_per_core(config, 420, 2) == 10
    # 4 columns: two whole kv heads per column, 1 KiB per position per layer in float16
    assert kv_slot_bytes_per_core(config, 4, 2) == 2 * 2 * 2 * 128
    assert kv_slot_bytes_per_core(config, 4, 2, StoredDtype.INT4) == 2 * (128 + 2 * 4 * 2)


def test_a_compressed_cache_allocates_its_slots_at_the_stored_size():
    config = load_config("tiny")
    model = MeshTransformer(config, None, device=tiny(), prefill_grid=(2, 2), decode_grid=(2, 2))
    mesh = model.decode_state.meshes[0]
    heads = heads_for(config, mesh.cols)
    store = KvStore(mesh, heads, layers=range(2), slots=10, stored=StoredDtype.INT4, name="q")
    per_layer = 10 * kv_slot_bytes_per_core(config, mesh.cols, 2, StoredDtype.INT4)
    assert [mesh.sram.live[f"q.layer{i}"] for i in range(2)] == [per_layer] * 2
    store.free()


def test_int4_weights_hold_more_kv_than_float16_on_the_same_grid():
    config = load_config("llama3-8b")
    caps = {}
    for dtype in ("float16", "int8", "int4"):
        model = MeshTransformer(
            config,
            None,
            device=wse3(),
            prefill_grid=(755, 755),
            decode_grid=(755, 755),
            storage=Storage.of(dtype, "float16"),
        )
        caps[dtype] = model.kv_capacity_tokens()
    assert caps["float16"] < caps["int8"] < caps["int4"]


def test_bad_and_unmodelled_dtypes_are_user_errors():
    with pytest.raises(WaferError, match="int3"):
        parse_stored_dtype("int3", what="weight_dtype")
    with pytest.raises(WaferError, match="fp8 is not modelled"):
        Storage.of("float16", "fp8")


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_compressed_kv_cache_gives_transformers_tokens_with_the_same_quantised_cache(
    checkpoint_factory, dtype
):
    path = checkpoint_factory("llama")  # head_dim 10: a decode column holds whole heads
    generated, ref_logits = reference_run_kv_quantised(path, PROMPT, NEW_TOKENS, dtype)
    assert_margins(ref_logits)
    model = build(path, (2, 3), (2, 2), storage=Storage.of("float16", dtype))
    sequence = tuple(PROMPT) + generated[:-1]
    ours = teacher_forced_logits(model, sequence, len(PROMPT))
    report = check_token_identity(ours, ref_logits)
    assert report.num_argmax_checked == NEW_TOKENS
    assert greedy(model, PROMPT, NEW_TOKENS) == list(generated)


def test_the_hand_off_quantises_each_prefill_cores_prompt_tokens_in_closed_form():
    from waferllm.kernels.dequant import quantise_cycles
    from waferllm.model.transfers import kv_quantise_cycles

    config = load_config("llama3-8b")  # 32 layers, 8 kv heads of 128
    model = MeshTransformer(
        config, None, device=wse3(), prefill_grid=(700, 700), decode_grid=(700, 700),
        storage=Storage.of("float16", "int4"),
    )  # fmt: skip
    counts = model.handoff_counts(4096)
    heads = heads_for(config, 700)
    layers = max(len(r.layers) for r in model.plan.prefill.regions)
    one = quantise_cycles(wse3(), StoredDtype.INT4, reduced=heads.head_slots,
                          other=heads.kv_per_tile * 6)  # fmt: skip  # ceil(4096 / 700) tokens = 6
    assert kv_quantise_cycles(model.plan, counts) == pytest.approx(2 * layers * one)
