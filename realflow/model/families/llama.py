"""Llama (incl. GQA, Llama 3 rope scaling): HF `LlamaForCausalLM`.

`llama_like_rules` is the tensor map shared by every family with Llama's module
names (qwen2, mistral, ...): they differ only in their configs.
"""
from __future__ import annotations

import transformers

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig
from realflow.model.families.hf_common import activation_from_hf, activation_to_hf, rotary_from_hf, rotary_to_hf
from realflow.model.families.registry import TensorRule, register_hf_family


def llama_like_rules(config: ReaLModelConfig, index: int) -> list[TensorRule]:
    """HF tensors of ReaLModel layer `index` for Llama-style module names."""
    if index == 0:
        return [TensorRule("0.wte.weight", ("model.embed_tokens.weight",))]
    i = f"{index}."
    if index == config.head_index:
        rules = [TensorRule(i + "ln_f.weight", ("model.norm.weight",))]
        if config.is_critic:
            rules.append(TensorRule(i + "head.weight", ("score.weight",)))
        elif not config.tied_embedding:
            rules.append(TensorRule(i + "head.weight", ("lm_head.weight",)))
        return rules
    p = f"model.layers.{index - 1}."
    qkv = config.qkv_sections
    gate_up = (config.intermediate_dim, config.intermediate_dim)
    rules = [
        TensorRule(i + "attn.ln.weight", (p + "input_layernorm.weight",)),
        TensorRule(i + "attn.qkv.weight", tuple(f"{p}self_attn.{x}_proj.weight" for x in "qkv"), qkv),
        TensorRule(i + "attn.o.weight", (p + "self_attn.o_proj.weight",)),
        TensorRule(i + "mlp.ln.weight", (p + "post_attention_layernorm.weight",)),
        TensorRule(i + "mlp.gate_up.weight", (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), gate_up),
        TensorRule(i + "mlp.down.weight", (p + "mlp.down_proj.weight",)),
    ]
    if config.qkv_bias:
        rules.append(TensorRule(i + "attn.qkv.bias", tuple(f"{p}self_attn.{x}_proj.bias" for x in "qkv"), qkv))
    if config.o_bias:
        rules.append(TensorRule(i + "attn.o.bias", (p + "self_attn.o_proj.bias",)))
    if config.mlp_bias:
        rules.append(TensorRule(i + "mlp.gate_up.bias", (p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"), gate_up))
        rules.append(TensorRule(i + "mlp.down.bias", (p + "mlp.down_proj.bias",)))
    return rules


def llama_like_config(hf, **overrides) -> ReaLModelConfig:
    """The fields every Llama-style HF config shares; `overrides` set the rest."""
    heads = hf.num_attention_heads
    base, scaling = rotary_from_hf(hf)
    fields = dict(
        n_layers=hf.num_hidden_layers,
        hidden_dim=hf.hidden_size,
        n_q_heads=heads,
        n_kv_heads=hf.num_key_value_heads or heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads,
        intermediate_dim=hf.intermediate_size,
        vocab_size=hf.vocab_size,
        n_positions=hf.max_position_embeddings,
        rotary_base=base,
        rotary_scaling=scaling,
        norm_type="rms",
        norm_eps=hf.rms_norm_eps,
        activation=activation_from_hf(hf.hidden_act),
        gated_mlp=True,
        tied_embedding=bool(hf.tie_word_embeddings),
    )
    fields.update(overrides)
    return ReaLModelConfig(**fields)


def llama_like_hf_kwargs(config: ReaLModelConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_dim,
        intermediate_size=config.intermediate_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_q_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        hidden_act=activation_to_hf(config.activation),
        max_position_embeddings=config.n_positions,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tied_embedding,
        **rotary_to_hf(config),
    )


def _config_from_hf(hf) -> ReaLModelConfig:
    bias = bool(getattr(hf, "attention_bias", False))
    return llama_like_config(hf, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf, "mlp_bias", False)))


def _config_to_hf(config: ReaLModelConfig) -> transformers.LlamaConfig:
    if config.qkv_bias != config.o_bias:
        raise ModelError(f"llama has one attention_bias flag; got qkv_bias={config.qkv_bias}, o_bias={config.o_bias}")
    return transformers.LlamaConfig(
        attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias, **llama_like_hf_kwargs(config)
    )


register_hf_family(
    "llama",
    model_type="llama",
    causal_lm_architecture="LlamaForCausalLM",
    critic_architecture="LlamaForSequenceClassification",
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    layer_rules=llama_like_rules,
)
