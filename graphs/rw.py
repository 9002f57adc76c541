"""Reward modelling on preference pairs (Bradley-Terry; Ouyang et al. 2022).

    trainRW   train_step on `default` (a critic: one scalar per token) with `paired_rw`
              inputs: packed_input_ids (per sample [chosen_1, rejected_1, ...]), prompt_lens
              (from the `rw_paired` data set)

A sequence's score is the head's output at its last token; the loss is
-log sigmoid(score_chosen - score_rejected), averaged over pairs. The model starts
from the actor checkpoint in `model.path` (or random) with a fresh value head.
No deviation from the usual recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from realflow.api.config import OptimizerConfig
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import BaseExperimentConfig, DatasetSpec, ExperimentSpec, ModelSpec, register_experiment


@dataclass
class RWConfig(BaseExperimentConfig):
    model: ModelSpec = field(default_factory=lambda: ModelSpec(is_critic=True, optimizer=OptimizerConfig(lr=1e-4)))
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="rw_paired"))


@register_experiment("rw", RWConfig)
def rw(cfg: RWConfig) -> ExperimentSpec:
    train = MFCDef(
        name="trainRW",
        model_name="default",
        kind=MFCKind.TRAIN_STEP,
        interface_type="paired_rw",
        input_keys=("packed_input_ids", "prompt_lens"),
        n_seqs=cfg.n_seqs,
        mb_spec=cfg.mb_spec,
        log_return_value=True,
    )
    return ExperimentSpec(mfcs=[train], models={"default": cfg.model}, dataset=cfg.dataset)
