"""Rotary position embeddings on packed tensors.

The inverse frequencies follow Hugging Face's formulas bit for bit (default, linear
and llama3 scaling) so logits match HF within float rounding. cos/sin are computed
once per forward from the position ids and shared by every block.
"""
from __future__ import annotations

import math

import torch

from realflow.model.config import ReaLModelConfig


def inv_frequencies(config: ReaLModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse rotary frequencies, shape (head_dim // 2,), float32."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim
    inv_freq = 1.0 / (config.rotary_base**exponents)
    scaling = config.rotary_scaling
    if scaling is None:
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate between.
    old_len = scaling.original_max_positions
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_cos_sin(
    inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and *signed* sin for each position, each (n_positions, 1, head_dim) in `dtype`.

    HF rotates with x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
    With signed_sin = [-sin, sin] that is x * cos + roll(x) * signed_sin: three ops
    instead of five, computed once per forward for all blocks. The middle axis
    broadcasts over the heads of a (tokens, heads, head_dim) tensor.
    """
    freqs = position_ids[:, None].to(torch.float32) * inv_freq[None, :]  # (T, head_dim/2)
    sin = freqs.sin()
    cos = freqs.cos().repeat(1, 2)  # (T, head_dim)
    signed_sin = torch.cat((-sin, sin), dim=-1)
    return cos.to(dtype)[:, None, :], signed_sin.to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (tokens, heads, head_dim) by the angles in cos/signed_sin (tokens, 1, head_dim)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)
