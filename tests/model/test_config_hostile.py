"""Hostile config.json values (issue 11 #2, #3): each is refused with one `ModelConfigError`
naming the field and the expected type or limit, never a ZeroDivisionError, a comparison
TypeError or a silent truncation."""

from __future__ import annotations

import pytest

from waferllm.model.config import MAX_CONFIG_VALUES, ModelConfigError, from_hf_dict

BASE = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_attention_heads": 0}, "num_attention_heads=0 must be a positive integer"),
        ({"head_dim": "16"}, "head_dim='16' must be an integer"),
        ({"head_dim": 16.7}, "head_dim=16.7 must be an integer"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps='x' must be a finite number"),
        ({"rms_norm_eps": float("nan")}, "rms_norm_eps=nan must be a finite number"),
        ({"rope_theta": "big"}, "rope_theta='big' must be a finite number"),
        ({"eos_token_id": "2"}, "eos_token_id '2' must be an integer"),
        ({"eos_token_id": [1, "x"]}, "eos_token_id 'x' must be an integer"),
        (
            {"model_type": "mistral", "sliding_window": "5"},
            "sliding_window='5' must be an integer",
        ),
        ({"max_position_embeddings": "4096"}, "max_position_embeddings='4096' must be an int"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": "a", "low_freq_factor": 1}},
            "lacks field 'high_freq_factor'",
        ),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": "a",
                    "low_freq_factor": 1,
                    "high_freq_factor": 4,
                }
            },
            "factor='a' must be a finite number",
        ),
        ({"hidden_size": 2**40}, f"larger than the supported {MAX_CONFIG_VALUES['hidden_size']}"),
        ({"num_hidden_layers": 10_000}, "num_hidden_layers=10000 is larger than the supported"),
    ],
)
def test_hostile_config_values_name_the_field_and_the_rule(fields, message):
    with pytest.raises(ModelConfigError, match=message.replace("[", r"\[")):
        from_hf_dict({**BASE, **fields}, "hostile")
