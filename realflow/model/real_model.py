"""ReaLModel: a packed decoder-only transformer living in one flat buffer.

The model is an ordered list of layers registered under their global index:
`0` embedding, `1..n_layers` blocks, `n_layers + 1` head. A pipeline stage is the
same class built over a contiguous index range; its parameter keys keep the global
indices (`3.attn.qkv.weight` is the same tensor in every layout), which is what
reallocation relies on.

Input is packed: 1-D token ids (total_tokens,) and `cu_seqlens` (n_seqs + 1,)
int32; attention is causal within each sequence and never across. There is no
padding anywhere. All parameters are views into `flat_params` (see flat_buffer.py);
gradients can be made views into `flat_grads`.

Not here: HF conversion (families/, hf_io.py), generation (generate.py, decoder.py),
tensor or pipeline parallel execution (realflow.parallel).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from realflow.api.errors import DataError, ModelError
from realflow.model.attention import PackedSeqs
from realflow.model.config import ReaLModelConfig
from realflow.model.flat_buffer import FlatLayout, bind_gradients, bind_parameters, param_intervals
from realflow.model.kv_cache import KVCache
from realflow.model.layers import Block, Embedding, Head, LayerContext
from realflow.model.rotary import inv_frequencies, rotary_cos_sin


def _make_layer(config: ReaLModelConfig, index: int) -> nn.Module:
    if index == 0:
        return Embedding(config)
    if index == config.head_index:
        return Head(config)
    return Block(config, index)


def _build_layers(module: nn.Module, config: ReaLModelConfig, indices: range) -> None:
    with torch.device("meta"):
        if config.tied_embedding and config.head_index in indices and 0 not in indices:
            # The tied head's weight is `0.wte.weight`; this stage keeps its own copy of
            # it under that key (a replica whose gradient the pipeline must all-reduce).
            module.add_module("0", Embedding(config, tokens_only=True))
        for i in indices:
            module.add_module(str(i), _make_layer(config, i))


def packed_position_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position of every token within its own sequence, (total,) int64."""
    cu = cu_seqlens.to(torch.long)
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    return torch.arange(total, device=cu.device) - starts


def _check_packed(input_ids: torch.Tensor, seqs: PackedSeqs, hidden_dim: int, takes_ids: bool) -> None:
    b = seqs.bounds
    if len(b) < 2 or b[0] != 0 or any(e < s for s, e in zip(b[:-1], b[1:])):
        raise DataError(f"cu_seqlens must start at 0 and be non-decreasing with >= 2 entries, got {list(b)[:8]}...")
    if takes_ids and input_ids.dim() != 1:
        raise DataError(f"input_ids must be 1-D packed (total_tokens,), got shape {tuple(input_ids.shape)}")
    if not takes_ids and (input_ids.dim() != 2 or input_ids.shape[1] != hidden_dim):
        raise DataError(f"this stage takes hidden states (total_tokens, {hidden_dim}), got {tuple(input_ids.shape)}")
    if input_ids.shape[0] != b[-1]:
        raise DataError(f"cu_seqlens ends at {b[-1]} but the packed input has {input_ids.shape[0]} tokens")


