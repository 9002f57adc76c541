"""How to generate: the sampling settings an interface hands to the engine.

A contract in `api` so that interfaces (which import only `realflow.api`) can build
it; `realflow.model.generate` consumes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realflow.api.errors import ConfigError


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate. top_k=0 and top_p=1.0 switch those filters off."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    return_logits_mask: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def filters(self) -> bool:
        """Whether top-k or top-p can remove tokens."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


@dataclass
class GenerationResult:
    """Generated tokens of n sequences, packed (generated tokens only)."""

    output_ids: torch.Tensor  # (total_generated,) int64
    output_cu_seqlens: torch.Tensor  # (n + 1,) int32
    logprobs: torch.Tensor  # (total_generated,) float32, under the sampled distribution
    no_eos: torch.Tensor  # (n,) bool: stopped by max_new_tokens, not by EOS
    logits_mask: torch.Tensor | None = None  # (total_generated, vocab) bool, True = removed

    @property
    def output_lens(self) -> torch.Tensor:
        return self.output_cu_seqlens[1:] - self.output_cu_seqlens[:-1]
