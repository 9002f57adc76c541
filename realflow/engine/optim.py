"""AdamW and its learning-rate schedule, built from `OptimizerConfig`.

Weight decay applies to matrices only (biases, norms and other 1-D parameters are
exempt), as in GPT-2/Llama training recipes. The schedule is linear warmup followed
by constant, linear or cosine decay down to `min_lr_ratio * lr`.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from realflow.api.config import OptimizerConfig


def lr_multiplier(step: int, total_steps: int, cfg: OptimizerConfig) -> float:
    """The factor on `cfg.lr` after `step` optimizer steps (0-based, pure)."""
    warmup = int(cfg.warmup_steps_proportion * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_scheduler_type == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if cfg.lr_scheduler_type == "linear":
        shape = 1.0 - progress
    else:  # cosine
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def make_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimizerConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))
