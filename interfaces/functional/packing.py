"""Packed-sequence helpers: offsets, per-token <-> per-sequence, masked statistics.

A packed tensor holds the tokens of several sequences back to back along dim 0,
without padding. `cu_seqlens` (int, shape (n_seqs + 1,)) holds the offsets, as in
FlashAttention: sequence i is ``x[cu_seqlens[i]:cu_seqlens[i + 1]]``.

Two layouts occur in RL. *Token-aligned* tensors (input ids, values from a critic)
have one entry per token, L per sequence. *Action-aligned* tensors (log-probs,
rewards, advantages, loss masks) have one entry per predicted token, L - 1 per
sequence: entry i is about token i + 1 given tokens 0..i. `gather_packed_logprobs`
turns token-aligned logits into action-aligned log-probs; `shift_cu_seqlens` gives
the offsets of the action-aligned layout; `drop_last_token` / `last_token` convert
token-aligned tensors.

Statistics here are local to one process; a data-parallel engine reduces them.
"""
from __future__ import annotations

from typing import Callable

import torch


def seqlens_to_cu_seqlens(seqlens: torch.Tensor | list[int]) -> torch.Tensor:
    """(n,) lengths -> (n + 1,) int64 offsets starting at 0."""
    seqlens = torch.as_tensor(seqlens, dtype=torch.long)
    return torch.nn.functional.pad(seqlens.cumsum(0), (1, 0))


def cu_seqlens_to_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(n + 1,) offsets -> (n,) lengths."""
    return cu_seqlens[1:] - cu_seqlens[:-1]


def shift_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Offsets of the action-aligned layout (each sequence one entry shorter)."""
    return cu_seqlens - torch.arange(cu_seqlens.numel(), device=cu_seqlens.device, dtype=cu_seqlens.dtype)


def segment_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(total,) index of the sequence each packed entry belongs to."""
    lens = cu_seqlens_to_seqlens(cu_seqlens)
    return torch.repeat_interleave(torch.arange(lens.numel(), device=cu_seqlens.device), lens)


def broadcast_to_tokens(per_seq: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(n, ...) per-sequence values -> (total, ...) per-entry values."""
    return torch.repeat_interleave(per_seq, cu_seqlens_to_seqlens(cu_seqlens), dim=0)


def _nonempty(cu_seqlens: torch.Tensor, what: str) -> None:
    if bool((cu_seqlens[1:] <= cu_seqlens[:-1]).any()):
        raise ValueError(f"{what} needs every sequence to be non-empty; lengths: "
                         f"{cu_seqlens_to_seqlens(cu_seqlens).tolist()}")


def last_token(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(total, ...) -> (n, ...): the last entry of each (non-empty) sequence."""
    _nonempty(cu_seqlens, "last_token")
    return x[cu_seqlens[1:] - 1]


def drop_last_token(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Token-aligned (total, ...) -> action-aligned (total - n, ...): drop each sequence's last entry."""
    _nonempty(cu_seqlens, "drop_last_token")
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    keep[cu_seqlens[1:] - 1] = False
    return x[keep]


def gather_packed_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each next token, packed in the action-aligned layout.

    ``out[j] = log softmax(logits[i] / temperature)[input_ids[i + 1]]`` for every
    position i that is not the last of its sequence, so each sequence of length L
    yields L - 1 entries (offsets: `shift_cu_seqlens(cu_seqlens)`).

    logits: (total, vocab) from the model on the packed `input_ids` (total,), unshifted.
    Computed as gathered logit minus logsumexp, in float32 at least.
    """
    if logits.shape[0] != input_ids.shape[0]:
        raise ValueError(f"logits cover {logits.shape[0]} tokens but input_ids has {input_ids.shape[0]}")
    _nonempty(cu_seqlens, "gather_packed_logprobs")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature != 1.0:
        logits = logits / temperature
    next_ids = torch.roll(input_ids, -1)  # the wrapped entries are the dropped last positions
    logp = logits.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (total,)
    return drop_last_token(logp, cu_seqlens)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over entries where `mask` is true (0 when none are)."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_normalize(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-5,
    shift_mean: bool = True,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Whiten `x` over the masked entries: ``(x - mean) / sqrt(var + eps)``.

    mean and (population, i.e. biased) variance are taken over entries where `mask`
    is true; masked-out entries come back as 0. With ``shift_mean=False`` the mean
    is added back (scale only). This is advantage/value normalisation as in
    OpenAI lm-human-preferences `whiten` and ReaL `masked_normalization`.

    `reduce` sums a tensor over the shards of a batch (a data-parallel engine's
    `dp_sum`): the mean and variance are then those of the whole batch.
    """
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    w = m.to(xf.dtype)
    total = lambda t: t if reduce is None else reduce(t)  # noqa: E731
    sums = total(torch.stack([w.sum(), (xf * w).sum()]))
    n = sums[0].clamp(min=1)
    mean = sums[1] / n
    var = total((((xf - mean) * w) ** 2).sum()) / n
    out = (xf - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out)).to(x.dtype)
