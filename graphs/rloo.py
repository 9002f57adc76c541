"""RLOO: REINFORCE leave-one-out (Ahmadian et al. 2024).

Same graph as GRPO (see grpo.py) with the `rloo` interface: the advantage of
response j in a group of k is r_j minus the mean reward of the other k - 1
responses, with no division by the group's std; loss and KL term as in GRPO.

    actor_gen -> rew_inf -> (ref_inf if beta > 0) -> actor_train

Deviation: the update is PPO's clipped surrogate (one epoch, one mini-batch by
default, where it equals the REINFORCE gradient) rather than plain REINFORCE.
"""
from __future__ import annotations

from dataclasses import dataclass

from realflow.api.experiment import ExperimentSpec, register_experiment
from realflow.graphs.grpo import GRPOConfig, policy_graph


@dataclass
class RLOOConfig(GRPOConfig):
    group_size: int = 4


@register_experiment("rloo", RLOOConfig)
def rloo(cfg: RLOOConfig) -> ExperimentSpec:
    args = dict(generation=cfg.generation, group_size=cfg.group_size, beta=cfg.beta, **cfg.policy)
    return policy_graph(cfg, "rloo", args, with_ref=cfg.beta > 0)
