"""ReMax: REINFORCE with the greedy response as baseline (Li et al. 2023).

    actor_gen     generate   actor   packed_prompts -> rollout of group_size sampled
                                     responses + 1 greedy response per prompt
    rew_inf       inference  reward  packed_input_ids, prompt_mask -> rewards
    ref_inf       inference  ref     packed_input_ids -> packed_ref_logprobs  (only if kl_ctl > 0)
    actor_train   train_step actor   rollout + rewards [+ ref logprobs]

The advantage of every token of a sampled response is its KL-penalised
reward-to-go with the greedy response's reward subtracted (Algorithm 1 of the
paper); greedy responses carry no loss. No critic.

Deviation: the update is the clipped surrogate with one epoch and one
mini-batch by default, which equals the paper's REINFORCE gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realflow.api.config import OptimizerConfig
from realflow.api.experiment import BaseExperimentConfig, DatasetSpec, ExperimentSpec, ModelSpec, register_experiment
from realflow.api.generation import GenerationConfig
from realflow.graphs.grpo import policy_graph



@dataclass
class ReMaxConfig(BaseExperimentConfig):
    n_seqs: int = 16
    group_size: int = 1
    kl_ctl: float = 0.0
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=8))
    actor_args: dict[str, Any] = field(default_factory=dict)  # PolicyArgs and RewardShapingArgs fields
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(optimizer=OptimizerConfig(lr=3e-5, beta2=0.999)))
    ref: ModelSpec = field(default_factory=lambda: ModelSpec(init_from="actor"))
    reward: ModelSpec = field(default_factory=lambda: ModelSpec(model_free=True))
    reward_interface: str = "arithmetic"
    reward_args: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="prompt"))


@register_experiment("remax", ReMaxConfig)
def remax(cfg: ReMaxConfig) -> ExperimentSpec:
    args = dict(generation=cfg.generation, group_size=cfg.group_size, kl_ctl=cfg.kl_ctl, **cfg.actor_args)
    return policy_graph(cfg, "remax", args, with_ref=cfg.kl_ctl > 0)
