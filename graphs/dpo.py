"""DPO: direct preference optimisation (Rafailov et al. 2023).

    ref_inf      inference  ref     packed_input_ids -> packed_ref_logprobs
    actor_train  train_step actor   packed_input_ids, prompt_lens, packed_ref_logprobs

Data: the `rw_paired` data set (per sample [chosen_1, rejected_1, ...] sharing one
prompt). Loss: -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) -
log ref(y_l)))) with response log-probs summed over response tokens. The
reference starts as a frozen copy of the actor. No deviation from the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from realflow.api.config import OptimizerConfig
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.experiment import BaseExperimentConfig, DatasetSpec, ExperimentSpec, ModelSpec, register_experiment


@dataclass
class DPOConfig(BaseExperimentConfig):
    beta: float = 0.1
    actor: ModelSpec = field(default_factory=lambda: ModelSpec(optimizer=OptimizerConfig(lr=1e-4)))
    ref: ModelSpec = field(default_factory=lambda: ModelSpec(init_from="actor"))
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="rw_paired"))


@register_experiment("dpo", DPOConfig)
def dpo(cfg: DPOConfig) -> ExperimentSpec:
    args = {"beta": cfg.beta}
    common = dict(n_seqs=cfg.n_seqs, mb_spec=cfg.mb_spec, interface_type="dpo", interface_args=args)
    mfcs = [
        MFCDef(name="ref_inf", model_name="ref", kind=MFCKind.INFERENCE, input_keys=("packed_input_ids",),
               output_keys=("packed_ref_logprobs",), **common),
        MFCDef(name="actor_train", model_name="actor", kind=MFCKind.TRAIN_STEP, log_return_value=True,
               input_keys=("packed_input_ids", "prompt_lens", "packed_ref_logprobs"), **common),
    ]
    return ExperimentSpec(mfcs=mfcs, models={"actor": cfg.actor, "ref": cfg.ref}, dataset=cfg.dataset)
