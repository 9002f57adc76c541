"""A preallocated key/value cache for batched generation, and the per-step tables
decoding reads from it.

Layout: one tensor for keys and one for values, (n_layers, batch, n_kv_heads,
capacity, head_dim). Prompts are stored *right-aligned*: prompt b of length L_b
occupies columns [P - L_b, P) where P is the longest prompt, so every decode step
writes all sequences at the same column (a plain slice copy, no scatter) and the
attention bias is fixed once at prefill. Rotary positions are per sequence and do
not depend on the column; their cos/sin are tabulated once per generation so that a
decode step looks them up with one `index_select`.

Not here: sampling and the decode loop (generate.py), the attention math
(attention.py).
"""
from __future__ import annotations

import torch

from realflow.model.config import ReaLModelConfig
from realflow.model.rotary import inv_frequencies, rotary_cos_sin


class KVCache:
    """Keys and values of every block for a batch of sequences being generated."""

    def __init__(
        self,
        config: ReaLModelConfig,
        prompt_lens: torch.Tensor,
        max_new_tokens: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        batch = int(prompt_lens.numel())
        self.prompt_width = int(prompt_lens.max()) if batch else 0
        self.capacity = self.prompt_width + max_new_tokens
        shape = (config.n_layers, batch, config.n_kv_heads, self.capacity, config.head_dim)
        # Zeros, not empty: left-padding slots are read (under a -inf mask), and
        # garbage there could be NaN, which a zero attention weight does not cancel.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._split_blocks()
        prompt_lens = prompt_lens.to(device=device, dtype=torch.long)
        first = self.prompt_width - prompt_lens  # (B,) first valid column of each row
        cols = torch.arange(self.capacity, device=device)
        hidden = cols[None, :] < first[:, None]  # (B, capacity): left padding
        # Additive attention bias, one row per (sequence, kv head) as decode attention
        # batches them: 0 on a sequence's own slots, -inf on its left padding.
        self.n_kv_heads = config.n_kv_heads
        bias = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))
        self.bias = bias.repeat_interleave(config.n_kv_heads, dim=0)[:, None, :]  # (B * n_kv, 1, capacity)
        # cos and signed sin of every position a sequence can reach, stacked:
        # (longest prompt + max_new_tokens, 2, head_dim); None with absolute positions.
        self.rotary: torch.Tensor | None = None
        if not config.abs_position_embedding:
            cos, sin = rotary_cos_sin(inv_frequencies(config, device), cols, dtype)
            self.rotary = torch.cat((cos, sin), dim=1)
        # Where each packed prompt token goes: row b, column first_b + position.
        rows = torch.repeat_interleave(torch.arange(batch, device=device), prompt_lens)
        starts = torch.cumsum(prompt_lens, 0) - prompt_lens
        pos = torch.arange(int(prompt_lens.sum()), device=device) - torch.repeat_interleave(starts, prompt_lens)
        self._prefill_rows = rows
        self._prefill_cols = first[rows] + pos
        # Column the next decoded token is written to; None while prefilling.
        self.column: int | None = None

    def _split_blocks(self) -> None:
        # Per-block views, made once: a decode step should not pay for re-slicing.
        self._k_blocks, self._v_blocks = self.k.unbind(0), self.v.unbind(0)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the sequences `rows` (indices into the current batch), in that order."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self._split_blocks()
        n_kv, capacity = self.n_kv_heads, self.capacity
        self.bias = self.bias.view(-1, n_kv, capacity)[rows].view(-1, 1, capacity)

    def rotary_at(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin at position_ids (B,), each (B, 1, head_dim) (see rotary.apply_rotary)."""
        assert self.rotary is not None, "a model with absolute positions has no rotary table"
        both = self.rotary.index_select(0, position_ids)  # (B, 2, head_dim), one lookup for both
        return both[:, :1], both[:, 1:]

    def store_prefill(self, block: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write packed prompt keys/values (T, n_kv_heads, head_dim) of block `block` (1-based)."""
        self._k_blocks[block - 1][self._prefill_rows, :, self._prefill_cols] = k
        self._v_blocks[block - 1][self._prefill_rows, :, self._prefill_cols] = v

    def append(
        self, block: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one decoded token per row (B, n_kv_heads, head_dim) at the current column.

        Returns the cached keys, values (B, n_kv_heads, column + 1, head_dim) and the
        attention bias (B * n_kv_heads, 1, column + 1) to attend over them with.
        """
        col = self.column
        assert col is not None and col < self.capacity, (col, self.capacity)
        k_cache, v_cache = self._k_blocks[block - 1], self._v_blocks[block - 1]
        k_cache.select(2, col).copy_(k)
        v_cache.select(2, col).copy_(v)
        end = col + 1
        return k_cache[:, :, :end], v_cache[:, :, :end], self.bias[..., :end]
