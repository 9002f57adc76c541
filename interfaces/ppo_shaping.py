"""PPO's reward shaping: scores -> KL-penalised per-token rewards -> GAE advantages and returns.

Shared by `ppo_actor`, `ppo_critic` and `remax`, which must agree on it (the actor
trains on the advantages, the critic on the returns of the same computation). Each
keeps its own KL controller; both see the same KL every step, so an adaptive
coefficient stays the same on both sides. The controller is interface state
(`state_dict`), saved with a worker's resume state.

    score_j  = reward_scaling * (rewards_j - reward_bias)        (0 if mask_no_eos_with_zero
                                                                   and sequence j was truncated)
    r_i      = -kl_coef * KL_i * [i is a response action] + [i is the last action] * clip(score, +-max_reward_clip)
    A, R     = gae(r, V, gamma=discount, lambda=gae_lambda), V bootstrapped at truncated ends

KL_i is `kl_estimate(packed_logprobs, packed_ref_logprobs, kl_estimator)`; V is the
critic's token-aligned `values` without each sequence's last token (ReMax passes
no values: V = 0, which makes A the reward-to-go).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import ConfigError
from realflow.interfaces.common import IDS, action_loss_mask, check_layout, per_sequence, require_keys
from realflow.interfaces.functional import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    drop_last_token,
    gae,
    kl_estimate,
    kl_penalized_rewards,
    last_token,
    segment_ids,
    shift_cu_seqlens,
)


@dataclass
class Shaped:
    """What shaping gives the train step; per-token tensors are action-aligned."""

    advantages: torch.Tensor
    returns: torch.Tensor
    loss_mask: torch.Tensor
    values: torch.Tensor  # V(s_i) used by GAE (the critic's old values)
    stats: dict[str, float]


@dataclass
class RewardShapingArgs:
    """Arguments of PPO's reward shaping (see the module docstring).

    `adaptive_kl_target=None` keeps `kl_ctl` fixed; otherwise the coefficient starts
    at `kl_ctl` and follows Ziegler et al.'s controller with `adaptive_kl_horizon`.
    """

    kl_ctl: float = 0.1
    adaptive_kl_target: float | None = None
    adaptive_kl_horizon: float = 10000.0
    kl_estimator: str = "k1"
    reward_scaling: float = 1.0
    reward_bias: float = 0.0
    max_reward_clip: float | None = 5.0
    mask_no_eos_with_zero: bool = False
    discount: float = 1.0
    gae_lambda: float = 1.0
    kl_controller: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.kl_ctl < 0:
            raise ConfigError(f"kl_ctl must be >= 0, got {self.kl_ctl}")
        if self.kl_estimator not in KL_KINDS:
            raise ConfigError(f"kl_estimator={self.kl_estimator!r} is not one of {list(KL_KINDS)}")
        if self.max_reward_clip is not None and self.max_reward_clip <= 0:
            raise ConfigError(f"max_reward_clip must be > 0 or None, got {self.max_reward_clip}")
        if not 0 <= self.discount <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError(f"discount and gae_lambda must be in [0, 1], got {self.discount}, {self.gae_lambda}")
        if self.adaptive_kl_target is None:
            self.kl_controller = FixedKLController(self.kl_ctl)
        else:
            if self.adaptive_kl_target <= 0 or self.adaptive_kl_horizon <= 0:
                raise ConfigError(f"adaptive_kl_target and adaptive_kl_horizon must be > 0, got "
                                  f"{self.adaptive_kl_target}, {self.adaptive_kl_horizon}")
            self.kl_controller = AdaptiveKLController(self.kl_ctl, self.adaptive_kl_target, self.adaptive_kl_horizon)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    def shape(
        self,
        data: SequenceSample,
        who: str,
        values: torch.Tensor | None,
        score_baseline: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Shaped:
        """Advantages and returns of `data`, then one update of the KL controller.

        Needs packed_input_ids, prompt_mask, packed_logprobs, rewards, seq_no_eos_mask
        and, when kl_ctl > 0, packed_ref_logprobs. `values`: token-aligned V or None
        (zeros). `score_baseline` (one per sequence) is subtracted from the scaled
        scores (ReMax). `loss_mask` overrides the response mask (action-aligned).
        `reduce` (a data-parallel engine's `dp_sum`) makes the KL the controller
        steers that of the whole batch, so every replica's controller moves alike.
        """
        keys = [IDS, "prompt_mask", "packed_logprobs", "rewards", "seq_no_eos_mask"]
        if self.kl_ctl > 0:
            keys.append("packed_ref_logprobs")
        require_keys(data, keys, who)
        check_layout(data, "prompt_mask", "token", who)
        for key in {"packed_logprobs", "packed_ref_logprobs"} & set(keys):
            check_layout(data, key, "action", who)
        cu = data.cu_seqlens(IDS).long()
        acu = shift_cu_seqlens(cu)
        mask = action_loss_mask(data.data["prompt_mask"], cu) if loss_mask is None else loss_mask
        no_eos = per_sequence(data, "seq_no_eos_mask", who).bool()
        raw = per_sequence(data, "rewards", who).float()
        score = self.reward_scaling * (raw - self.reward_bias)
        if self.mask_no_eos_with_zero:
            score = torch.where(no_eos, torch.zeros_like(score), score)
        if score_baseline is not None:
            score = score - score_baseline
        logp = data.data["packed_logprobs"].float()
        ref = data.data["packed_ref_logprobs"].float() if self.kl_ctl > 0 else logp
        coef = self.kl_controller.value
        rewards = kl_penalized_rewards(logp, ref, score, acu, coef, mask, self.max_reward_clip, self.kl_estimator)
        if values is None:
            v_act, bootstrap = torch.zeros_like(rewards), None
        else:
            v_act = drop_last_token(values.float(), cu)
            bootstrap = torch.where(no_eos, last_token(values.float(), cu), torch.zeros_like(score))
        adv, ret = gae(rewards, v_act, acu, self.discount, self.gae_lambda, bootstrap)

        # The KL the controller steers: per sequence, the summed k1 estimate over its response.
        kl_tok = kl_estimate(logp, ref, "k1") * mask
        seq_kl = torch.zeros_like(score).index_add(0, segment_ids(acu), kl_tok)
        total = torch.stack([seq_kl.sum().double(), torch.tensor(float(score.numel()), dtype=torch.float64)])
        if reduce is not None:
            total = reduce(total)  # the whole batch's KL over its sequences
        ref_kl, n_seqs = float(total[0] / total[1]), int(total[1])
        stats = {
            "task_reward": float(raw.mean()),
            "ref_kl": ref_kl,
            "kl_coef": float(coef),
            "no_eos_ratio": float(no_eos.float().mean()),
            "response_length": float(mask.float().sum() / max(score.numel(), 1)),
        }
        self.kl_controller.update(ref_kl, n_steps=n_seqs)
        return Shaped(adv, ret, mask, v_act, stats)

    # Interface state (ModelInterface.state_dict): every interface that shapes rewards
    # (ppo_actor, ppo_critic, remax) saves its KL controller for an exact resume.
    def state_dict(self) -> dict[str, Any]:
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])
