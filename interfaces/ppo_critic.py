"""`ppo_critic`: PPO's value model: values of every token, and the clipped value loss.

- inference: packed_input_ids -> `values` (token-aligned float32, in reward units).
- train_step: packed_input_ids, prompt_mask, packed_logprobs, packed_ref_logprobs
  (unless kl_ctl=0), rewards, values, seq_no_eos_mask -> statistics. The returns
  come from the same shaping as the actor's (realflow.interfaces.ppo_shaping: give
  both interfaces the same shaping arguments); the loss is `critic_loss`, clipped
  around the old values by `value_eps_clip`, over response actions.

Value normalisation (`value_norm=True`): the head learns returns normalised by an
exponential running mean/std of the returns (ReaL's "exp" normaliser, `value_norm_beta`);
inference denormalises, so the `values` key is always in reward units and the actor
needs to know nothing about it. The statistics are interface state (`state_dict`):
the critic's inference and train MFCs must be one instance (the runners share an
instance between the MFCs of a role with equal arguments), and a resume restores it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.interfaces.common import (
    IDS,
    build_sample,
    check_layout,
    fit_mb_spec,
    layout_seqlens,
    output_like,
    require_keys,
    run_minibatches,
)
from realflow.interfaces.functional import critic_loss, drop_last_token, masked_mean
from realflow.interfaces.ppo_shaping import RewardShapingArgs


class RunningMeanStd:
    """Exponential moving mean and variance with bias correction (as Adam's moments)."""

    def __init__(self, beta: float, eps: float = 1e-5) -> None:
        self.beta, self.eps = beta, eps
        self.mean = self.mean_sq = self.debias = 0.0

    def update(
        self, x: torch.Tensor, mask: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """One update with the masked entries of `x`; `reduce` sums over the shards
        of a data-parallel batch (`dp_sum`), so every replica takes the same update."""
        m = mask.float()
        sums = torch.stack([m.sum(), (x * m).sum(), (x * x * m).sum()])
        if reduce is not None:
            sums = reduce(sums)
        n = float(sums[0])
        if n == 0:
            return
        b = self.beta
        self.mean = b * self.mean + (1 - b) * float(sums[1]) / n
        self.mean_sq = b * self.mean_sq + (1 - b) * float(sums[2]) / n
        self.debias = b * self.debias + (1 - b)

    def mean_std(self) -> tuple[float, float]:
        if self.debias == 0:
            return 0.0, 1.0
        mean = self.mean / self.debias
        var = max(self.mean_sq / self.debias - mean * mean, 0.0)
        return mean, (var + self.eps) ** 0.5

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean_std()
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean_std()
        return x * std + mean

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "mean_sq": self.mean_sq, "debias": self.debias}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.mean_sq, self.debias = state["mean"], state["mean_sq"], state["debias"]


@register_interface("ppo_critic")
@dataclass
class PPOCriticInterface(RewardShapingArgs, ModelInterface):
    """PPO critic; shaping arguments as `ppo_actor`, plus the below."""

    value_eps_clip: float | None = 0.2
    value_norm: bool = False
    value_norm_beta: float = 0.99995
    ppo_n_minibatches: int = 1
    ppo_epochs: int = 1
    normalizer: RunningMeanStd = field(init=False, repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.value_eps_clip is not None and self.value_eps_clip <= 0:
            raise ConfigError(f"value_eps_clip must be > 0 or None, got {self.value_eps_clip}")
        if not 0 < self.value_norm_beta < 1:
            raise ConfigError(f"value_norm_beta must be in (0, 1), got {self.value_norm_beta}")
        for name in ("ppo_n_minibatches", "ppo_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
        self.normalizer = RunningMeanStd(self.value_norm_beta)
        super().__post_init__()

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        require_keys(data, [IDS], "ppo_critic.inference")
        values = model.engine.forward(data, fit_mb_spec(mb_spec, data.bs), output_layout="token").float()  # (T,)
        if self.value_norm:
            values = self.normalizer.denormalize(values)
        return output_like(data, {"values": (values, "token")})

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        who = "ppo_critic.train_step"
        require_keys(data, ["values"], who)
        check_layout(data, "values", "token", who)
        shaped = self.shape(data, who, values=data.data["values"], reduce=model.engine.dp_sum)
        returns, old = shaped.returns, shaped.values
        if self.value_norm:
            self.normalizer.update(returns, shaped.loss_mask, reduce=model.engine.dp_sum)
            returns, old = self.normalizer.normalize(returns), self.normalizer.normalize(old)
        action = layout_seqlens(data, "action")
        sample = build_sample(data.ids, {
            IDS: (data.data[IDS], layout_seqlens(data, "token")),
            "returns": (returns.float().detach(), action),
            "old_values": (old.float().detach(), action),
            "loss_mask": (shaped.loss_mask.bool(), action),
        })

        def loss_fn(out: torch.Tensor, mb: SequenceSample) -> tuple[torch.Tensor, dict[str, float]]:
            v = drop_last_token(out.float(), mb.cu_seqlens(IDS))  # (total - n,) V(s_i)
            loss, st = critic_loss(v, mb.data["old_values"], mb.data["returns"], self.value_eps_clip,
                                   mb.data["loss_mask"])
            return loss, {"value_clip_ratio": float(st["clip_ratio"]), "value": float(st["value"])}

        def weight_fn(mb: SequenceSample) -> float:
            return float(mb.data["loss_mask"].sum())

        stats = dict(shaped.stats)
        stats["returns"] = float(masked_mean(shaped.returns, shaped.loss_mask))
        stats.update(run_minibatches(model.engine, sample, mb_spec, n_minibatches=self.ppo_n_minibatches,
                                     n_epochs=self.ppo_epochs, loss_fn=loss_fn, weight_fn=weight_fn, who=who))
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "value_normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.normalizer.load_state_dict(state["value_normalizer"])
