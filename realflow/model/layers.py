"""The three kinds of ReaLModel layers: embedding, transformer block, head.

Each layer owns its parameters under short, stable names (the parameter-key
contract of docs/model.md):

    embedding  wte.weight, wpe.weight (absolute positions only)
    block      attn.ln.{weight,bias}, attn.qkv.{weight,bias}, attn.o.{weight,bias},
               mlp.ln.{weight,bias}, mlp.gate_up.{weight,bias} (gated) or
               mlp.up.{weight,bias}, mlp.down.{weight,bias}
    head       ln_f.{weight,bias}, head.weight (absent when tied to wte)

(biases only where the config asks for them; LayerNorm has a bias, RMSNorm not).
q/k/v and gate/up are fused along the output dimension in that order; the layout
is owned by realflow.model.sharding.

Activations are packed: (total_tokens, hidden) everywhere; no padding. The decode
step of generation runs the same math through decoder.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from realflow.model.attention import PackedSeqs, packed_causal_attention
from realflow.model.config import ReaLModelConfig
from realflow.model.kv_cache import KVCache
from realflow.model.rotary import apply_rotary

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class LayerContext:
    """What every block of one packed forward call shares (training, inference,
    generation prefill). Decode steps run through decoder.py instead."""

    seqs: PackedSeqs
    cos: torch.Tensor | None  # (T, 1, head_dim) rotary, None for absolute positions
    sin: torch.Tensor | None  # (T, 1, head_dim) signed sin, see rotary.rotary_cos_sin
    cache: KVCache | None = None  # prefill: store keys and values here


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Hugging Face's Llama does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out: HF's formula op for op. (F.rms_norm is the same ops in one call on
        # CPU, bitwise equal in fp32 but not in half dtypes; it measured no faster here.)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config: ReaLModelConfig) -> nn.Module:
    if config.norm_type == "rms":
        return RMSNorm(config.hidden_dim, config.norm_eps)
    return nn.LayerNorm(config.hidden_dim, eps=config.norm_eps)


def _uninitialised_embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding without its N(0, 1) initialisation (ReaLModel initialises or loads
    every parameter in its flat buffer). Layers are built on the meta device, where
    `normal_` imports torch._dynamo on first use: ~2-3 s of every process's first
    model build, for numbers that are thrown away."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


class Embedding(nn.Module):
    """Layer 0: token (and absolute position) embeddings.

    `tokens_only` builds just `wte`: the copy a pipeline stage holding a tied head
    (but not layer 0) keeps under the same key, `0.wte.weight`.
    """

    def __init__(self, config: ReaLModelConfig, tokens_only: bool = False) -> None:
        super().__init__()
        self.wte = _uninitialised_embedding(config.vocab_size, config.hidden_dim)
        with_positions = config.abs_position_embedding and not tokens_only
        self.wpe = _uninitialised_embedding(config.n_positions, config.hidden_dim) if with_positions else None

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(input_ids)  # (T, hidden)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        return x


def linear_residual(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """residual + linear(x), with the residual add riding in the GEMM (one op, not two)."""
    out = torch.addmm(residual, x, linear.weight.t())
    return out if linear.bias is None else out + linear.bias


def split_qkv_rotary(
    qkv: torch.Tensor, n_q: int, n_kv: int, head_dim: int, cos: torch.Tensor | None, sin: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused projection (T, (n_q + 2 n_kv) * head_dim) -> rotated q (T, n_q, head_dim),
    k, v (T, n_kv, head_dim): views, no copies beyond the rotation. Shared by the
    packed forward and the decode step (decoder.py)."""
    qk, v = qkv.view(qkv.shape[0], n_q + 2 * n_kv, head_dim).split((n_q + n_kv, n_kv), dim=1)  # one cat in backward
    if cos is not None:
        qk = apply_rotary(qk, cos, sin)  # q and k heads in one go
    q, k = qk.split((n_q, n_kv), dim=1)
    return q, k, v


class Attention(nn.Module):
    """Pre-norm self-attention with fused qkv: x -> x + o(attn(ln(x)))."""

    def __init__(self, config: ReaLModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_q, self.n_kv, self.head_dim = config.n_q_heads, config.n_kv_heads, config.head_dim
        self.scale = config.head_dim**-0.5
        self.ln = make_norm(config)
        self.qkv = nn.Linear(config.hidden_dim, sum(config.qkv_sections), bias=config.qkv_bias)
        self.o = nn.Linear(config.q_dim, config.hidden_dim, bias=config.o_bias)

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """Packed: x (T, hidden) of the sequences in ctx.seqs."""
        qkv = F.linear(self.ln(x), self.qkv.weight, self.qkv.bias)
        q, k, v = split_qkv_rotary(qkv, self.n_q, self.n_kv, self.head_dim, ctx.cos, ctx.sin)
        if ctx.cache is not None:
            ctx.cache.store_prefill(self.layer_idx, k, v)
        out = packed_causal_attention(q, k, v, ctx.seqs, self.scale)  # (T, n_q, head_dim)
        return linear_residual(x, out.view(x.shape[0], self.n_q * self.head_dim), self.o)


class MLP(nn.Module):
    """Pre-norm feed-forward, gated (gate/up fused) or plain: x -> x + mlp(ln(x))."""

    def __init__(self, config: ReaLModelConfig) -> None:
        super().__init__()
        self.ln = make_norm(config)
        self.act = _ACTIVATIONS[config.activation]
        self.gated = config.gated_mlp
        width = config.intermediate_dim
        if self.gated:
            self.gate_up = nn.Linear(config.hidden_dim, 2 * width, bias=config.mlp_bias)
        else:
            self.up = nn.Linear(config.hidden_dim, width, bias=config.mlp_bias)
        self.down = nn.Linear(width, config.hidden_dim, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        if self.gated:
            gate, up = F.linear(h, self.gate_up.weight, self.gate_up.bias).chunk(2, dim=-1)  # (T, width) each
            h = self.act(gate) * up
        else:
            h = self.act(F.linear(h, self.up.weight, self.up.bias))
        return linear_residual(x, h, self.down)


class Block(nn.Module):
    """Layers 1..n_layers: attention then MLP, each with its residual."""

    def __init__(self, config: ReaLModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = Attention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        return self.mlp(self.attn(x, ctx))


class Head(nn.Module):
    """Layer n_layers + 1: final norm, then LM head (vocab logits) or value head (1 output)."""

    def __init__(self, config: ReaLModelConfig) -> None:
        super().__init__()
        self.is_critic = config.is_critic
        self.ln_f = make_norm(config)
        out = 1 if config.is_critic else config.vocab_size
        self.head = None if config.tied_embedding else nn.Linear(config.hidden_dim, out, bias=False)

    def forward(self, x: torch.Tensor, tied_weight: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_f(x)
        if self.head is None:
            assert tied_weight is not None, "tied head needs the embedding weight"
            return F.linear(h, tied_weight)  # (T, vocab)
        out = self.head(h)
        return out.squeeze(-1) if self.is_critic else out  # (T,) or (T, vocab)
