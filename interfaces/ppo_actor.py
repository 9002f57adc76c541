"""`ppo_actor`: PPO's policy: generate rollouts, compute (reference) log-probs, train.

- generate: `packed_prompts` -> packed_input_ids, prompt_mask, packed_logprobs,
  seq_no_eos_mask[, packed_logits_mask] (`group_size` responses per prompt; see
  realflow.interfaces.rollout).
- inference: packed_input_ids[, packed_logits_mask] -> `logprobs_key` (default
  packed_ref_logprobs), action-aligned, at the generation temperature. Run on the
  reference model for the KL; run on the actor to recompute old log-probs.
- train_step: packed_input_ids, prompt_mask, packed_logprobs, packed_ref_logprobs
  (unless kl_ctl=0), rewards, values, seq_no_eos_mask[, packed_logits_mask] ->
  statistics. KL-penalised rewards and GAE (realflow.interfaces.ppo_shaping),
  advantages whitened over the response tokens of the batch (`adv_norm`), then
  the clipped-surrogate update (realflow.interfaces.policy).

Deviation from InstructGPT: none in the math. The KL controller's state is
interface state (`state_dict`, from the shaping): it goes into the worker's resume
state, not into the HF checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import check_layout, logprobs_inference, require_keys
from realflow.interfaces.functional import masked_mean, masked_normalize
from realflow.interfaces.policy import PolicyArgs, policy_update
from realflow.interfaces.ppo_shaping import RewardShapingArgs
from realflow.interfaces.rollout import GenerationArgs, generate_rollouts


@register_interface("ppo_actor")
@dataclass
class PPOActorInterface(GenerationArgs, PolicyArgs, RewardShapingArgs, ModelInterface):
    """PPO actor; arguments: generation / policy update / reward shaping, plus the below."""

    adv_norm: bool = True
    logprobs_key: str = "packed_ref_logprobs"

    def generate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return generate_rollouts(model, data, self, "ppo_actor.generate")

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return logprobs_inference(model.engine, data, mb_spec, self.train_temperature, self.logprobs_key,
                                  "ppo_actor.inference")

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        who = "ppo_actor.train_step"
        require_keys(data, ["values"], who)
        check_layout(data, "values", "token", who)
        shaped = self.shape(data, who, values=data.data["values"], reduce=model.engine.dp_sum)
        adv = shaped.advantages
        stats = dict(shaped.stats)
        stats["advantages"] = float(masked_mean(adv, shaped.loss_mask))
        if self.adv_norm:
            adv = masked_normalize(adv, shaped.loss_mask, reduce=model.engine.dp_sum)  # over the whole batch
        stats.update(policy_update(model, data, mb_spec, self, advantages=adv, loss_mask=shaped.loss_mask,
                                   temperature=self.train_temperature, who=who))
        return stats
