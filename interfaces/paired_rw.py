"""`paired_rw`: a reward model trained on preference pairs; its score is the value at the last token.

The model is a critic (a scalar head on every token); a sequence's score is the
head's output at its last token (the EOS of a complete response).

- train_step: packed_input_ids in the `rw_paired` layout (per sample
  [chosen_1, rejected_1, chosen_2, rejected_2, ...]) -> statistics. Loss: the
  pairwise logistic (Bradley-Terry) loss `pairwise_rw_loss`, averaged over pairs.
- evaluate: the same loss and accuracy on a batch, without gradient.
- inference: packed_input_ids (any number of sequences per sample) -> `rewards`,
  one float32 per sequence: score * output_scaling + output_bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError, InterfaceError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import IDS, fit_mb_spec, output_like, require_keys
from realflow.interfaces.functional import last_token, pairwise_rw_loss


def check_pairs(data: SequenceSample, who: str) -> None:
    """Every sample must hold (chosen, rejected) pairs: an even, non-zero number of sequences."""
    counts = [len(s) for s in data.seqlens[IDS]]
    bad = [(sid, n) for sid, n in zip(data.ids, counts) if n == 0 or n % 2]
    if bad:
        raise InterfaceError(f"{who}: '{IDS}' must hold chosen/rejected pairs (an even number of sequences per "
                             f"sample, as the rw_paired dataset gives); samples (id, count): {bad[:4]}")


def _last_scores(values: torch.Tensor, mb: SequenceSample) -> torch.Tensor:
    return last_token(values.float(), mb.cu_seqlens(IDS).long())  # (n_seqs,)


@register_interface("paired_rw")
@dataclass
class PairedRewardInterface(ModelInterface):
    """Pairwise reward model; `rewards` = score * output_scaling + output_bias."""

    output_scaling: float = 1.0
    output_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.output_scaling == 0:
            raise ConfigError("paired_rw: output_scaling must be non-zero")

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        require_keys(data, [IDS], "paired_rw.inference")
        scores = model.engine.forward(data, fit_mb_spec(mb_spec, data.bs), post_fn=_last_scores,
                                      output_layout="sequence")
        rewards = (scores.float() * self.output_scaling + self.output_bias).float()
        return output_like(data, {"rewards": (rewards, "sequence")})

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        require_keys(data, [IDS], "paired_rw.train_step")
        check_pairs(data, "paired_rw.train_step")

        def loss_fn(values: torch.Tensor, mb: SequenceSample) -> tuple[torch.Tensor, dict[str, float]]:
            scores = _last_scores(values, mb)
            loss, st = pairwise_rw_loss(scores[0::2], scores[1::2])
            return loss, {k: float(v) for k, v in st.items()}

        def weight_fn(mb: SequenceSample) -> float:
            return len(mb.flat_seqlens(IDS)) / 2

        return model.engine.train_batch(data, fit_mb_spec(mb_spec, data.bs), loss_fn, weight_fn)

    def evaluate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        require_keys(data, [IDS], "paired_rw.evaluate")
        check_pairs(data, "paired_rw.evaluate")
        scores = model.engine.forward(data, fit_mb_spec(mb_spec, data.bs), post_fn=_last_scores,
                                      output_layout="sequence")
        loss, st = pairwise_rw_loss(scores[0::2], scores[1::2])
        return {"loss": float(loss), **{k: float(v) for k, v in st.items()}}
