"""PPO for language models (Ouyang et al. 2022; Ziegler et al. 2019), ReaLHF's graph.

    actor_gen     generate   actor   packed_prompts -> packed_input_ids, prompt_mask,
                                                       packed_logprobs, seq_no_eos_mask
    rew_inf       inference  reward  packed_input_ids, prompt_mask -> rewards
    ref_inf       inference  ref     packed_input_ids -> packed_ref_logprobs
    critic_inf    inference  critic  packed_input_ids, seq_no_eos_mask -> values
    actor_train   train_step actor   rollout + rewards + ref logprobs + values
    critic_train  train_step critic  the same keys

Per token, reward = -kl_ctl * KL(pi_old || pi_ref) plus the (clipped, scaled)
score on the last response token; advantages and returns by GAE over the critic's
values; actor loss is the clipped surrogate, critic loss the clipped value loss.
The KL coefficient is fixed or adaptive (`actor.adaptive_kl_target`).

Deviations: rewards default to the bundled arithmetic task's exact-answer check
(a rule, so the reward role holds no model); the critic starts from the actor's
weights with a fresh value head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realflow.api.config import OptimizerConfig
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import BaseExperimentConfig, DatasetSpec, ExperimentSpec, ModelSpec, register_experiment
from realflow.api.generation import GenerationConfig
from realflow.graphs.keys import rollout_keys



@dataclass
class PPOConfig(BaseExperimentConfig):
    n_seqs: int = 32
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=8))
    # Shared by actor and critic (they must shape rewards identically): kl_ctl,
    # adaptive_kl_target, discount, gae_lambda, max_reward_clip, reward_scaling, ...
    shaping: dict[str, Any] = field(default_factory=lambda: {"kl_ctl": 0.05})
    actor_args: dict[str, Any] = field(default_factory=dict)  # eps_clip, ppo_n_minibatches, adv_norm, ...
    critic_args: dict[str, Any] = field(default_factory=dict)  # value_eps_clip, value_norm, ...
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(optimizer=OptimizerConfig(lr=3e-5, beta2=0.999)))
    critic: ModelSpec = field(
        default_factory=lambda: ModelSpec(is_critic=True, init_from="actor", optimizer=OptimizerConfig(lr=1e-4))
    )
    ref: ModelSpec = field(default_factory=lambda: ModelSpec(init_from="actor"))
    reward: ModelSpec = field(default_factory=lambda: ModelSpec(model_free=True))
    reward_interface: str = "arithmetic"
    reward_args: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="prompt"))


@register_experiment("ppo", PPOConfig)
def ppo(cfg: PPOConfig) -> ExperimentSpec:
    actor = dict(generation=cfg.generation, **cfg.shaping, **cfg.actor_args)
    critic = dict(**cfg.shaping, **cfg.critic_args)
    common = dict(n_seqs=cfg.n_seqs, mb_spec=cfg.mb_spec)
    rollout = rollout_keys(cfg.generation)
    train_inputs = rollout + ("rewards", "packed_ref_logprobs", "values")
    mfcs = [
        MFCDef(name="actor_gen", model_name="actor", kind=MFCKind.GENERATE, interface_type="ppo_actor",
               interface_args=actor, input_keys=("packed_prompts",), output_keys=rollout, **common),
        MFCDef(name="rew_inf", model_name="reward", kind=MFCKind.INFERENCE, interface_type=cfg.reward_interface,
               interface_args=cfg.reward_args, input_keys=("packed_input_ids", "prompt_mask"),
               output_keys=("rewards",), **common),
        MFCDef(name="ref_inf", model_name="ref", kind=MFCKind.INFERENCE, interface_type="ppo_actor",
               interface_args=actor, input_keys=("packed_input_ids",), output_keys=("packed_ref_logprobs",), **common),
        MFCDef(name="critic_inf", model_name="critic", kind=MFCKind.INFERENCE, interface_type="ppo_critic",
               interface_args=critic, input_keys=("packed_input_ids", "seq_no_eos_mask"), output_keys=("values",),
               **common),
        MFCDef(name="actor_train", model_name="actor", kind=MFCKind.TRAIN_STEP, interface_type="ppo_actor",
               interface_args=actor, input_keys=train_inputs, log_return_value=True, **common),
        MFCDef(name="critic_train", model_name="critic", kind=MFCKind.TRAIN_STEP, interface_type="ppo_critic",
               interface_args=critic, input_keys=train_inputs, log_return_value=True, **common),
    ]
    models = {"actor": cfg.actor, "critic": cfg.critic, "ref": cfg.ref, "reward": cfg.reward}
    return ExperimentSpec(mfcs=mfcs, models=models, dataset=cfg.dataset)
