"""Advantage estimators as pure tensor functions: GAE, GRPO, RLOO, ReMax.

Per-token tensors are packed in the action-aligned layout (see
`realflow.interfaces.functional.packing`): entry i of a sequence is the action
"emit token i + 1". Per-sequence tensors have one entry per sequence, the
responses of one prompt consecutive. Nothing here reads a model or a batch object.
"""
from __future__ import annotations

import torch

from realflow.interfaces.functional.packing import cu_seqlens_to_seqlens, segment_ids


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    cu_seqlens: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation on packed sequences; returns (advantages, returns).

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
    Advantage Estimation", eq. 16, per sequence of n actions (i = 0..n-1):

        delta_i = r_i + gamma * V_{i+1} - V_i
        A_i     = delta_i + gamma * lam * A_{i+1},   A_n = 0
        R_i     = A_i + V_i                           (the value target)

    rewards: (total,) per-action rewards, terminal score included (see
        `kl_penalized_rewards`); values: (total,) V(s_i), the state before action i.
    bootstrap_values: (n_seqs,) V_n, the value of the state after the last action.
        None means 0 for every sequence: it ended (EOS), nothing follows. A sequence
        cut by the generation length limit (no EOS) did not end, so pass the
        critic's value of its final state there, e.g.
        ``torch.where(no_eos, last_token(token_values, cu), 0)`` - treating a
        truncation as termination would bias returns toward 0. (ReaL bootstraps the
        same way with ``seq_no_eos_mask``.)

    Cost: one vectorised pass per position of the longest sequence.
    """
    if rewards.shape != values.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must be equal 1-D shapes")
    lens = cu_seqlens_to_seqlens(cu_seqlens)
    if int(cu_seqlens[-1]) != rewards.numel():
        raise ValueError(f"cu_seqlens covers {int(cu_seqlens[-1])} entries but rewards has {rewards.numel()}")
    n, width = lens.numel(), int(lens.max()) if lens.numel() else 0
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    if bootstrap_values is None:
        bootstrap_values = torch.zeros(n, dtype=dtype, device=rewards.device)
    if bootstrap_values.shape != (n,):
        raise ValueError(f"bootstrap_values must have shape ({n},), got {tuple(bootstrap_values.shape)}")
    seg = segment_ids(cu_seqlens)
    pos = torch.arange(rewards.numel(), device=rewards.device) - cu_seqlens[seg]
    # Right-padded copies; V has one extra column so that V[:, L] is the bootstrap.
    r = rewards.new_zeros((n, width), dtype=dtype)
    r[seg, pos] = rewards.to(dtype)
    v = values.new_zeros((n, width + 1), dtype=dtype)
    v[seg, pos] = values.to(dtype)
    v[torch.arange(n, device=v.device), lens] = bootstrap_values.to(dtype)
    valid = torch.zeros((n, width), dtype=torch.bool, device=rewards.device)
    valid[seg, pos] = True
    delta = torch.where(valid, r + gamma * v[:, 1:] - v[:, :-1], 0.0)  # (n, width); 0 past each end
    adv = torch.zeros_like(delta)
    running = delta.new_zeros(n)
    for t in range(width - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running
        adv[:, t] = running
    advantages = adv[seg, pos].to(rewards.dtype)
    return advantages, advantages + values


def _groups(rewards: torch.Tensor, group_size: int, who: str, min_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"{who}: rewards must be 1-D (one score per sequence), got shape {tuple(rewards.shape)}")
    if group_size < min_size or rewards.numel() % group_size:
        raise ValueError(f"{who}: {rewards.numel()} rewards cannot form groups of {group_size} "
                         f"(need group_size >= {min_size} dividing the count)")
    # float64 stays float64; integer or half-precision scores are computed in float32
    return rewards.view(-1, group_size).to(torch.promote_types(rewards.dtype, torch.float32))


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, normalize_std: bool = True
) -> torch.Tensor:
    """GRPO advantages: each reward normalised within its group of responses.

    Shao et al. 2024, "DeepSeekMath", sec. 4.1.2 (outcome supervision):
    ``A_i = (r_i - mean(r_group)) / (std(r_group) + eps)`` with the unbiased
    (Bessel-corrected) std, as in TRL's GRPOTrainer. ``normalize_std=False`` keeps
    only the mean subtraction (Liu et al. 2025, "Dr. GRPO").

    rewards: (n_seqs,), each group of `group_size` consecutive entries answers one prompt.
    Returns (n_seqs,); broadcast to tokens with `broadcast_to_tokens`.
    """
    g = _groups(rewards, group_size, "group_advantages", 2 if normalize_std else 1)
    centred = g - g.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: each reward minus the mean of the others in its group.

    Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
    Ahmadian et al. 2024, "Back to Basics" (RLOO), eq. 5:
    ``A_i = r_i - 1/(k-1) * sum_{j != i} r_j`` for a group of k = `group_size` >= 2.

    rewards: (n_seqs,) with groups consecutive. Returns (n_seqs,).
    """
    g = _groups(rewards, group_size, "rloo_advantages", 2)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax advantages: sampled reward minus the reward of the greedy response to the same prompt.

    Li et al. 2023, "ReMax", Algorithm 1: ``A_i = r(x, y_i) - r(x, y_greedy)``.
    rewards: (n_prompts * k,) for k samples per prompt, consecutive;
    greedy_rewards: (n_prompts,). Returns (n_prompts * k,). For per-token returns
    with a KL penalty, feed the baseline-subtracted score to `kl_penalized_rewards`
    and take `gae(..., values=0, lam=1)` (reward-to-go).
    """
    if greedy_rewards.dim() != 1 or rewards.dim() != 1 or greedy_rewards.numel() == 0 \
            or rewards.numel() % greedy_rewards.numel():
        raise ValueError(f"remax_advantages: {rewards.numel()} sampled rewards do not split evenly over "
                         f"{greedy_rewards.numel()} greedy rewards")
    k = rewards.numel() // greedy_rewards.numel()
    return rewards - torch.repeat_interleave(greedy_rewards, k)
