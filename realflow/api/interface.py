"""Model interfaces: what an MFC does with a model, and how users plug one in.

An interface turns (model, input batch) into an output batch (`generate`,
`inference`) or a training step (`train_step`). It never builds models, moves data
between processes or schedules anything; it reaches the model only through the
`Model` handle and its engine, so the same interface runs in-process and inside a
distributed model worker.

    @register_interface("my_reward")
    class MyReward(ModelInterface):
        def inference(self, model, data, mb_spec): ...
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, TypeVar

import torch

from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.dfg import ModelName
from realflow.api.errors import InterfaceError
from realflow.api.generation import GenerationConfig, GenerationResult
from realflow.api.registry import Registry

LossFn = Callable[[torch.Tensor, SequenceSample], "tuple[torch.Tensor, dict[str, float]]"]


class Engine(Protocol):
    """What an interface may ask of a model's engine (see realflow.engine)."""

    version: int

    def forward(
        self,
        sample: SequenceSample,
        mb_spec: MicroBatchSpec,
        post_fn: Callable[[torch.Tensor, SequenceSample], torch.Tensor] | None = None,
        input_key: str = "packed_input_ids",
        output_layout: str = "token",
    ) -> torch.Tensor: ...

    def train_batch(
        self,
        sample: SequenceSample,
        mb_spec: MicroBatchSpec,
        loss_fn: LossFn,
        loss_weight_fn: Callable[[SequenceSample], float],
        input_key: str = "packed_input_ids",
    ) -> dict[str, float]: ...

    def dp_any(self, flag: bool) -> bool:
        """`flag` OR-ed over the model's data-parallel replicas (train engines)."""
        ...

    def dp_sum(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over the model's data-parallel replicas (`x` when alone)."""
        ...

    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_cu_seqlens: torch.Tensor,
        gconfig: GenerationConfig,
        eos_token_id: int | None,
        pad_token_id: int | None = None,
    ) -> GenerationResult: ...

    def save_hf(self, save_dir: str) -> None: ...


@dataclass
class Model:
    """The handle an interface receives: a model role's module, tokenizer and engine."""

    name: ModelName
    module: torch.nn.Module
    tokenizer: Any
    engine: Engine

    @property
    def version(self) -> int:
        """Parameter version: how many train steps this model has taken."""
        return self.engine.version


class ModelInterface:
    """Base class of interfaces; override the calls the interface supports.

    Interfaces are constructed with the keyword arguments of `MFCDef.interface_args`
    (a dataclass interface gets them as fields).

    Statistics an interface returns are means over its batch, except those named
    in `summed_stats`: totals (counts of tokens, of sequences). When an MFC runs data
    parallel, the runtime merges its shards' statistics accordingly (summed, or
    averaged weighted by the shards' sample counts).
    """

    summed_stats: ClassVar[frozenset[str]] = frozenset()

    def generate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        raise InterfaceError(f"{type(self).__name__} does not support generate")

    def inference(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> SequenceSample:
        raise InterfaceError(f"{type(self).__name__} does not support inference")

    def train_step(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        raise InterfaceError(f"{type(self).__name__} does not support train_step")

    def evaluate(self, model: Model, data: SequenceSample, mb_spec: MicroBatchSpec) -> dict[str, float]:
        return {}

    def save(self, model: Model, save_dir: str) -> None:
        model.engine.save_hf(save_dir)

    def state_dict(self) -> dict[str, Any]:
        """What the interface learns while it runs (an adaptive KL coefficient, a value
        normaliser): saved in the worker's resume state. Stateless interfaces: {}."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise InterfaceError(
                f"{type(self).__name__} keeps no state, but the state to load has keys {sorted(state)}"
            )


I = TypeVar("I", bound=type)

INTERFACES: Registry[type] = Registry("interface")


def register_interface(name: str, cls: type | None = None, *, overwrite: bool = False) -> Any:
    """Register an interface class under `name` (usable as a decorator)."""

    def deco(c: I) -> I:
        if not (isinstance(c, type) and issubclass(c, ModelInterface)):
            raise InterfaceError(f"interface '{name}' must be a ModelInterface subclass, got {c!r}")
        INTERFACES.register(name, c, overwrite=overwrite)
        return c

    return deco if cls is None else deco(cls)


def make_interface(name: str, **args: Any) -> ModelInterface:
    """Instantiate the interface registered as `name` with `args`.

    An argument the interface does not take is an error naming it and listing the
    ones it does.
    """
    cls = INTERFACES.get(name)
    if dataclasses.is_dataclass(cls):
        accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    else:
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return cls(**args)
        accepted = [p for p in params if p != "self"]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise InterfaceError(
            f"interface '{name}' got unknown argument(s) {unknown}; it accepts: {accepted or '(none)'}"
        )
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise InterfaceError(f"interface '{name}': bad arguments {args}: {e}") from e
