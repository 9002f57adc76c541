"""Training losses as pure tensor functions: PPO actor and critic, DPO, pairwise reward.

Each returns ``(loss, stats)``: a scalar loss to backpropagate and a dict of
detached scalar tensors to log (call ``.item()`` when logging). Token-level losses
take packed 1-D tensors of equal shape plus an optional `loss_mask` (true where the
token counts, e.g. response tokens). ``reduction="mean"`` averages over the masked
tokens; ``"sum"`` returns their sum so that an engine can divide by the token count
of the whole batch across micro-batches (``stats["n_tokens"]`` gives the count).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from realflow.interfaces.functional.packing import masked_mean

Stats = dict[str, torch.Tensor]


def _reduce(x: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return masked_mean(x, mask)
    if reduction == "sum":
        return x.sum() if mask is None else (x * mask.to(x.dtype)).sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _count(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.tensor(float(x.numel())) if mask is None else mask.float().sum()


def _same_shapes(**tensors: torch.Tensor | None) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes differ: {shapes}")


def ppo_actor_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_clip: float,
    loss_mask: torch.Tensor | None = None,
    c_clip: float | None = None,
    reduction: str = "mean",
) -> tuple[torch.Tensor, Stats]:
    """PPO clipped surrogate loss, optionally dual-clipped.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7, as a loss:
        ratio = exp(logprobs - old_logprobs)
        l     = max(-A * ratio, -A * clip(ratio, 1 - eps_clip, 1 + eps_clip))
    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    RL", eq. 5), `c_clip` > 1: for A < 0, ``l = min(l, -c_clip * A)``, which bounds
    the loss when the ratio explodes on a negative advantage.

    stats: importance_ratio (masked mean and max of ratio), clip_ratio (fraction of
    tokens where the clipped term is taken), dual_clip_ratio, approx_kl (mean of
    old_logprobs - logprobs, the k1 estimate of KL(old || new)), n_tokens.
    """
    _same_shapes(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, loss_mask=loss_mask)
    if c_clip is not None and c_clip <= 1.0:
        raise ValueError(f"c_clip must be > 1 (dual clip bound), got {c_clip}")
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - eps_clip, 1.0 + eps_clip)
    loss = torch.maximum(pg1, pg2)
    clipped = pg2 > pg1
    dual = torch.zeros_like(clipped)
    if c_clip is not None:
        pg3 = -c_clip * adv
        dual = (adv < 0) & (loss > pg3)
        loss = torch.where(adv < 0, torch.minimum(loss, pg3), loss)
    with torch.no_grad():
        m = torch.ones_like(ratio, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
        stats = {
            "importance_ratio": masked_mean(ratio, m),
            "importance_ratio_max": ratio[m].max() if bool(m.any()) else ratio.new_tensor(1.0),
            "clip_ratio": masked_mean(clipped.float(), m),
            "dual_clip_ratio": masked_mean(dual.float(), m),
            "approx_kl": masked_mean(-log_ratio, m),
            "n_tokens": _count(ratio, loss_mask),
        }
    return _reduce(loss, loss_mask, reduction), stats


def critic_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    value_eps_clip: float | None,
    loss_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> tuple[torch.Tensor, Stats]:
    """Clipped value loss of PPO.

    OpenAI baselines ppo2 (Dhariwal et al. 2017), as used by lm-human-preferences:
        v_clip = old_values + clip(values - old_values, -value_eps_clip, value_eps_clip)
        l      = 0.5 * max((values - returns)^2, (v_clip - returns)^2)
    ``value_eps_clip=None`` gives the plain ``0.5 * (values - returns)^2``.

    stats: clip_ratio (fraction of tokens where the clipped term is taken), value
    (masked mean of values), n_tokens.
    """
    _same_shapes(values=values, old_values=old_values, returns=returns, loss_mask=loss_mask)
    v, ret = values.float(), returns.float()
    loss = (v - ret) ** 2
    clipped = torch.zeros_like(loss, dtype=torch.bool)
    if value_eps_clip is not None:
        old = old_values.float()
        v_clip = old + (v - old).clamp(-value_eps_clip, value_eps_clip)
        loss_clip = (v_clip - ret) ** 2
        clipped = loss_clip > loss
        loss = torch.maximum(loss, loss_clip)
    with torch.no_grad():
        stats = {
            "clip_ratio": masked_mean(clipped.float(), loss_mask),
            "value": masked_mean(v, loss_mask),
            "n_tokens": _count(v, loss_mask),
        }
    return 0.5 * _reduce(loss, loss_mask, reduction), stats


def dpo_loss(
    pi_chosen_logp: torch.Tensor,
    pi_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """Direct preference optimisation loss over pairs.

    Rafailov et al. 2023, "Direct Preference Optimization", eq. 7:
        loss = -mean log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
    Inputs: (n_pairs,) summed log-probabilities of each whole response.

    stats: chosen_reward / rejected_reward (means of beta * (pi - ref), the
    implicit rewards), reward_accuracy (fraction of pairs with chosen > rejected),
    reward_margin (mean difference).
    """
    _same_shapes(pi_chosen_logp=pi_chosen_logp, pi_rejected_logp=pi_rejected_logp,
                 ref_chosen_logp=ref_chosen_logp, ref_rejected_logp=ref_rejected_logp)
    chosen = beta * (pi_chosen_logp.float() - ref_chosen_logp.float())
    rejected = beta * (pi_rejected_logp.float() - ref_rejected_logp.float())
    loss = -F.logsigmoid(chosen - rejected).mean()
    with torch.no_grad():
        stats = {
            "chosen_reward": chosen.mean(),
            "rejected_reward": rejected.mean(),
            "reward_accuracy": (chosen > rejected).float().mean(),
            "reward_margin": (chosen - rejected).mean(),
        }
    return loss, stats


def pairwise_rw_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Pairwise (Bradley-Terry) reward-model loss.

    Ouyang et al. 2022, "Training language models to follow instructions with
    human feedback", eq. 1: ``loss = -mean log sigmoid(r_chosen - r_rejected)``.
    Inputs: (n_pairs,) scalar scores (the reward head at each response's last token).

    stats: accuracy (fraction with chosen > rejected), margin, chosen_score,
    rejected_score (means).
    """
    _same_shapes(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    c, r = chosen_scores.float(), rejected_scores.float()
    loss = -F.logsigmoid(c - r).mean()
    with torch.no_grad():
        stats = {
            "accuracy": (c > r).float().mean(),
            "margin": (c - r).mean(),
            "chosen_score": c.mean(),
            "rejected_score": r.mean(),
        }
    return loss, stats