class ReaLModel(nn.Module):
    """Layers `layer_range` (default: all) of a model with `config`.

    Parameters are allocated once, in `flat_params` (dtype, device), and initialised
    with N(0, init_std) (norm weights 1, biases 0) unless init_std is None, in which
    case they are left uninitialised for a checkpoint to fill.
    """

    def __init__(
        self,
        config: ReaLModelConfig,
        layer_range: tuple[int, int] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        init_std: float | None = 0.02,
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_indices = config.layer_range(*(layer_range or (None, None)))
        _build_layers(self, config, self.layer_indices)
        self.layout = FlatLayout.from_module(self)
        self.flat_params = torch.empty(self.layout.numel, dtype=dtype, device=device)
        bind_parameters(self, self.flat_params, self.layout, replace=True)
        self.flat_grads: torch.Tensor | None = None
        self.gradient_checkpointing = False
        self._inv_freq = None if config.abs_position_embedding else inv_frequencies(config, self.flat_params.device)
        if init_std is not None:
            self.init_weights(init_std)

    # ----------------------------------------------------------------- structure
    @staticmethod
    def layout_for(config: ReaLModelConfig, layer_range: tuple[int, int] | None = None) -> FlatLayout:
        """The flat layout of a model or stage without allocating it (built on meta)."""
        holder = nn.Module()
        _build_layers(holder, config, config.layer_range(*(layer_range or (None, None))))
        return FlatLayout.from_module(holder)

    def layers(self) -> Iterator[tuple[int, nn.Module]]:
        """(index, layer) for the layers this model runs, in order."""
        for index in self.layer_indices:
            yield index, self._modules[str(index)]

    def held_layers(self) -> list[int]:
        """Indices of the layers whose parameters this model holds (layer_indices, plus
        0 for the tied-embedding copy of a last stage)."""
        return [int(name) for name in self._modules]

    def layer(self, index: int) -> nn.Module:
        if index not in self.layer_indices:
            raise ModelError(f"layer {index} is not in this model's layers {self.layer_indices}")
        return self._modules[str(index)]

    @property
    def dtype(self) -> torch.dtype:
        return self.flat_params.dtype

    @property
    def device(self) -> torch.device:
        return self.flat_params.device

    def param_intervals(self, keys: list[str] | None = None, tp_rank: int = 0, tp_size: int = 1) -> np.ndarray:
        """See `flat_buffer.param_intervals`; keys default to all, in layout order."""
        return param_intervals(self.layout, self.config, self.layout.keys if keys is None else keys, tp_rank, tp_size)

    # ------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        for key, p in self.named_parameters():
            module_path, _, kind = key.rpartition(".")
            is_norm = module_path.endswith(".ln") or module_path.endswith(".ln_f")
            if is_norm and kind == "weight":
                p.fill_(1.0)
            elif kind == "bias":
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)

    # ------------------------------------------------------------- flat buffers
    def enable_flat_grads(self) -> torch.Tensor:
        """Allocate `flat_grads` (zeros) and make every `.grad` a view of it."""
        if self.flat_grads is None:
            self.flat_grads = torch.zeros_like(self.flat_params)
        bind_gradients(self, self.flat_grads, self.layout)
        return self.flat_grads

    def zero_grad(self, set_to_none: bool = True) -> None:
        """With flat grads: zero the buffer and keep the views (set_to_none is ignored)."""
        if self.flat_grads is None:
            super().zero_grad(set_to_none=set_to_none)
            return
        self.flat_grads.zero_()
        bind_gradients(self, self.flat_grads, self.layout)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "ReaLModel":
        # Keep parameters as views: convert the buffers, then re-point the views.
        self.flat_params = fn(self.flat_params)
        bind_parameters(self, self.flat_params, self.layout, replace=False)
        if self.flat_grads is not None:
            self.flat_grads = fn(self.flat_grads)
            bind_gradients(self, self.flat_grads, self.layout)
        return self

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        head_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run this model's layers on a packed batch.

        x: token ids (T,) if layer 0 is here, else hidden states (T, hidden).
        Returns logits (T, vocab) or values (T,) if the head is here, else hidden
        states (T, hidden). `head_rows` (indices into T) computes the head only on
        those rows (generation prefill); `cache` stores keys/values on the way.
        """
        seqs = PackedSeqs.from_cu_seqlens(cu_seqlens.to(x.device))
        _check_packed(x, seqs, self.config.hidden_dim, 0 in self.layer_indices)
        if position_ids is None:
            position_ids = packed_position_ids(seqs.cu_seqlens, x.shape[0])
        elif position_ids.shape != (x.shape[0],):
            raise DataError(f"position_ids must have shape ({x.shape[0]},), got {tuple(position_ids.shape)}")
        return self._run(x, position_ids, seqs, cache, head_rows)

    def _run(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        seqs: PackedSeqs,
        cache: KVCache | None,
        head_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        cos = sin = None
        if self._inv_freq is not None:
            if self._inv_freq.device != x.device:
                self._inv_freq = self._inv_freq.to(x.device)
            cos, sin = rotary_cos_sin(self._inv_freq, position_ids, self.dtype)
        ctx = LayerContext(seqs=seqs, cos=cos, sin=sin, cache=cache)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        h = x
        for index, layer in self.layers():
            if index == 0:
                h = layer(h, position_ids)
            elif index == self.config.head_index:
                if head_rows is not None:
                    h = h[head_rows]
                tied = self._modules["0"].wte.weight if self.config.tied_embedding else None
                h = layer(h, tied)
            elif checkpointing:
                h = checkpoint(layer, h, ctx, use_reentrant=False)
            else:
                h = layer(h, ctx)
        return h
