"""GPT-2: absolute positions, LayerNorm, plain gelu MLP, biases everywhere, tied head.

HF stores GPT-2's linear weights as Conv1D (in, out): every rule transposes. The
fused c_attn is already [q; k; v] along the output dimension, ReaLModel's qkv layout.
"""
from __future__ import annotations

import transformers

from realflow.api.errors import ModelError
from realflow.model.config import ReaLModelConfig
from realflow.model.families.hf_common import activation_from_hf, activation_to_hf
from realflow.model.families.registry import TensorRule, register_hf_family


def _rules(config: ReaLModelConfig, index: int) -> list[TensorRule]:
    if index == 0:
        return [
            TensorRule("0.wte.weight", ("transformer.wte.weight",)),
            TensorRule("0.wpe.weight", ("transformer.wpe.weight",)),
        ]
    i = f"{index}."
    if index == config.head_index:
        rules = [
            TensorRule(i + "ln_f.weight", ("transformer.ln_f.weight",)),
            TensorRule(i + "ln_f.bias", ("transformer.ln_f.bias",)),
        ]
        if config.is_critic:
            rules.append(TensorRule(i + "head.weight", ("score.weight",)))
        elif not config.tied_embedding:
            rules.append(TensorRule(i + "head.weight", ("lm_head.weight",)))
        return rules
    p = f"transformer.h.{index - 1}."
    pairs = [
        ("attn.ln", "ln_1", False),
        ("attn.qkv", "attn.c_attn", True),
        ("attn.o", "attn.c_proj", True),
        ("mlp.ln", "ln_2", False),
        ("mlp.up", "mlp.c_fc", True),
        ("mlp.down", "mlp.c_proj", True),
    ]
    rules = []
    for ours, hf, conv1d in pairs:
        rules.append(TensorRule(f"{i}{ours}.weight", (f"{p}{hf}.weight",), transpose=conv1d))
        rules.append(TensorRule(f"{i}{ours}.bias", (f"{p}{hf}.bias",)))
    return rules


def _config_from_hf(hf) -> ReaLModelConfig:
    if not getattr(hf, "scale_attn_weights", True) or getattr(hf, "scale_attn_by_inverse_layer_idx", False):
        raise ModelError("gpt2 with scale_attn_weights=false or scale_attn_by_inverse_layer_idx=true is not supported")
    if getattr(hf, "add_cross_attention", False):
        raise ModelError("gpt2 with cross-attention is not supported")
    return ReaLModelConfig(
        n_layers=hf.n_layer,
        hidden_dim=hf.n_embd,
        n_q_heads=hf.n_head,
        n_kv_heads=hf.n_head,
        head_dim=hf.n_embd // hf.n_head,
        intermediate_dim=hf.n_inner or 4 * hf.n_embd,
        vocab_size=hf.vocab_size,
        n_positions=hf.n_positions,
        abs_position_embedding=True,
        norm_type="layer",
        norm_eps=hf.layer_norm_epsilon,
        activation=activation_from_hf(hf.activation_function),
        gated_mlp=False,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tied_embedding=bool(hf.tie_word_embeddings),
    )


def _config_to_hf(config: ReaLModelConfig) -> transformers.GPT2Config:
    shape_ok = config.n_kv_heads == config.n_q_heads and config.q_dim == config.hidden_dim
    flags_ok = config.abs_position_embedding and config.norm_type == "layer" and not config.gated_mlp
    if not (shape_ok and flags_ok and config.qkv_bias and config.o_bias and config.mlp_bias):
        raise ModelError(f"config is not GPT-2 shaped (MHA, absolute positions, LayerNorm, biases): {config}")
    return transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.hidden_dim,
        n_layer=config.n_layers,
        n_head=config.n_q_heads,
        n_inner=config.intermediate_dim,
        activation_function=activation_to_hf(config.activation, tanh_gelu="gelu_new"),
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=config.tied_embedding,
    )


register_hf_family(
    "gpt2",
    model_type="gpt2",
    causal_lm_architecture="GPT2LMHeadModel",
    critic_architecture="GPT2ForSequenceClassification",
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    layer_rules=_rules,
)
