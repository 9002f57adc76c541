"""Attention kernels for packed sequences and for KV-cache decoding.

Packed: q, k, v are (total_tokens, heads, head_dim) with sequence boundaries in
`cu_seqlens`; attention is causal within each sequence and never crosses one.
- CUDA with flash-attn installed and a half dtype: `flash_attn_varlen_func`.
- Otherwise (CPU): one `scaled_dot_product_attention` call per run of equal-length
  consecutive sequences, on zero-copy 4-D views (4-D inputs take PyTorch's fused
  CPU kernel; 3-D ones fall back to the slow math path). The loop is over
  sequences, never over tokens. Runs of short sequences (<= `SHORT_SEQ` tokens)
  use causal attention written out as batched matmuls instead, which is faster
  there than the fused kernel. When a batch has many more runs than distinct
  lengths (many short sequences of a few lengths in any order, as in SFT on short
  problems), the tokens are first gathered so that equal lengths are adjacent, one
  call per distinct length, and the output scattered back (one gather per input and
  one for the output: cheap beside a kernel call per run).

Decode: one query per sequence against a preallocated cache; grouped-query heads
are folded into the query-length axis so the cache is never repeated.

Not here: projections, rotary, caches (see layers.py and generate.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

try:  # GPU tier only; the CPU path never needs it.
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_varlen_func = None


@dataclass(frozen=True)
class PackedSeqs:
    """Sequence boundaries of a packed batch, on device and on host."""

    cu_seqlens: torch.Tensor  # (n_seqs + 1,) int32, on the compute device
    bounds: tuple[int, ...]  # the same numbers as Python ints
    max_seqlen: int

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor) -> "PackedSeqs":
        bounds = tuple(int(b) for b in cu_seqlens.tolist())
        lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
        return cls(cu_seqlens.to(torch.int32), bounds, max(lengths, default=0))

    @property
    def n_seqs(self) -> int:
        return len(self.bounds) - 1

    @property
    def lengths(self) -> list[int]:
        return [e - s for s, e in zip(self.bounds[:-1], self.bounds[1:])]

    def runs(self) -> list[tuple[int, int, int]]:
        """Runs of consecutive equal-length sequences as (start_token, n_seqs, length)."""
        return _runs(self.bounds[:-1], self.lengths)

    @functools.cached_property
    def length_groups(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]] | None:
        """How to gather equal-length sequences together, or None where that saves
        little (fewer than `GROUP_MIN_RUNS` runs, or at most twice as many runs as
        distinct lengths).

        Returns (order, inverse, runs): `x.index_select(0, order)` puts the tokens of
        the sequences in order of length (stable), `y.index_select(0, inverse)` puts
        them back, and `runs` are the runs of the gathered order (as `runs()`).
        Computed once per forward and shared by every block.
        """
        lengths = self.lengths
        n_runs, n_distinct = len(self.runs()), len(set(lengths))
        if n_runs < GROUP_MIN_RUNS or n_runs <= 2 * n_distinct:
            return None
        device = self.cu_seqlens.device
        by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
        sorted_lens = [lengths[i] for i in by_length]
        new_starts = [0]
        for n in sorted_lens[:-1]:
            new_starts.append(new_starts[-1] + n)
        # Token t of the gathered order comes from old_start + (t - new_start) of its sequence.
        shift = torch.tensor([self.bounds[i] - ns for i, ns in zip(by_length, new_starts)], device=device)
        total = self.bounds[-1]
        order = torch.arange(total, device=device) + torch.repeat_interleave(
            shift, torch.tensor(sorted_lens, device=device), output_size=total
        )
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(total, device=device)
        return order, inverse, _runs(new_starts, sorted_lens)


# Gathering costs a copy of q, k, v and the output; below this many kernel calls
# per block it does not pay.
GROUP_MIN_RUNS = 8


def _runs(starts: Sequence[int], lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    runs: list[tuple[int, int, int]] = []
    for s, length in zip(starts, lengths):
        if runs and runs[-1][2] == length:
            start, count, _ = runs[-1]
            runs[-1] = (start, count + 1, length)
        else:
            runs.append((s, 1, length))
    return runs


def _use_flash(q: torch.Tensor) -> bool:
    return flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def packed_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqs: PackedSeqs, scale: float
) -> torch.Tensor:
    """Causal attention within each packed sequence.

    q: (T, n_q_heads, head_dim); k, v: (T, n_kv_heads, head_dim).
    Returns (T, n_q_heads, head_dim).
    """
    if _use_flash(q):
        return flash_attn_varlen_func(
            q, k, v, seqs.cu_seqlens, seqs.cu_seqlens, seqs.max_seqlen, seqs.max_seqlen,
            softmax_scale=scale, causal=True,
        )
    groups = seqs.length_groups
    if groups is not None:
        order, inverse, runs = groups
        out = _attention_by_runs(q.index_select(0, order), k.index_select(0, order), v.index_select(0, order),
                                 runs, scale)
        return out.index_select(0, inverse)
    return _attention_by_runs(q, k, v, seqs.runs(), scale)


def _attention_by_runs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, runs: list[tuple[int, int, int]], scale: float
) -> torch.Tensor:
    """One attention call per run of equal-length sequences laid out back to back:
    PyTorch's fused SDPA, or three batched matmul-sized ops for short sequences."""
    gqa = q.shape[1] != k.shape[1]
    # One split per input (not a slice per run): autograd then joins the gradients of
    # all runs with a single cat, where per-run slices would each zero-fill and add a
    # full-size gradient (quadratic in the number of runs).
    sizes = [count * length for _, count, length in runs]
    outs = []
    for (_, count, length), qr, kr, vr in zip(runs, q.split(sizes), k.split(sizes), v.split(sizes)):
        if length == 0:
            continue

        def heads_first(x: torch.Tensor) -> torch.Tensor:
            # (count * length, h, d) -> (count, h, length, d), a view
            return x.view(count, length, x.shape[1], x.shape[2]).transpose(1, 2)

        if length <= SHORT_SEQ:
            o = _short_causal_attention(heads_first(qr), heads_first(kr), heads_first(vr), scale)
        else:
            o = F.scaled_dot_product_attention(
                heads_first(qr), heads_first(kr), heads_first(vr), is_causal=True, scale=scale, enable_gqa=gqa
            )  # (count, n_q_heads, length, head_dim)
        outs.append(o.transpose(1, 2).reshape(count * length, q.shape[1], q.shape[2]))
    # (The fused kernel's output is laid out token-major, so its reshape is free; the
    # written-out path's is not, and callers view the result as (T, n_q * d).)
    return outs[0].contiguous() if len(outs) == 1 else torch.cat(outs, dim=0)


