"""The dataset registry: `register_dataset`, `make_dataset` and `DatasetUtility`.

A dataset is any class whose constructor takes a `DatasetUtility` as its first
argument (`util`) followed by keyword arguments, and which behaves as a torch map
dataset: `__len__` and `__getitem__(i) -> SequenceSample` holding one sample.
`make_dataset` checks the keyword arguments against the constructor's signature
before calling it, so a typo in a config names the dataset and the argument
instead of surfacing as a bare TypeError.

This module does not load files (see loaders.py) and knows no dataset by name:
the built-ins register themselves from builtin.py and math_code.py.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from torch.utils.data import Dataset

from realflow.api.errors import ConfigError
from realflow.api.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["DatasetUtility", "dataset_names", "make_dataset", "register_dataset"]

_DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


@dataclass(frozen=True)
class DatasetUtility:
    """What every dataset gets from the system: tokenizer, seed and its dp shard.

    `dp_rank` of `world_size` data-parallel ranks: each rank holds a disjoint
    shard, and the shards together hold every record (see `shard_records`).
    """

    tokenizer: PreTrainedTokenizerBase | None
    seed: int = 1
    dp_rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("seed", "dp_rank", "world_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"DatasetUtility: {name} must be an int, got {v!r}")
        if self.world_size < 1:
            raise ConfigError(f"DatasetUtility: world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.dp_rank < self.world_size:
            raise ConfigError(
                f"DatasetUtility: dp_rank must be in [0, {self.world_size}), got {self.dp_rank}"
            )


def register_dataset(name: str, cls: Callable[..., Dataset], *, overwrite: bool = False) -> None:
    """Make `cls` available to `make_dataset(name, ...)` and to configs."""
    _DATASETS.register(name, cls, overwrite=overwrite)


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return _DATASETS.names()


def _check_args(name: str, cls: Callable[..., Any], args: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = list(sig.parameters.values())[1:]  # the first one receives `util`
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    listing = ", ".join(accepted) or "(none)"
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"dataset '{name}': unknown argument{plural} {', '.join(repr(u) for u in unknown)}; "
            f"accepted: {listing}"
        )
    missing = [p.name for p in params if p.name in accepted and p.default is p.empty and p.name not in args]
    if missing:
        raise ConfigError(
            f"dataset '{name}': missing required argument {', '.join(repr(m) for m in missing)}; "
            f"accepted: {listing}"
        )


def make_dataset(name: str, util: DatasetUtility, **args: Any) -> Dataset:
    """Build the dataset registered as `name` with `util` and keyword `args`.

    Unknown `name`: RegistryError listing the registered ones. Unknown or missing
    arguments: ConfigError naming the dataset, the argument and the accepted ones.
    """
    cls = _DATASETS.get(name)
    if not isinstance(util, DatasetUtility):
        raise ConfigError(f"dataset '{name}': util must be a DatasetUtility, got {type(util).__name__}")
    _check_args(name, cls, args)
    return cls(util, **args)


def check_arg(dataset: str, arg: str, value: Any, kind: type, *, minimum: float | None = None,
              maximum: float | None = None, optional: bool = False) -> None:
    """Raise ConfigError naming `dataset` and `arg` unless `value` has the right type and range.

    For the datasets' own constructors: the values come from configs.
    """
    if value is None and optional:
        return
    ok_type = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        raise ConfigError(f"dataset '{dataset}': argument '{arg}' must be {kind.__name__}"
                          f"{' or None' if optional else ''}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"dataset '{dataset}': argument '{arg}' must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"dataset '{dataset}': argument '{arg}' must be <= {maximum}, got {value!r}")
