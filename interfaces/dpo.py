"""`dpo`: direct preference optimisation against a frozen reference (Rafailov et al. 2023).

Data: the `rw_paired` layout: per sample [chosen_1, rejected_1, ...] in
packed_input_ids, all sharing the prompt of length `prompt_lens` (one per sample).
A response's log-probability is the sum over its response tokens (answer + EOS).

- inference (on the reference model): packed_input_ids -> `logprobs_key`
  (default packed_ref_logprobs), action-aligned per-token log-probs.
- train_step (on the policy): packed_input_ids, prompt_lens, packed_ref_logprobs
  -> statistics of `dpo_loss` with `beta` (loss averaged over pairs; chosen /
  rejected implicit rewards, reward accuracy and margin).

No deviation from the paper; no label smoothing or IPO variant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError, InterfaceError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import (
    IDS,
    action_loss_mask,
    check_layout,
    fit_mb_spec,
    logprobs_inference,
    prompt_mask_from_lens,
    require_keys,
)
from realflow.interfaces.functional import dpo_loss, gather_packed_logprobs, segment_ids, shift_cu_seqlens
from realflow.interfaces.paired_rw import check_pairs

REF = "packed_ref_logprobs"


def _response_sums(logp: torch.Tensor, mb: SequenceSample) -> torch.Tensor:
    """(n_seqs,) sum of action log-probs over each sequence's response tokens."""
    cu = mb.cu_seqlens(IDS).long()
    prompt_lens = mb.data["prompt_lens"].tolist()
    mask = action_loss_mask(prompt_mask_from_lens(mb.seqlens[IDS], prompt_lens), cu)
    acu = shift_cu_seqlens(cu)
    return torch.zeros(acu.numel() - 1, dtype=logp.dtype).index_add(0, segment_ids(acu), logp * mask)


@register_interface("dpo")
@dataclass
class DPOInterface(ModelInterface):
    """DPO with temperature `beta`."""

    beta: float = 0.1
    logprobs_key: str = REF

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"dpo: beta must be > 0, got {self.beta}")

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return logprobs_inference(model.engine, data, mb_spec, 1.0, self.logprobs_key, "dpo.inference")

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        who = "dpo.train_step"
        require_keys(data, [IDS, "prompt_lens", REF], who)
        check_pairs(data, who)
        check_layout(data, REF, "action", who)
        per_sample = [s for s in data.seqlens["prompt_lens"] if s != [1]]
        if per_sample:
            raise InterfaceError(f"{who}: 'prompt_lens' must hold one value per sample (seqlens [1]), "
                                 f"got {per_sample[:4]}")
        beta = self.beta

        def loss_fn(logits: torch.Tensor, mb: SequenceSample) -> tuple[torch.Tensor, dict[str, float]]:
            logp = gather_packed_logprobs(logits, mb.data[IDS], mb.cu_seqlens(IDS))  # (total - n,)
            pi = _response_sums(logp, mb)
            ref = _response_sums(mb.data[REF].float(), mb)
            loss, st = dpo_loss(pi[0::2], pi[1::2], ref[0::2], ref[1::2], beta)
            return loss, {k: float(v) for k, v in st.items()}

        def weight_fn(mb: SequenceSample) -> float:
            return len(mb.flat_seqlens(IDS)) / 2

        return model.engine.train_batch(data, fit_mb_spec(mb_spec, data.bs), loss_fn, weight_fn)
