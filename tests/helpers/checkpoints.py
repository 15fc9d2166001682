"""Tiny seeded Hugging Face checkpoints and the transformers oracle (SPEC.md §10.11, §10.12).

`make_checkpoint` writes a random model of a supported family with transformers'
`save_pretrained` plus a small byte-level BPE tokenizer; `reference_run` returns transformers'
greedy tokens and teacher-forced logits; `assert_margins` and `check_token_identity` implement
the token-identity criterion. Default widths are chosen not to divide typical grids, so tests
exercise padding. Weights are drawn large enough that attention is far from uniform and greedy
top-2 margins clear the criterion's threshold (asserted, with a deterministic seed search).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("llama", "llama3_rope", "mistral", "qwen2", "qwen2_tied", "phi3")
BOS_ID, EOS_ID = 0, 1  # the tokenizer's special tokens come first in its vocabulary
# The standard request: a 9-token prompt and 7 greedy tokens (16 positions in all).
DEFAULT_PROMPT_IDS = (BOS_ID, 37, 102, 251, 17, 288, 64, 199, 5)
DEFAULT_NEW_TOKENS = 7
REL_TOLERANCE = 1e-4  # max |logit difference| / max |logit| at each position
MARGIN_ABS, MARGIN_REL = 1e-3, 2e-4  # top-2 margin threshold: max(1e-3, 2e-4 * max |logit|)
MAX_SEED_TRIES = 32
METADATA_FILE = "waferllm_test_checkpoint.json"

_TOKENIZER_TEXT = (
    "The wafer is a mesh of cores. Each core has its own SRAM, a router and links to its four "
    "neighbours; messages hop from core to core. Prefill multiplies matrices with MeshGEMM, "
    "decode multiplies vectors with MeshGEMV and reduces partial sums over a two-level tree. "
    "Keys and values live in a cache that shifts north as new tokens arrive. 0123456789 "
    "héllo wörld, naïve café, 🙂 emoji and ∑ symbols also appear. "
)


@dataclasses.dataclass(frozen=True)
class Reference:
    """transformers' answer for one request (float32, eager attention, greedy)."""

    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]  # exactly max_new_tokens greedy tokens, EOS not stopping
    sequence_ids: tuple[int, ...]  # prompt + generated[:-1]: the teacher-forced input
    logits: torch.Tensor  # [len(sequence_ids), V] float32; row t scores the token after t


@dataclasses.dataclass(frozen=True)
class IdentityReport:
    max_rel_error: float  # max over positions of max |ours - ref| / max |ref|
    num_positions: int
    num_argmax_checked: int  # positions whose reference margin exceeds the threshold


def _hf_config(
    family: str,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int | None,
    intermediate: int,
    vocab: int,
    sliding_window: int | None,
    attention_bias: bool,
    mlp_bias: bool,
) -> Any:
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if sliding_window is not None and not family.startswith(("mistral", "qwen2", "phi3")):
        raise ValueError(f"family {family!r} has no sliding window (mistral, qwen2, phi3 do)")
    if (attention_bias or mlp_bias) and not family.startswith("llama"):
        raise ValueError("attention_bias and mlp_bias are llama config fields")
    common: dict[str, Any] = {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    if head_dim is not None:
        common["head_dim"] = head_dim
    if family == "llama3_rope":
        # A short original context so that all three llama3 bands (kept, smoothed, divided
        # by factor) occur at this head_dim and matter within a few dozen positions.
        common["rope_parameters"] = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    if family.startswith("llama"):
        return transformers.LlamaConfig(**common, attention_bias=attention_bias, mlp_bias=mlp_bias)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=sliding_window)
    if family == "phi3":  # fused qkv_proj and gate_up_proj tensors
        return transformers.Phi3Config(**common, sliding_window=sliding_window)
    return transformers.Qwen2Config(
        **common,
        tie_word_embeddings=family == "qwen2_tied",
        use_sliding_window=sliding_window is not None,
        sliding_window=sliding_window,
        max_window_layers=0,
    )


