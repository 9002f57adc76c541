"""Turning next-token logits into tokens: greedy, temperature, top-k, top-p.

The processing order is Hugging Face's: temperature, then top-k, then top-p on what
top-k kept. Log-probabilities are taken under the *processed* distribution (the one
actually sampled from); under greedy decoding nothing is processed and they are
log-softmax of the raw logits. The mask of removed tokens is returned so a trainer
can rebuild the same truncated distribution later.

`GenerationConfig` lives in `realflow.api.generation` (interfaces build it).
"""
from __future__ import annotations

import torch

from realflow.api.generation import GenerationConfig


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply top-k then top-p to logits (B, V). Returns (filtered logits, removed mask or None)."""
    removed = None
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        removed = logits < kth
        logits = logits.masked_fill(removed, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Remove a token when the tokens strictly more likely already hold top_p of the mass.
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
        removed = drop if removed is None else removed | drop
    return logits, removed


def sample(
    logits: torch.Tensor, gconfig: GenerationConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pick one token per row of logits (B, V) float32.

    Returns tokens (B,) int64, their log-probabilities (B,) float32 and the removed
    mask (B, V) bool (None when no filter is active).
    """
    if gconfig.greedy:
        tokens = logits.argmax(-1)
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
        return tokens, logprobs, None
    if gconfig.temperature != 1.0:
        logits = logits / gconfig.temperature
    logits, removed = filter_logits(logits, gconfig.top_k, gconfig.top_p)
    logp = logits.log_softmax(-1)
    tokens = draw(logp.exp(), generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1), removed


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probabilities (B, V), by inverting each row's cumulative
    distribution at one uniform number: the first index whose cumulative sum exceeds
    u * total. Tokens of probability 0 (removed by top-k/top-p) are never drawn:
    their cumulative sum equals their predecessor's. (torch.multinomial draws one
    exponential per entry: ~2 ms for 64 rows of 1024 on CPU against ~0.1 ms here;
    sampled generation of the default model is 1.15-1.23x faster.) Cumulative sums in
    float64, so that tail tokens of large vocabularies keep their probability."""
    cdf = probs.to(torch.float64).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=torch.float64) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)
