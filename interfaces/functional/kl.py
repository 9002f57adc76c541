"""KL to a reference policy: per-token estimators, KL-penalised rewards, the KL coefficient.

Per-token tensors are packed in the action-aligned layout (see
`realflow.interfaces.functional.packing`). The controllers keep one float and
expose `state_dict` so that a resumed run continues with the same coefficient.
"""
from __future__ import annotations

from typing import Any

import torch

from realflow.interfaces.functional.packing import cu_seqlens_to_seqlens

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    Schulman 2020, "Approximating KL Divergence" (joschu.net/blog/kl-approx.html),
    with log_r = ref_logprobs - logprobs = log(pi_ref / pi):
        k1 = -log_r                    unbiased, high variance, can be negative
        k2 = log_r^2 / 2               biased, low variance, >= 0
        k3 = exp(log_r) - 1 - log_r    unbiased, low variance, >= 0 (GRPO's choice)
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ")
    log_r = ref_logprobs.float() - logprobs.float()
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")


def kl_penalized_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    cu_seqlens: torch.Tensor,
    kl_coef: float,
    loss_mask: torch.Tensor | None = None,
    reward_clip: float | None = None,
    kl_kind: str = "k1",
) -> torch.Tensor:
    """Per-token rewards: a KL penalty on every token plus the score on the last.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    eq. 2; Ouyang et al. 2022 (InstructGPT), eq. 2:
        r_i = -kl_coef * KL_i * mask_i  +  [i is the last action] * clip(score, -c, c)
    KL_i is `kl_estimate(logprobs, ref_logprobs, kl_kind)`; the mask (response
    tokens) keeps prompt tokens out of the penalty; `reward_clip` = c clips the
    score (None: no clipping). The score goes on each sequence's last entry even
    where the mask is 0 there, so it is never lost.

    logprobs, ref_logprobs, loss_mask: (total,) action-aligned, offsets `cu_seqlens`
    (every sequence non-empty); scores: (n_seqs,). Returns (total,) float32.
    """
    kl = kl_estimate(logprobs, ref_logprobs, kl_kind)
    lens = cu_seqlens_to_seqlens(cu_seqlens)
    if scores.shape != lens.shape:
        raise ValueError(f"scores must have one entry per sequence ({lens.numel()}), got {tuple(scores.shape)}")
    if int(cu_seqlens[-1]) != kl.numel() or bool((lens < 1).any()):
        raise ValueError(f"cu_seqlens (lengths {lens.tolist()}) must cover the {kl.numel()} log-probs "
                         "with non-empty sequences")
    rewards = -kl_coef * kl
    if loss_mask is not None:
        rewards = rewards * loss_mask.float()
    score = scores.float()
    if reward_clip is not None:
        score = score.clamp(-reward_clip, reward_clip)
    return rewards.index_add(0, cu_seqlens[1:] - 1, score)


class FixedKLController:
    """A constant KL coefficient (`value`)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """A KL coefficient that steers the measured KL toward `target`.

    Ziegler et al. 2019, sec. 2.2 (and lm-human-preferences `AdaptiveKLController`):
        e     = clip(current_kl / target - 1, -0.2, 0.2)
        value = value * (1 + e * n_steps / horizon)
    `n_steps` is the number of samples (sequences) behind `current_kl`; `horizon`
    is in the same unit (10000 in the paper).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
