"""The clipped-surrogate policy update shared by `ppo_actor`, `grpo`, `rloo` and `remax`.

Those algorithms differ only in how they compute per-token advantages; given
them, `policy_update` does the rest (Schulman et al. 2017, with ReaL's options):

- log-probs recomputed with the generation temperature, with the top-k/top-p
  `packed_logits_mask` applied when the batch has one, so that the importance
  ratio starts at 1;
- `ppo_epochs` passes over `ppo_n_minibatches` mini-batches, one optimizer step
  each, loss averaged over the response tokens of each mini-batch;
- loss = clipped surrogate (`ppo_actor_loss`, dual clip with `c_clip`)
  + `kl_beta` * k3 KL(pi || pi_ref) per token (GRPO's in-loss penalty; PPO puts
  the KL in the rewards instead and passes kl_beta=0);
- early stop (`early_stop_imp_ratio`): before every mini-batch update but the
  first, a no-grad forward measures the mean importance ratio on it; if it leaves
  [1/b, b] the step ends there. Off by default because it costs a forward per
  mini-batch.

Statistics: the loss stats of `ppo_actor_loss` (importance_ratio, clip_ratio,
approx_kl, ...), entropy, kl_k3 (with a reference), n_updates, early_stopped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError
from realflow.api.interface import Model
from realflow.interfaces.common import (
    IDS,
    action_entropy,
    action_logprobs,
    build_sample,
    check_layout,
    fit_mb_spec,
    layout_seqlens,
    logprobs_post_fn,
    run_minibatches,
)
from realflow.interfaces.functional import kl_estimate, masked_mean, ppo_actor_loss

LOGITS_MASK = "packed_logits_mask"


@dataclass
class PolicyArgs:
    """Arguments of the clipped-surrogate update (see the module docstring)."""

    eps_clip: float = 0.2
    c_clip: float | None = None
    ppo_n_minibatches: int = 1
    ppo_epochs: int = 1
    early_stop_imp_ratio: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.eps_clip < 1:
            raise ConfigError(f"eps_clip must be in (0, 1), got {self.eps_clip}")
        if self.c_clip is not None and self.c_clip <= 1:
            raise ConfigError(f"c_clip (dual clip) must be > 1 or None, got {self.c_clip}")
        for name in ("ppo_n_minibatches", "ppo_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
        if self.early_stop_imp_ratio is not None and self.early_stop_imp_ratio <= 1:
            raise ConfigError(f"early_stop_imp_ratio must be > 1 or None, got {self.early_stop_imp_ratio}")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def policy_update(
    model: Model,
    data: SequenceSample,
    mb_spec: MicroBatchSpec,
    args: PolicyArgs,
    *,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    temperature: float,
    who: str,
    kl_beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> dict[str, float]:
    """Train `model` on `data` (packed_input_ids, packed_logprobs[, packed_logits_mask]).

    advantages, loss_mask, ref_logprobs: (total - n_seqs,) action-aligned with
    `data[packed_input_ids]`. Returns averaged statistics (module docstring).
    """
    for key in ("packed_logprobs",) + ((LOGITS_MASK,) if LOGITS_MASK in data.keys else ()):
        check_layout(data, key, "action", who)
    action = layout_seqlens(data, "action")
    token = layout_seqlens(data, "token")
    tensors = {
        IDS: (data.data[IDS], token),
        "old_logp": (data.data["packed_logprobs"].float(), action),
        "advantages": (advantages.float().detach(), action),
        "loss_mask": (loss_mask.bool(), action),
    }
    if LOGITS_MASK in data.keys:
        tensors["logits_mask"] = (data.data[LOGITS_MASK].bool(), action)
    if kl_beta > 0:
        assert ref_logprobs is not None
        tensors["ref_logp"] = (ref_logprobs.float(), action)
    sample = build_sample(data.ids, tensors)

    def loss_fn(logits: torch.Tensor, mb: SequenceSample) -> tuple[torch.Tensor, dict[str, float]]:
        cu = mb.cu_seqlens(IDS)
        lmask = mb.data["logits_mask"] if "logits_mask" in mb.keys else None
        mask = mb.data["loss_mask"]
        logp = action_logprobs(logits, mb.data[IDS], cu, temperature, lmask)  # (total - n,)
        loss, st = ppo_actor_loss(logp, mb.data["old_logp"], mb.data["advantages"], args.eps_clip, mask, args.c_clip)
        stats = {k: float(v) for k, v in st.items() if k != "n_tokens"}
        if kl_beta > 0:
            kl = masked_mean(kl_estimate(logp, mb.data["ref_logp"], "k3"), mask)
            loss = loss + kl_beta * kl
            stats["kl_k3"] = float(kl.detach())
        stats["entropy"] = float(masked_mean(action_entropy(logits, cu, temperature, lmask), mask))
        return loss, stats

    def weight_fn(mb: SequenceSample) -> float:
        return float(mb.data["loss_mask"].sum())

    def stop_before(mb: SequenceSample) -> dict[str, float] | None:
        bound = args.early_stop_imp_ratio
        if bound is None:
            return None
        post = logprobs_post_fn(temperature, "logits_mask")
        logp = model.engine.forward(mb, fit_mb_spec(mb_spec, mb.bs), post_fn=post, output_layout="action")
        ratio = float(masked_mean(torch.exp(logp - mb.data["old_logp"]), mb.data["loss_mask"]))
        return {"importance_ratio": ratio} if not 1.0 / bound <= ratio <= bound else None

    return run_minibatches(
        model.engine, sample, mb_spec, n_minibatches=args.ppo_n_minibatches, n_epochs=args.ppo_epochs,
        loss_fn=loss_fn, weight_fn=weight_fn, who=who, stop_before=stop_before,
    )
