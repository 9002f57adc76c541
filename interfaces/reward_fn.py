"""Rule-based rewards: Python functions of the prompt, the completion and the dataset fields.

A reward function is any callable

    fn(prompt: str, completion: str, **fields) -> float

where `prompt` is the decoded prompt (what the model saw, chat template included),
`completion` the decoded response without special tokens (so without EOS), and
`fields` every metadata field of the sample, i.e. every field of the dataset
record (`answer`, `solutions`, `input_output`, `task`, ...). Record fields named
`prompt` or `completion` are shadowed by the decoded texts. Accept `**fields` to
ignore the ones you do not need.

`register_reward_function(name)` makes a function usable by name;
`resolve_reward_function(spec)` also takes a dotted import path
(`package.module.fn` or `package.module:fn`) or a file (`/path/to/file.py:fn`).

`TextReward` is the base of model-free reward interfaces: its `inference` decodes
every sequence of packed_input_ids (split by prompt_mask) and returns `rewards`,
one float32 per sequence; subclasses implement `score`. The `reward_fn` interface
sums weighted user functions.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import ConfigError, InterfaceError, RegistryError
from realflow.api.interface import Model, ModelInterface, register_interface
from realflow.api.registry import Registry
from realflow.interfaces.common import IDS, check_layout, output_like, require_keys

RewardFunction = Callable[..., float]
REWARD_FUNCTIONS: Registry[RewardFunction] = Registry("reward function")


def register_reward_function(name: str, fn: RewardFunction | None = None, *, overwrite: bool = False) -> Any:
    """Register `fn` under `name` (usable as a decorator)."""

    def deco(f: RewardFunction) -> RewardFunction:
        if not callable(f):
            raise ConfigError(f"reward function '{name}' must be callable, got {f!r}")
        REWARD_FUNCTIONS.register(name, f, overwrite=overwrite)
        return f

    return deco if fn is None else deco(fn)


def _load_file(path: str) -> Any:
    """The module of a Python file: the one already imported from it, else a fresh import.

    Reusing an imported module matters when the file also registers things (a user
    graph naming its own functions by `__file__`): running it twice would register
    them twice.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f"reward function file '{path}' does not exist")
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if origin and Path(origin).name == file.name and Path(origin).resolve() == file:
            return module
    name = f"realflow_user_rewards_{file.stem}_{len(sys.modules)}"
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def resolve_reward_function(spec: str) -> RewardFunction:
    """A registered name, `pkg.module.fn`, `pkg.module:fn` or `/path/file.py:fn`."""
    if spec in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS.get(spec)
    if ":" in spec:
        where, _, attr = spec.rpartition(":")
    elif "." in spec:
        where, _, attr = spec.rpartition(".")
    else:
        raise RegistryError(f"unknown reward function '{spec}'; registered: {', '.join(REWARD_FUNCTIONS.names())} "
                            "(or give 'package.module.fn', 'package.module:fn' or '/path/file.py:fn')")
    try:
        module = _load_file(where) if where.endswith(".py") else importlib.import_module(where)
    except ImportError as e:
        raise ConfigError(f"reward function '{spec}': cannot import '{where}': {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward function '{spec}': '{where}' has no callable '{attr}'")
    return fn


@dataclass(frozen=True)
class Completion:
    """One sequence to score."""

    sample_id: Any
    prompt: str
    completion: str
    fields: dict[str, Any]


def decode_completions(tokenizer: Any, data: SequenceSample, who: str) -> list[Completion]:
    """Every sequence of packed_input_ids, split into prompt and completion by prompt_mask."""
    require_keys(data, [IDS, "prompt_mask"], who)
    check_layout(data, "prompt_mask", "token", who)
    if tokenizer is None:
        raise InterfaceError(f"{who}: the model handle has no tokenizer to decode completions with")
    ids = data.data[IDS].split(data.flat_seqlens(IDS))
    pmask = data.data["prompt_mask"].split(data.flat_seqlens(IDS))
    owners = [i for i, lens in enumerate(data.seqlens[IDS]) for _ in lens]
    out = []
    for seq, mask, i in zip(ids, pmask, owners):
        fields = {k: v[i] for k, v in data.metadata.items() if k not in ("prompt", "completion")}
        out.append(Completion(
            sample_id=data.ids[i],
            prompt=tokenizer.decode(seq[mask].tolist(), skip_special_tokens=False),
            completion=tokenizer.decode(seq[~mask].tolist(), skip_special_tokens=True),
            fields=fields,
        ))
    return out


class TextReward(ModelInterface):
    """Base of model-free rewards: decode, `score` each completion, return `rewards`."""

    name = "text_reward"

    def score(self, items: list[Completion]) -> list[float]:
        raise NotImplementedError

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        items = decode_completions(model.tokenizer, data, f"{self.name}.inference")
        scores = self.score(items)
        assert len(scores) == len(items), (len(scores), len(items))
        return output_like(data, {"rewards": (torch.tensor(scores, dtype=torch.float32), "sequence")})


def call_reward_function(fn: RewardFunction, label: str, item: Completion) -> float:
    """`fn(prompt=..., completion=..., **fields)` as a finite float, errors naming the function and sample."""
    try:
        value = fn(prompt=item.prompt, completion=item.completion, **item.fields)
    except Exception as e:
        raise InterfaceError(f"reward function '{label}' failed on sample {item.sample_id!r}: "
                             f"{type(e).__name__}: {e}") from e
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InterfaceError(f"reward function '{label}' returned {value!r} for sample {item.sample_id!r}; "
                             "expected a number") from None
    if not math.isfinite(value):
        raise InterfaceError(f"reward function '{label}' returned {value} for sample {item.sample_id!r}")
    return value


@register_interface("reward_fn")
@dataclass
class RewardFnInterface(TextReward):
    """`rewards` = sum_i weights[i] * functions[i](prompt=..., completion=..., **fields)."""

    functions: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    name = "reward_fn"

    def __post_init__(self) -> None:
        if isinstance(self.functions, str):
            self.functions = [self.functions]
        if not self.functions:
            raise ConfigError("reward_fn: give at least one function (registered name, dotted path or file.py:fn)")
        self.functions = list(self.functions)
        if self.weights is None:
            self.weights = [1.0] * len(self.functions)
        if len(self.weights) != len(self.functions):
            raise ConfigError(f"reward_fn: {len(self.weights)} weights for {len(self.functions)} functions")
        self._fns = [resolve_reward_function(s) for s in self.functions]

    def score(self, items: list[Completion]) -> list[float]:
        terms = list(zip(self._fns, self.functions, self.weights))
        return [sum(w * call_reward_function(fn, label, item) for fn, label, w in terms) for item in items]
