"""The decode step of generation: one token per sequence through a whole ReaLModel,
with its weights prepared once per `generate` call.

A decode step runs a small batch (one row per sequence) through every layer, so on
CPU it is bound by how fast small GEMMs read the weights and by how many ops it
issues. `Decoder` is built after the prefill and holds, per block, plain callables
and tensors (no `nn.Module.__call__` or attribute chains in the loop):

- linears go through `PreparedLinear`: on CPU in float32 the weights are reordered
  once into oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the
  kernel inductor's weight prepacking uses) and every step calls oneDNN's GEMM on
  them, with the residual add fused into it. At 32 rows and 2 threads that GEMM is
  1.1-1.6x faster than MKL's on the unpacked weights (`F.linear`/`addmm`) for
  weights of 0.25-2M elements, but each call costs ~20 us more, so weights under
  `ONEDNN_MIN_WEIGHT` elements stay on `F.linear`/`addmm`, as does everything off
  CPU/float32 or with mkldnn disabled (`torch.backends.mkldnn.flags(enabled=False)`).
  The prepared copy lives as long as the `Decoder` (one generation; the weights are
  held twice meanwhile); the model's own parameters are untouched, so training in
  between two generations needs nothing.
- float32 RMSNorm is one `F.rms_norm` call (bitwise equal to the written-out HF
  formula in float32, which takes eight ops); other dtypes keep HF's formula.

The math is the packed forward's (layers.py) op for op up to the GEMM kernel, and
the tests hold generation to Hugging Face's tokens and logits.

Not here: the loop, sampling and stopping (generate.py), the cache (kv_cache.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from realflow.model.attention import decode_attention
from realflow.model.kv_cache import KVCache
from realflow.model.layers import Block, RMSNorm, split_qkv_rotary
from realflow.model.real_model import ReaLModel

_HAS_ONEDNN = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


# A oneDNN call costs ~20 us more than an MKL one of the same size, which the faster
# GEMM repays only on larger weights (measured at 1-128 rows, 1-2 threads: the
# crossover is 0.1-0.25M elements at 32 rows, ~0.5M at 1 row).
ONEDNN_MIN_WEIGHT = 200_000  # elements


def use_onednn(weight: torch.Tensor) -> bool:
    """Whether `PreparedLinear` prepacks this weight for oneDNN (CPU, float32, large
    enough). `torch.backends.mkldnn.flags(enabled=False)` turns it off."""
    return (
        _HAS_ONEDNN
        and torch.backends.mkldnn.enabled
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.numel() >= ONEDNN_MIN_WEIGHT
    )


class PreparedLinear:
    """x @ weight.T + bias for a fixed weight, with the fastest kernel available."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch: int) -> None:
        self.weight, self.bias = weight, bias  # (out, in), (out,)
        # `batch` is oneDNN's hint for the layout; other row counts work (rows leave
        # the decode batch as sequences stop).
        self.packed = (
            torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(batch, 1)) if use_onednn(weight) else None
        )

    @classmethod
    def of(cls, linear: nn.Linear, batch: int) -> "PreparedLinear":
        return cls(linear.weight, linear.bias, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) -> (B, out)."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + self(x), the add fused into the GEMM."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed, self.bias, "add")
        out = torch.addmm(residual, x, self.weight.t())
        return out if self.bias is None else out + self.bias


def prepared_norm(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm as one callable; float32 RMSNorm as a single `F.rms_norm` op."""
    if isinstance(norm, RMSNorm) and norm.weight.dtype == torch.float32:
        weight, eps, shape = norm.weight, norm.eps, tuple(norm.weight.shape)
        return lambda x: F.rms_norm(x, shape, weight, eps)
    return norm.forward


class _BlockStep:
    """A block's decode step: x (B, hidden) -> x (B, hidden), appending to the cache."""

    def __init__(self, block: Block, batch: int) -> None:
        attn, mlp = block.attn, block.mlp
        self.index = attn.layer_idx
        self.heads = (attn.n_q, attn.n_kv, attn.head_dim)
        self.scale = attn.scale
        self.attn_norm = prepared_norm(attn.ln)
        self.qkv = PreparedLinear.of(attn.qkv, batch)
        self.o = PreparedLinear.of(attn.o, batch)
        self.mlp_norm = prepared_norm(mlp.ln)
        self.gated = mlp.gated
        self.up = PreparedLinear.of(mlp.gate_up if mlp.gated else mlp.up, batch)
        self.down = PreparedLinear.of(mlp.down, batch)
        self.act = mlp.act

    def __call__(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, cache: KVCache
    ) -> torch.Tensor:
        n_q, n_kv, head_dim = self.heads
        q, k, v = split_qkv_rotary(self.qkv(self.attn_norm(x)), n_q, n_kv, head_dim, cos, sin)
        k_all, v_all, bias = cache.append(self.index, k, v)
        out = decode_attention(q, k_all, v_all, bias, self.scale)  # (B, n_q, head_dim)
        x = self.o.add(out.view(x.shape[0], n_q * head_dim), x)
        h = self.up(self.mlp_norm(x))
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # (B, width) each
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down.add(h, x)


class Decoder:
    """`decoder(token_ids (B,), position_ids (B,), cache) -> logits (B, vocab)` for a
    whole actor model; build it after the prefill, once per generation."""

    def __init__(self, model: ReaLModel, batch: int) -> None:
        config = model.config
        embedding, head = model.layer(0), model.layer(config.head_index)
        self.wte = embedding.wte.weight  # (vocab, hidden)
        self.wpe = None if embedding.wpe is None else embedding.wpe.weight
        self.blocks = [_BlockStep(model.layer(i), batch) for i in range(1, config.head_index)]
        self.final_norm = prepared_norm(head.ln_f)
        self.lm_head = PreparedLinear(self.wte if config.tied_embedding else head.head.weight, None, batch)

    def linears(self) -> list[PreparedLinear]:
        """Every GEMM of a decode step, in order (the model benchmark times them alone)."""
        return [lin for b in self.blocks for lin in (b.qkv, b.o, b.up, b.down)] + [self.lm_head]

    def __call__(self, token_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        x = F.embedding(token_ids, self.wte)  # (B, hidden)
        if self.wpe is not None:
            x = x + F.embedding(position_ids, self.wpe)
        cos = sin = None
        if cache.rotary is not None:
            cos, sin = cache.rotary_at(position_ids)  # (B, 1, head_dim) each
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        return self.lm_head(self.final_norm(x))