def _randomise(model: torch.nn.Module, seed: int, weight_scale: float) -> None:
    """Seeded weights: std weight_scale/sqrt(fan_in), norm weights near 1, non-zero biases.

    transformers initialises with std 0.02 and zero biases, which would leave attention nearly
    uniform and biases untested; these scales make scores O(1) and every tensor matter.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.3 * noise)
            elif "embed_tokens" in name:
                param.copy_(noise)
            else:
                param.copy_(noise * (weight_scale / param.shape[-1] ** 0.5))


def _save_tokenizer(path: Path, vocab: int, family: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab < len(alphabet) + 2:
        raise ValueError(f"a byte-level tokenizer needs vocab >= {len(alphabet) + 2}, got {vocab}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator([_TOKENIZER_TEXT], trainer)
    assert tokenizer.token_to_id("<s>") == BOS_ID and tokenizer.token_to_id("</s>") == EOS_ID
    if not family.startswith("qwen2"):  # Llama and Mistral tokenizers prepend BOS; Qwen2 none
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(path))


def make_checkpoint(
    tmp_path: Path,
    family: str = "llama",
    *,
    hidden: int = 40,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int = 88,
    vocab: int = 301,
    seed: int = 0,
    sliding_window: int | None = None,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    sharded: bool = False,
    with_tokenizer: bool = True,
    weight_scale: float = 1.5,
    margin_prompt_ids: Sequence[int] | None = DEFAULT_PROMPT_IDS,
    margin_new_tokens: int = DEFAULT_NEW_TOKENS,
) -> Path:
    """Write a random HF checkpoint to `tmp_path/<family>-...` and return the directory.

    With `margin_prompt_ids` (default: the standard prompt), seeds seed, seed+1, ... are tried
    until transformers' greedy run on that prompt has every top-2 margin above the threshold
    and generates no EOS; the seed used is in `waferllm_test_checkpoint.json`. Deterministic.
    """
    import transformers

    transformers.logging.disable_progress_bar()
    config = _hf_config(
        family,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=vocab,
        sliding_window=sliding_window,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
    )
    path = _fresh_dir(Path(tmp_path), f"{family}-h{hidden}-l{layers}-s{seed}")
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()
    for used_seed in range(seed, seed + MAX_SEED_TRIES):
        _randomise(model, used_seed, weight_scale)
        if margin_prompt_ids is None:
            break
        if _clears_margins(model, margin_prompt_ids, margin_new_tokens):
            break
    else:
        raise AssertionError(f"no seed in [{seed}, {used_seed}] gives clear greedy margins")
    # ~4 shards for the default sizes; the threshold scales with the model so any size shards.
    num_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(str(path), max_shard_size=max(num_bytes // 4, 1) if sharded else "50GB")
    if with_tokenizer:
        _save_tokenizer(path, vocab, family)
    (path / METADATA_FILE).write_text(
        json.dumps({"family": family, "seed_requested": seed, "seed_used": used_seed})
    )
    return path


def _fresh_dir(parent: Path, stem: str) -> Path:
    for suffix in range(1000):
        path = parent / (stem if suffix == 0 else f"{stem}-{suffix}")
        if not path.exists():
            path.mkdir(parents=True)
            return path
    raise AssertionError(f"too many checkpoints named {stem} in {parent}")


def _clears_margins(model: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> bool:
    reference = _run(model, tuple(prompt_ids), max_new_tokens)
    if EOS_ID in reference.generated_ids:
        return False
    try:
        assert_margins(reference.logits)
    except AssertionError:
        return False
    return True


def _run(model: Any, prompt_ids: tuple[int, ...], max_new_tokens: int) -> Reference:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    prompt = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=EOS_ID,
        )
        generated = tuple(int(t) for t in out[0, len(prompt_ids) :])
        sequence = prompt_ids + generated[:-1]
        logits = model(torch.tensor([sequence])).logits[0].float()
    return Reference(prompt_ids, generated, sequence, logits)


@functools.lru_cache(maxsize=64)
def _load_reference_model(path: str) -> Any:
    import transformers

    transformers.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@functools.lru_cache(maxsize=256)
def _cached_reference(path: str, prompt_ids: tuple[int, ...], max_new_tokens: int) -> Reference:
    return _run(_load_reference_model(path), prompt_ids, max_new_tokens)


def reference_run(path: Path | str, prompt_ids: Sequence[int], max_new_tokens: int) -> Reference:
    """transformers' greedy tokens and teacher-forced logits for a checkpoint (cached).

    float32, eager attention, `min_new_tokens = max_new_tokens` so EOS never stops it. The
    returned tensor is shared by later calls with the same arguments: do not modify it.
    """
    path = str(Path(path).resolve())
    return _cached_reference(path, tuple(int(t) for t in prompt_ids), max_new_tokens)


def reference_run_dequantised(
    path: Path | str, prompt_ids: Sequence[int], max_new_tokens: int, weight_dtype: str
) -> Reference:
    """`reference_run` on transformers loaded with the checkpoint's weights quantised to
    `weight_dtype` and dequantised as waferllm stores them (`dequantised_state_dict`)."""
    import transformers

    from waferllm.model.quant import dequantised_state_dict

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    model.load_state_dict(dequantised_state_dict(model.state_dict(), weight_dtype))
    return _run(model, tuple(int(t) for t in prompt_ids), max_new_tokens)


def reference_run_kv_quantised(
    path: Path | str, prompt_ids: Sequence[int], max_new_tokens: int, kv_dtype: str
) -> tuple[tuple[int, ...], torch.Tensor]:
    """transformers' greedy run with a KV cache stored as waferllm stores it: the prompt's
    attention sees float keys and values (prefill keeps them as activations), every decode
    step sees every cached k and v quantised per token and kv head along head_dim (groups of
    32; test heads of <= 32 dims held whole by a column make that waferllm's grouping).
    Returns (generated ids, logits [max_new_tokens, V] of each step)."""
    import transformers
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from waferllm.mesh.storage import parse_stored_dtype
    from waferllm.model.quant import fake_quantise

    stored = parse_stored_dtype(kv_dtype, what="kv_dtype")

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        if query.shape[-2] == 1:  # a decode step reads the compressed cache
            key, value = fake_quantise(key, stored), fake_quantise(value, stored)
        return eager_attention_forward(
            module, query, key, value, attention_mask, scaling, dropout, **kwargs
        )

    AttentionInterface.register("waferllm_kv_quantised", attention)
    AttentionMaskInterface.register("waferllm_kv_quantised", eager_mask)  # additive, as eager
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="waferllm_kv_quantised"
    ).eval()
    prompt = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=EOS_ID,
            output_logits=True,
            return_dict_in_generate=True,
        )
    generated = tuple(int(t) for t in out.sequences[0, len(prompt_ids) :])
    return generated, torch.stack([step[0].float() for step in out.logits])


def margin_threshold(logits: torch.Tensor) -> torch.Tensor:
    """Per position [T]: max(1e-3, 2e-4 * max |logit|) (SPEC.md §10.11)."""
    scale = logits.detach().double().abs().amax(dim=-1)
    return torch.clamp(MARGIN_REL * scale, min=MARGIN_ABS)


def top2_margins(logits: torch.Tensor) -> torch.Tensor:
    """Per position [T]: the largest logit minus the second largest."""
    top2 = logits.detach().double().topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def assert_margins(logits: torch.Tensor) -> None:
    """Every position's top-2 margin must exceed the threshold (test checkpoints are seeded so)."""
    margins, threshold = top2_margins(logits), margin_threshold(logits)
    small = torch.nonzero(margins <= threshold).flatten().tolist()
    assert not small, (
        f"reference top-2 margins too small at positions {small}: "
        f"{[round(float(margins[t]), 6) for t in small]} <= "
        f"{[round(float(threshold[t]), 6) for t in small]}"
    )


def check_token_identity(
    ours_logits: torch.Tensor, ref_logits: torch.Tensor, *, rel_tolerance: float = REL_TOLERANCE
) -> IdentityReport:
    """SPEC.md §10.11 on teacher-forced logits [T, V]; raises AssertionError naming positions.

    At every position max |ours - ref| <= rel_tolerance * max |ref|, and the argmax agrees
    wherever the reference's top-2 margin exceeds max(1e-3, 2e-4 * max |ref|).
    """
    assert ours_logits.shape == ref_logits.shape, (
        f"logits shape {tuple(ours_logits.shape)} != reference {tuple(ref_logits.shape)}"
    )
    ours, ref = ours_logits.detach().double().cpu(), ref_logits.detach().double().cpu()
    assert torch.isfinite(ours).all(), "our logits contain inf or nan"
    scale = ref.abs().amax(dim=-1)
    rel_error = (ours - ref).abs().amax(dim=-1) / scale
    bad = torch.nonzero(rel_error > rel_tolerance).flatten().tolist()
    assert not bad, (
        f"logits differ beyond {rel_tolerance} x max|logit| at positions {bad}: "
        f"relative errors {[f'{float(rel_error[t]):.2e}' for t in bad]}"
    )
    decisive = top2_margins(ref) > margin_threshold(ref)
    flipped = torch.nonzero(decisive & (ours.argmax(-1) != ref.argmax(-1))).flatten().tolist()
    assert not flipped, f"argmax differs from the reference at decisive positions {flipped}"
    return IdentityReport(
        max_rel_error=float(rel_error.max()),
        num_positions=int(ref.shape[0]),
        num_argmax_checked=int(decisive.sum()),
    )
