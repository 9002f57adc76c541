"""`grpo` and `rloo`: critic-free policy optimisation with a group baseline.

Both generate `group_size` responses per prompt (realflow.interfaces.rollout),
score each sequence with one reward (`rewards`), and give every token of a
response its sequence's advantage:

    grpo  A_i = (r_i - mean(group)) / (std(group) + eps)    Shao et al. 2024 (DeepSeekMath) 4.1.2
          (normalize_std=False: r_i - mean(group), "Dr. GRPO")
    rloo  A_i = r_i - mean(others in the group)            Ahmadian et al. 2024, eq. 5

then take the clipped-surrogate update (realflow.interfaces.policy) with the k3
KL to the reference in the loss, weighted by `beta`.

- generate: as `ppo_actor`. inference: action-aligned log-probs -> `logprobs_key`.
- train_step: packed_input_ids, prompt_mask, packed_logprobs, rewards
  [, packed_ref_logprobs (required when beta > 0; ignored, and its MFC may be
  dropped from the graph, when beta = 0)][, packed_logits_mask] -> statistics.
  The group is the sequences of one sample, so the train step reads the group size
  from the data; `group_size` only drives generation.

Deviations: the loss is averaged over all response tokens of the batch (as DAPO /
TRL's default), not per sequence then per group as in the GRPO paper; RLOO's
paper puts the KL in the reward, here it is GRPO's in-loss k3 term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError, InterfaceError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import (
    IDS,
    action_loss_mask,
    check_layout,
    logprobs_inference,
    per_sequence,
    require_keys,
)
from realflow.interfaces.functional import (
    broadcast_to_tokens,
    group_advantages,
    rloo_advantages,
    shift_cu_seqlens,
)
from realflow.interfaces.policy import PolicyArgs, policy_update
from realflow.interfaces.rollout import GenerationArgs, generate_rollouts


@register_interface("grpo")
@dataclass
class GRPOInterface(GenerationArgs, PolicyArgs, ModelInterface):
    """GRPO; arguments: generation / policy update, plus the below."""

    group_size: int = 8
    beta: float = 0.04
    normalize_std: bool = True
    logprobs_key: str = "packed_ref_logprobs"

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"{self.name}: beta must be >= 0 (0 switches the KL term off), got {self.beta}")
        if isinstance(self.group_size, int) and self.group_size < 2:
            raise ConfigError(f"{self.name}: group_size must be >= 2 for a group baseline, got {self.group_size}")
        super().__post_init__()

    @property
    def name(self) -> str:
        return "grpo"

    def sequence_advantages(self, rewards: torch.Tensor, group: int) -> torch.Tensor:
        return group_advantages(rewards, group, normalize_std=self.normalize_std)

    def generate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return generate_rollouts(model, data, self, f"{self.name}.generate")

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return logprobs_inference(model.engine, data, mb_spec, self.train_temperature, self.logprobs_key,
                                  f"{self.name}.inference")

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        who = f"{self.name}.train_step"
        keys = [IDS, "prompt_mask", "packed_logprobs", "rewards"] + (["packed_ref_logprobs"] if self.beta > 0 else [])
        require_keys(data, keys, who)
        check_layout(data, "prompt_mask", "token", who)
        if self.beta > 0:
            check_layout(data, "packed_ref_logprobs", "action", who)
        groups = sorted({len(s) for s in data.seqlens[IDS]})
        if len(groups) != 1 or groups[0] < 2:
            raise InterfaceError(f"{who}: every sample must hold the same number (>= 2) of responses to form "
                                 f"groups; got {groups} responses per sample")
        rewards = per_sequence(data, "rewards", who).float()
        adv_seq = self.sequence_advantages(rewards, groups[0])  # (n_seqs,)
        cu = data.cu_seqlens(IDS).long()
        acu = shift_cu_seqlens(cu)
        loss_mask = action_loss_mask(data.data["prompt_mask"], cu)
        stats = {
            "task_reward": float(rewards.mean()),
            "advantages_abs": float(adv_seq.abs().mean()),
            "zero_std_groups": float((rewards.view(-1, groups[0]).std(dim=1) == 0).float().mean()),
            "response_length": float(loss_mask.float().sum() / rewards.numel()),
        }
        ref = data.data["packed_ref_logprobs"] if self.beta > 0 else None
        stats.update(policy_update(model, data, mb_spec, self, advantages=broadcast_to_tokens(adv_seq, acu),
                                   loss_mask=loss_mask, temperature=self.train_temperature, who=who,
                                   kl_beta=self.beta, ref_logprobs=ref))
        return stats


@register_interface("rloo")
@dataclass
class RLOOInterface(GRPOInterface):
    """RLOO: GRPO's update with the leave-one-out baseline (`normalize_std` is unused)."""

    @property
    def name(self) -> str:
        return "rloo"

    def sequence_advantages(self, rewards: torch.Tensor, group: int) -> torch.Tensor:
        return rloo_advantages(rewards, group)
