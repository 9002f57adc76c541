"""Mistral: Llama's layout and config without biases (the worked example of
docs/model.md: a new family is a config mapping plus a layer-rule table)."""
from __future__ import annotations

import transformers

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig
from realflow.model.families.llama import llama_like_config, llama_like_hf_kwargs, llama_like_rules
from realflow.model.families.registry import register_hf_family


def _config_from_hf(hf) -> ReaLModelConfig:
    if getattr(hf, "sliding_window", None) is not None:
        raise ModelError(
            f"mistral with sliding_window={hf.sliding_window} is not supported (only full attention, "
            "sliding_window=null as in Mistral v0.2+)"
        )
    return llama_like_config(hf)


def _config_to_hf(config: ReaLModelConfig) -> transformers.MistralConfig:
    if config.qkv_bias or config.o_bias or config.mlp_bias:
        raise ModelError("mistral has no attention or MLP biases")
    return transformers.MistralConfig(sliding_window=None, **llama_like_hf_kwargs(config))


register_hf_family(
    "mistral",
    model_type="mistral",
    causal_lm_architecture="MistralForCausalLM",
    critic_architecture="MistralForSequenceClassification",
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    layer_rules=llama_like_rules,
)