# Up to this length, causal attention as baddbmm + softmax + bmm (forward and
# backward) beats the fused CPU kernel, whose fixed block sizes waste work on short
# sequences: measured at 2 threads, 4 heads of 32: 3.2x faster at 13 tokens, 1.5x
# at 64, even at 128, slower beyond.
SHORT_SEQ = 64


def _short_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention written out. q (count, n_q, L, d); k, v (count, n_kv, L, d);
    returns (count, n_q, L, d). The query heads sharing a kv head are folded into
    the query axis (as in `decode_attention`), so keys are never repeated. Memory:
    the attention weights, n_q * L floats per token (L <= SHORT_SEQ), are kept for
    backward, where the fused kernel keeps one per head; beside a block's other
    activations that is small at these lengths."""
    count, n_q, length, d = q.shape
    n_kv = k.shape[1]
    group = n_q // n_kv
    q3 = q.reshape(count * n_kv, group * length, d)
    k3 = k.reshape(count * n_kv, length, d)
    v3 = v.reshape(count * n_kv, length, d)
    mask = _causal_bias(length, group, q.dtype, q.device)  # (group * L, L)
    scores = torch.baddbmm(mask.expand(count * n_kv, -1, -1), q3, k3.transpose(1, 2), alpha=scale)
    return torch.bmm(scores.softmax(-1), v3).view(count, n_q, length, d)


@functools.lru_cache(maxsize=64)
def _causal_bias(length: int, group: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(group * length, length): 0 on and below the diagonal, -inf above, for every
    query head of a group."""
    bias = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)
    return bias.repeat(group, 1)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """One new query per sequence against its cached keys and values.

    q: (B, n_q_heads, head_dim); k_cache, v_cache: (B, n_kv_heads, L, head_dim);
    bias: (B * n_kv_heads, 1, L) float, 0 where a cache slot holds a token of that
    sequence and -inf elsewhere. Returns (B, n_q_heads, head_dim).

    Three batched matmul-sized ops. Measured in the decode loop on CPU (2 threads),
    this is 15% faster than one fused SDPA call with the group folded into the query
    axis for a 0.1M-parameter model and as fast at 3M; SDPA with one query per head
    and `enable_gqa` is slower still.
    """
    b, n_q, d = q.shape
    n_kv, length = k_cache.shape[1], k_cache.shape[2]
    group = n_q // n_kv
    # Query head h uses kv head h // group: fold the group into the query axis.
    q3 = q.reshape(b * n_kv, group, d)
    k3 = k_cache.reshape(b * n_kv, length, d)  # a view: only the column axis was sliced
    v3 = v_cache.reshape(b * n_kv, length, d)
    scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)  # (B * n_kv, group, L)
    out = torch.bmm(scores.softmax(-1), v3)  # (B * n_kv, group, head_dim)
    return out.view(b, n_q, d)
