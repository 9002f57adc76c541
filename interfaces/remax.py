"""`remax`: REINFORCE with the greedy response as baseline (Li et al. 2023, "ReMax").

- generate: per prompt, `group_size` sampled responses and then one greedy
  response, the last sequence of the sample: group_size + 1 sequences in every
  key of the rollout layout (realflow.interfaces.rollout).
- inference: action-aligned log-probs -> `logprobs_key` (as `ppo_actor`).
- train_step: packed_input_ids, prompt_mask, packed_logprobs, rewards (one per
  sequence, greedy included), seq_no_eos_mask[, packed_ref_logprobs when kl_ctl > 0]
  [, packed_logits_mask] -> statistics.

Per sampled response the score is its scaled reward minus the greedy response's
(Algorithm 1 of the paper); it goes through PPO's shaping (KL penalty per token,
realflow.interfaces.ppo_shaping) with values 0, so the advantage of each token
is its KL-penalised reward-to-go. The greedy responses carry no loss. The update
is the clipped surrogate (realflow.interfaces.policy); with one epoch and one
mini-batch the ratio is 1 and it is exactly REINFORCE. No deviation otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import InterfaceError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import IDS, action_loss_mask, logprobs_inference, per_sequence, require_keys
from realflow.interfaces.functional import broadcast_to_tokens, shift_cu_seqlens
from realflow.interfaces.policy import PolicyArgs, policy_update
from realflow.interfaces.ppo_shaping import RewardShapingArgs
from realflow.interfaces.rollout import GenerationArgs, generate_rollouts


@register_interface("remax")
@dataclass
class ReMaxInterface(GenerationArgs, PolicyArgs, RewardShapingArgs, ModelInterface):
    """ReMax; arguments: generation / policy update / reward shaping, plus `logprobs_key`."""

    logprobs_key: str = "packed_ref_logprobs"

    def generate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return generate_rollouts(model, data, self, "remax.generate", greedy_baseline=True)

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return logprobs_inference(model.engine, data, mb_spec, self.train_temperature, self.logprobs_key,
                                  "remax.inference")

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        who = "remax.train_step"
        require_keys(data, [IDS, "prompt_mask", "rewards"], who)
        counts = [len(s) for s in data.seqlens[IDS]]
        if min(counts) < 2:
            raise InterfaceError(f"{who}: each sample needs sampled responses then the greedy one (>= 2 sequences); "
                                 f"got {counts[:8]} sequences per sample")
        rewards = per_sequence(data, "rewards", who).float()
        greedy = torch.zeros(rewards.numel(), dtype=torch.bool)
        greedy[torch.tensor(counts).cumsum(0) - 1] = True  # the last sequence of every sample
        greedy_score = self.reward_scaling * (rewards[greedy] - self.reward_bias)  # (bs,)
        baseline = torch.repeat_interleave(greedy_score, torch.tensor(counts))  # (n_seqs,)

        cu = data.cu_seqlens(IDS).long()
        acu = shift_cu_seqlens(cu)
        mask = action_loss_mask(data.data["prompt_mask"], cu) & ~broadcast_to_tokens(greedy, acu)
        shaped = self.shape(data, who, values=None, score_baseline=baseline, loss_mask=mask, reduce=model.engine.dp_sum)
        stats = dict(shaped.stats)
        stats.update(task_reward=float(rewards[~greedy].mean()), greedy_reward=float(rewards[greedy].mean()))
        stats.update(policy_update(model, data, mb_spec, self, advantages=shaped.advantages, loss_mask=mask,
                                   temperature=self.train_temperature, who=who))
        return stats
