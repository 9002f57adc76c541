"""Qwen2 / Qwen2.5: Llama's layout plus biases on q, k and v (none on o or the MLP)."""
from __future__ import annotations

import transformers

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig
from realflow.model.families.llama import llama_like_config, llama_like_hf_kwargs, llama_like_rules
from realflow.model.families.registry import register_hf_family


def _config_from_hf(hf) -> ReaLModelConfig:
    if getattr(hf, "use_sliding_window", False) and "sliding_attention" in (getattr(hf, "layer_types", None) or []):
        raise ModelError("qwen2 with sliding-window attention (use_sliding_window=true) is not supported")
    return llama_like_config(hf, qkv_bias=True, o_bias=False, mlp_bias=False)


def _config_to_hf(config: ReaLModelConfig) -> transformers.Qwen2Config:
    if not config.qkv_bias or config.o_bias or config.mlp_bias:
        raise ModelError(
            "qwen2 has biases on q/k/v only; got "
            f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}, mlp_bias={config.mlp_bias}"
        )
    return transformers.Qwen2Config(**llama_like_hf_kwargs(config))


register_hf_family(
    "qwen2",
    model_type="qwen2",
    causal_lm_architecture="Qwen2ForCausalLM",
    critic_architecture="Qwen2ForSequenceClassification",
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    layer_rules=llama_like_rules,
)
