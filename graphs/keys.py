"""Key names the built-in policy graphs share (the contract: docs/interfaces.md)."""
from __future__ import annotations

from realflow.api.generation import GenerationConfig

ROLLOUT = ("packed_input_ids", "prompt_mask", "packed_logprobs", "seq_no_eos_mask")
LOGITS_MASK = "packed_logits_mask"


def rollout_keys(generation: GenerationConfig) -> tuple[str, ...]:
    """What a generate MFC hands to training: the rollout, plus the mask of tokens
    top-k/top-p removed when sampling filters them, so that training rebuilds the
    distribution the tokens were drawn from (inference MFCs must not receive it)."""
    return ROLLOUT + ((LOGITS_MASK,) if generation.filters else ())
