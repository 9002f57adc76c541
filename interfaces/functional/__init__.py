"""The math of the built-in algorithms as pure tensor functions on packed sequences.

No models, no batches, no processes: tensors in, tensors out, each function's
docstring names its formula and source. Interfaces compose these; tests compare
them with hand-computed values and per-sequence loop references.

    from realflow.interfaces.functional import gae, ppo_actor_loss
"""
from realflow.interfaces.functional.advantages import gae, group_advantages, remax_advantages, rloo_advantages
from realflow.interfaces.functional.kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_penalized_rewards,
)
from realflow.interfaces.functional.losses import critic_loss, dpo_loss, pairwise_rw_loss, ppo_actor_loss
from realflow.interfaces.functional.packing import (
    broadcast_to_tokens,
    cu_seqlens_to_seqlens,
    drop_last_token,
    gather_packed_logprobs,
    last_token,
    masked_mean,
    masked_normalize,
    segment_ids,
    seqlens_to_cu_seqlens,
    shift_cu_seqlens,
)

__all__ = [
    "KL_KINDS", "AdaptiveKLController", "FixedKLController", "broadcast_to_tokens", "critic_loss",
    "cu_seqlens_to_seqlens", "dpo_loss", "drop_last_token", "gae", "gather_packed_logprobs",
    "group_advantages", "kl_estimate", "kl_penalized_rewards", "last_token", "masked_mean",
    "masked_normalize", "pairwise_rw_loss", "ppo_actor_loss", "remax_advantages", "rloo_advantages",
    "segment_ids", "seqlens_to_cu_seqlens", "shift_cu_seqlens",
]
