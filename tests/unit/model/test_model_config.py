"""ReaLModelConfig validation and the HF family registry."""
from __future__ import annotations

import dataclasses

import pytest

from realflow.api.errors import ModelError, RegistryError
from realflow.model import ReaLModelConfig, RotaryScaling, get_hf_family, register_hf_family
from realflow.model.families import HF_FAMILIES

BASE = dict(n_layers=2, hidden_dim=32, n_q_heads=4, n_kv_heads=2, head_dim=8, intermediate_dim=48, vocab_size=96)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"n_kv_heads": 3}, r"n_q_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
        ({"n_layers": 0}, r"n_layers must be a positive int, got 0"),
        ({"activation": "swiglu"}, "activation 'swiglu' is not one of"),
        ({"norm_type": "batch"}, "norm_type 'batch' is not one of"),
        ({"head_dim": 7}, "even head_dim"),
        ({"is_critic": True, "tied_embedding": True}, "critic .* cannot tie"),
    ],
)
def test_invalid_configs_say_what_is_wrong(change, message):
    with pytest.raises(ModelError, match=message):
        ReaLModelConfig(**{**BASE, **change})


def test_rotary_scaling_validation():
    with pytest.raises(ModelError, match="rotary scaling type 'yarn' is not supported"):
        RotaryScaling("yarn", 2.0)
    with pytest.raises(ModelError, match="high_freq_factor > low_freq_factor"):
        RotaryScaling("llama3", 8.0, low_freq_factor=4.0, high_freq_factor=1.0)


def test_layer_indices():
    cfg = ReaLModelConfig(**BASE)
    assert cfg.n_total_layers == 4 and cfg.head_index == 3
    assert cfg.layer_range() == range(0, 4) and cfg.layer_range(1, 3) == range(1, 3)
    assert cfg.qkv_sections == (32, 16, 16)
    with pytest.raises(ModelError, match=r"layer range \[2, 2\)"):
        cfg.layer_range(2, 2)


def test_family_registry():
    assert {"llama", "qwen2", "gpt2", "mistral"} <= set(HF_FAMILIES.names())
    llama = get_hf_family("llama")
    with pytest.raises(RegistryError, match="unknown HF model family 'gemma'; registered: gpt2, llama"):
        get_hf_family("gemma")
    with pytest.raises(RegistryError, match="'LlamaForCausalLM'.* are already handled by family 'llama'"):
        register_hf_family("llama_copy", **{f.name: getattr(llama, f.name)
                                             for f in dataclasses.fields(llama) if f.name != "name"})
