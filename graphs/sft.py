"""Supervised fine-tuning (SFT).

Graph: one MFC.

    trainDefault  train_step on `default` with the `sft` interface
                  inputs: packed_input_ids, prompt_mask   (from the `prompt_answer` data set)

Loss: next-token cross-entropy on answer tokens only (prompt tokens masked by
`prompt_mask`), averaged over the answer tokens of the whole batch however it is
split into micro-batches. No deviation from the usual recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from realflow.api.config import OptimizerConfig
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import BaseExperimentConfig, DatasetSpec, ExperimentSpec, ModelSpec, register_experiment


@dataclass
class SFTConfig(BaseExperimentConfig):
    model: ModelSpec = field(default_factory=lambda: ModelSpec(optimizer=OptimizerConfig(lr=1e-3)))
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="prompt_answer"))


@register_experiment("sft", SFTConfig)
def sft(cfg: SFTConfig) -> ExperimentSpec:
    train = MFCDef(
        name="trainDefault",
        model_name="default",
        kind=MFCKind.TRAIN_STEP,
        interface_type="sft",
        input_keys=("packed_input_ids", "prompt_mask"),
        n_seqs=cfg.n_seqs,
        mb_spec=cfg.mb_spec,
        log_return_value=True,
    )
    return ExperimentSpec(mfcs=[train], models={"default": cfg.model}, dataset=cfg.dataset)
