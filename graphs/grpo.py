"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath).

Per prompt the actor samples `group_size` responses; each response's advantage is
its reward normalised within its group, (r - mean) / (std + eps), the same for all
its tokens; no critic. The loss is PPO's clipped surrogate plus `beta` times the
k3 estimate of KL(pi || pi_ref) per token.

    actor_gen     generate   actor   packed_prompts -> packed_input_ids, prompt_mask,
                                                       packed_logprobs, seq_no_eos_mask
    rew_inf       inference  reward  packed_input_ids, prompt_mask -> rewards
    ref_inf       inference  ref     packed_input_ids -> packed_ref_logprobs   (only if beta > 0)
    actor_train   train_step actor   all of the above

Deviations: with `beta=0` (the default here, as in DAPO and TRL's default) the
reference model and `ref_inf` are left out of the graph. Rewards default to the
exact-answer check of the bundled arithmetic task (`reward_interface`).
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
class GRPOConfig(BaseExperimentConfig):
    n_seqs: int = 8
    group_size: int = 8
    beta: float = 0.0
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=8))
    policy: dict[str, Any] = field(default_factory=dict)  # eps_clip, ppo_n_minibatches, ... (PolicyArgs)
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(optimizer=OptimizerConfig(lr=3e-5, beta2=0.999)))
    ref: ModelSpec = field(default_factory=lambda: ModelSpec(init_from="actor"))
    reward: ModelSpec = field(default_factory=lambda: ModelSpec(model_free=True))
    reward_interface: str = "arithmetic"
    reward_args: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="prompt"))


def policy_graph(cfg: Any, interface: str, args: dict[str, Any], with_ref: bool) -> ExperimentSpec:
    """The critic-free graph shared by GRPO, RLOO and ReMax (they differ in the
    interface): generate, reward, optionally the reference, train.

    `cfg` has the fields of GRPOConfig that the graph reads: n_seqs, mb_spec,
    generation, actor, ref, reward, reward_interface, reward_args, dataset.
    """
    common = dict(n_seqs=cfg.n_seqs, mb_spec=cfg.mb_spec)
    rollout = rollout_keys(cfg.generation)
    mfcs = [
        MFCDef(name="actor_gen", model_name="actor", kind=MFCKind.GENERATE, interface_type=interface,
               interface_args=args, input_keys=("packed_prompts",), output_keys=rollout, **common),
        MFCDef(name="rew_inf", model_name="reward", kind=MFCKind.INFERENCE, interface_type=cfg.reward_interface,
               interface_args=cfg.reward_args, input_keys=("packed_input_ids", "prompt_mask"),
               output_keys=("rewards",), **common),
    ]
    train_inputs = rollout + ("rewards",)
    models = {"actor": cfg.actor, "reward": cfg.reward}
    if with_ref:
        mfcs.append(MFCDef(name="ref_inf", model_name="ref", kind=MFCKind.INFERENCE, interface_type=interface,
                           interface_args=args, input_keys=("packed_input_ids",),
                           output_keys=("packed_ref_logprobs",), **common))
        train_inputs += ("packed_ref_logprobs",)
        models["ref"] = cfg.ref
    mfcs.append(MFCDef(name="actor_train", model_name="actor", kind=MFCKind.TRAIN_STEP, interface_type=interface,
                       interface_args=args, input_keys=train_inputs, log_return_value=True, **common))
    return ExperimentSpec(mfcs=mfcs, models=models, dataset=cfg.dataset)


@register_experiment("grpo", GRPOConfig)
def grpo(cfg: GRPOConfig) -> ExperimentSpec:
    args = dict(generation=cfg.generation, group_size=cfg.group_size, beta=cfg.beta, **cfg.policy)
    return policy_graph(cfg, "grpo", args, with_ref=cfg.beta > 0)
