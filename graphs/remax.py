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
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import BaseExperimentConfig, DatasetSpec, ExperimentSpec, ModelSpec, register_experiment
from realflow.api.generation import GenerationConfig
from realflow.graphs.keys import rollout_keys



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
    common = dict(n_seqs=cfg.n_seqs, mb_spec=cfg.mb_spec)
    rollout = rollout_keys(cfg.generation)
    mfcs = [
        MFCDef(name="actor_gen", model_name="actor", kind=MFCKind.GENERATE, interface_type="remax",
               interface_args=args, input_keys=("packed_prompts",), output_keys=rollout, **common),
        MFCDef(name="rew_inf", model_name="reward", kind=MFCKind.INFERENCE, interface_type=cfg.reward_interface,
               interface_args=cfg.reward_args, input_keys=("packed_input_ids", "prompt_mask"),
               output_keys=("rewards",), **common),
    ]
    train_inputs = rollout + ("rewards",)
    models = {"actor": cfg.actor, "reward": cfg.reward}
    if cfg.kl_ctl > 0:
        mfcs.append(MFCDef(name="ref_inf", model_name="ref", kind=MFCKind.INFERENCE, interface_type="remax",
                           interface_args=args, input_keys=("packed_input_ids",),
                           output_keys=("packed_ref_logprobs",), **common))
        train_inputs += ("packed_ref_logprobs",)
        models["ref"] = cfg.ref
    mfcs.append(MFCDef(name="actor_train", model_name="actor", kind=MFCKind.TRAIN_STEP, interface_type="remax",
                       interface_args=args, input_keys=train_inputs, log_return_value=True, **common))
    return ExperimentSpec(mfcs=mfcs, models=models, dataset=cfg.dataset)
