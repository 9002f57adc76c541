"""Typed configuration shared across layers, and `key=value` overrides.

Configs are small dataclasses owned by the component that reads them and composed
into an experiment config. OmegaConf turns `key=value` strings into typed updates
and rejects unknown keys; `apply_overrides` turns its exceptions into one
`ConfigError` that names the key and lists the valid ones.

This module does not know any particular experiment; `graphs/` composes these.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from realflow.api.errors import AllocationError, ConfigError

C = TypeVar("C")

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class OptimizerConfig:
    """AdamW with warmup and a decaying learning rate (read by the train engine)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps_proportion: float = 0.0
    lr_scheduler_type: str = "cosine"
    min_lr_ratio: float = 0.0
    gradient_clipping: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_steps_proportion <= 1.0:
            raise ConfigError(
                f"optimizer.warmup_steps_proportion must be in [0, 1], got {self.warmup_steps_proportion}"
            )
        if self.lr_scheduler_type not in LR_SCHEDULES:
            raise ConfigError(
                f"optimizer.lr_scheduler_type '{self.lr_scheduler_type}' is not one of {list(LR_SCHEDULES)}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.gradient_clipping < 0:
            raise ConfigError(f"optimizer.gradient_clipping must be >= 0 (0 disables), got {self.gradient_clipping}")


@dataclass(frozen=True)
class ParallelismConfig:
    """A 3-D layout: data, tensor and pipeline parallel degrees."""

    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AllocationError(f"parallelism degree {name} must be an integer >= 1, got {value!r}")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    def __str__(self) -> str:
        return f"d{self.dp}t{self.tp}p{self.pp}"


_LAYOUT = re.compile(r"^(?:([dtp])(\d+))+$")
_PART = re.compile(r"([dtp])(\d+)")


def parse_parallelism(text: str) -> ParallelismConfig:
    """Parse a layout string such as ``d2t1p1`` (any order; missing letters mean 1).

    >>> parse_parallelism("d4p2")
    ParallelismConfig(dp=4, tp=1, pp=2)
    """
    if not isinstance(text, str) or not _LAYOUT.match(text.strip()):
        raise AllocationError(
            f"layout '{text}' is not of the form d<dp>t<tp>p<pp> (e.g. 'd2t1p1'; letters d/t/p, each at most once)"
        )
    degrees: dict[str, int] = {}
    for letter, number in _PART.findall(text.strip()):
        if letter in degrees:
            raise AllocationError(f"layout '{text}' gives '{letter}' twice")
        degrees[letter] = int(number)
    return ParallelismConfig(dp=degrees.get("d", 1), tp=degrees.get("t", 1), pp=degrees.get("p", 1))


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                keys.extend(_valid_keys(value, f"{prefix}{f.name}."))
            else:
                keys.append(f"{prefix}{f.name}")
    return keys


def apply_overrides(cfg: C, overrides: Sequence[str]) -> C:
    """Return a copy of dataclass `cfg` with ``key=value`` overrides applied.

    Values are parsed by OmegaConf (ints, floats, bools, lists `[1,2]`, null) and
    checked against the dataclass field types. Each dataclass re-runs its own
    validation (`__post_init__`) on the result.
    """
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    base = OmegaConf.structured(cfg)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        result = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        valid = ", ".join(_valid_keys(cfg))
        culprit = next((o for o in overrides if o.split("=", 1)[0].startswith(str(e.full_key))), None)
        where = f"override '{culprit}': " if culprit else ""
        raise ConfigError(f"{where}unknown config key '{e.full_key}'; valid keys: {valid}") from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad value for '{getattr(e, 'full_key', '?')}': {msg}") from None
    return result  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The full config as YAML (logged at start and saved with checkpoints)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
