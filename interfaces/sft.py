"""`sft`: supervised fine-tuning, next-token cross-entropy on the answer tokens.

- train_step: packed_input_ids, prompt_mask -> statistics (loss, n_tokens, ppl, ...).
  The loss is the mean negative log-likelihood of the tokens where prompt_mask is
  False (answer and EOS), averaged over those tokens of the whole batch however the
  engine splits it into micro-batches.
- evaluate: the same loss on a batch, without gradient: {"loss", "n_tokens"}.
- inference: action-aligned log-probs of packed_input_ids -> `logprobs_key`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import (
    IDS,
    action_loss_mask,
    check_layout,
    fit_mb_spec,
    logprobs_inference,
    require_keys,
)
from realflow.interfaces.functional import gather_packed_logprobs, masked_mean

KEYS = (IDS, "prompt_mask")


def _loss_mask(mb: SequenceSample) -> torch.Tensor:
    return action_loss_mask(mb.data["prompt_mask"], mb.cu_seqlens(IDS))


@register_interface("sft")
@dataclass
class SFTInterface(ModelInterface):
    """Answer-only next-token loss."""

    logprobs_key: str = "packed_logprobs"
    summed_stats: ClassVar[frozenset[str]] = frozenset({"n_tokens"})

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        require_keys(data, KEYS, "sft.train_step")
        check_layout(data, "prompt_mask", "token", "sft.train_step")

        def loss_fn(logits: torch.Tensor, mb: SequenceSample) -> tuple[torch.Tensor, dict[str, float]]:
            logp = gather_packed_logprobs(logits, mb.data[IDS], mb.cu_seqlens(IDS))  # (total - n,)
            return -masked_mean(logp, _loss_mask(mb)), {}

        def weight_fn(mb: SequenceSample) -> float:
            return float(_loss_mask(mb).sum())

        stats = model.engine.train_batch(data, fit_mb_spec(mb_spec, data.bs), loss_fn, weight_fn)
        stats["n_tokens"] = float(_loss_mask(data).sum())
        stats["ppl"] = math.exp(min(stats["loss"], 50.0))
        return stats

    def evaluate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        require_keys(data, KEYS, "sft.evaluate")

        def nll(logits: torch.Tensor, mb: SequenceSample) -> torch.Tensor:
            return -gather_packed_logprobs(logits, mb.data[IDS], mb.cu_seqlens(IDS)) * _loss_mask(mb)

        per_action = model.engine.forward(data, fit_mb_spec(mb_spec, data.bs), post_fn=nll, output_layout="action")
        n = float(_loss_mask(data).sum())
        return {"loss": float(per_action.sum()) / max(n, 1.0), "n_tokens": n}

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        return logprobs_inference(model.engine, data, mb_spec, 1.0, self.logprobs_key, "sft.inference")
