"""Experiments: what an algorithm file in `graphs/` declares, and their registry.

An experiment is a typed config dataclass plus a function from that config to an
`ExperimentSpec`: the MFC list, how to build each model role, and the data set.
Runners (in-process, distributed) take an `ExperimentSpec` and a `RunConfig`; they
never look inside the algorithm.

    @register_experiment("sft", SFTConfig)
    def sft(cfg: SFTConfig) -> ExperimentSpec: ...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from realflow.api.config import OptimizerConfig
from realflow.api.data import MicroBatchSpec
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.errors import ConfigError
from realflow.api.registry import Registry


@dataclass
class ModelArch:
    """A random-initialised model, used when `ModelSpec.path` is not given.

    Family names are those of `realflow.model` (llama, qwen2, gpt2, ...). The
    vocabulary size is taken from the tokenizer when `vocab_size` is 0.
    """

    family: str = "qwen2"
    n_layers: int = 4
    hidden_dim: int = 128
    n_q_heads: int = 4
    n_kv_heads: int = 4
    intermediate_dim: int = 512
    vocab_size: int = 0
    n_positions: int = 512
    tied_embedding: bool = True

    def __post_init__(self) -> None:
        for name in ("n_layers", "hidden_dim", "n_q_heads", "n_kv_heads", "intermediate_dim", "n_positions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model arch: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.n_q_heads or self.n_q_heads % self.n_kv_heads:
            raise ConfigError(
                f"model arch: hidden_dim={self.hidden_dim} must divide by n_q_heads={self.n_q_heads}, "
                f"and n_q_heads by n_kv_heads={self.n_kv_heads}"
            )


@dataclass
class ModelSpec:
    """How to build one model role.

    `path` is a local Hugging Face directory; without it the model is random from
    `arch`. `model_free=True` builds nothing: for roles whose interface needs no
    weights (rule-based rewards); its `Model` has no module and no engine. `init_from` names another role whose *initial* weights this role copies
    (a reference model from the actor; a critic from the actor, whose LM head is
    replaced by a value head) and with them its architecture: `arch` is then
    ignored and `path` must be unset. `optimizer=None` means the role is never trained.
    """

    path: str | None = None
    arch: ModelArch = field(default_factory=ModelArch)
    is_critic: bool = False
    init_from: str | None = None
    optimizer: OptimizerConfig | None = None
    gradient_checkpointing: bool = False
    model_free: bool = False


@dataclass
class DatasetSpec:
    """A registered data set (`realflow.api.dataset`) and its arguments.

    With `path=None` the bundled arithmetic task (realflow.tasks.arithmetic) is
    generated in the format the data set expects, with `arithmetic_n_train`
    problems of `arithmetic_difficulty` ("easy", "default", "hard" or e.g.
    "add=2,mul=1").
    """

    name: str = "prompt"
    path: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    arithmetic_n_train: int = 4096
    arithmetic_difficulty: str = "default"


@dataclass
class RunConfig:
    """Settings of a run that do not belong to any algorithm."""

    experiment_name: str = "realflow"
    trial_name: str = "trial0"
    seed: int = 1
    n_steps: int = 10
    fileroot: str = "runs"
    tokenizer_path: str | None = None  # None: the tokenizer bundled with realflow
    # checkpoints/step<k> every so many steps, epochs or seconds (0: off; any that
    # fires saves); checkpoints/final is always written
    save_freq_steps: int = 0
    save_freq_epochs: int = 0
    save_freq_secs: float = 0.0
    # Evaluation every so many steps, epochs or seconds (0: off): the `evaluate` of
    # every train MFC whose inputs are data-set keys (SFT, reward modelling), over
    # the whole held-out set. `eval_path`: a file in the training data set's format;
    # None: the bundled arithmetic task's test split (when the data set has no path).
    eval_freq_steps: int = 0
    eval_freq_epochs: int = 0
    eval_freq_secs: float = 0.0
    eval_path: str | None = None
    log_jsonl: bool = True  # <fileroot>/<experiment>/<trial>/stats.jsonl
    tensorboard: bool = True  # scalars under <fileroot>/<experiment>/<trial>/tensorboard
    # A console line every so many steps (and always the first and the last step and
    # every evaluation); stats.jsonl and TensorBoard get every step regardless.
    log_freq_steps: int = 1

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ConfigError(f"run.n_steps must be >= 1, got {self.n_steps}")
        if isinstance(self.log_freq_steps, bool) or not isinstance(self.log_freq_steps, int) \
                or self.log_freq_steps < 1:
            raise ConfigError(f"run.log_freq_steps must be an int >= 1, got {self.log_freq_steps!r}")
        for name in ("save_freq_steps", "save_freq_epochs", "eval_freq_steps", "eval_freq_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"run.{name} must be an int >= 0 (0: off), got {value!r}")
        for name in ("save_freq_secs", "eval_freq_secs"):
            secs = getattr(self, name)
            if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 <= secs < float("inf"):
                raise ConfigError(f"run.{name} must be a finite number >= 0 (0: off), got {secs!r}")

    @property
    def run_dir(self) -> Path:
        """<fileroot>/<experiment_name>/<trial_name>: logs, checkpoints, generated data."""
        return Path(self.fileroot) / self.experiment_name / self.trial_name

    @property
    def evaluates(self) -> bool:
        return bool(self.eval_freq_steps or self.eval_freq_epochs or self.eval_freq_secs)


@dataclass
class BaseExperimentConfig:
    """Fields every built-in experiment config has (algorithms add their own).

    `n_seqs` is the batch size in samples (prompts) of every MFC; `n_mbs` and
    `max_tokens_per_mb` the micro-batch split (`realflow.api.data.MicroBatchSpec`).
    """

    run: RunConfig = field(default_factory=RunConfig)
    n_seqs: int = 32
    n_mbs: int = 1
    max_tokens_per_mb: int | None = None

    @property
    def mb_spec(self) -> MicroBatchSpec:
        return MicroBatchSpec(n_mbs=self.n_mbs, max_tokens_per_mb=self.max_tokens_per_mb)


@dataclass
class ExperimentSpec:
    """What an experiment function returns."""

    mfcs: list[MFCDef]
    models: dict[str, ModelSpec]
    dataset: DatasetSpec

    def __post_init__(self) -> None:
        roles = {m.model_name.role for m in self.mfcs}
        missing = sorted(roles - set(self.models))
        if missing:
            raise ConfigError(
                f"experiment: MFCs use model role(s) {missing} that have no ModelSpec; "
                f"specified roles: {sorted(self.models)}"
            )
        for mfc in self.mfcs:
            if self.models[mfc.role].model_free and mfc.kind is MFCKind.TRAIN_STEP:
                raise ConfigError(f"MFC '{mfc.name}' trains model role '{mfc.role}', which is model_free")
        for role, spec in self.models.items():
            if spec.init_from is not None and spec.init_from not in self.models:
                raise ConfigError(f"model '{role}': init_from '{spec.init_from}' is not a model role")
            if spec.init_from is not None and spec.path is not None:
                raise ConfigError(
                    f"model '{role}': give either path ('{spec.path}') or init_from ('{spec.init_from}'), not both"
                )
            if spec.init_from is not None and self.models[spec.init_from].model_free:
                raise ConfigError(f"model '{role}': init_from '{spec.init_from}' is model_free and has no weights")


C = TypeVar("C")


@dataclass(frozen=True)
class Experiment(Generic[C]):
    name: str
    config_cls: type[C]
    build: Callable[[C], ExperimentSpec]

    def default_config(self) -> C:
        return self.config_cls()


EXPERIMENTS: Registry[Experiment[Any]] = Registry("experiment")


def register_experiment(name: str, config_cls: type) -> Callable[[Callable[[Any], ExperimentSpec]], Callable]:
    """Decorator: register `fn(config) -> ExperimentSpec` under `name`."""
    if not dataclasses.is_dataclass(config_cls) or "run" not in {f.name for f in dataclasses.fields(config_cls)}:
        raise ConfigError(
            f"experiment '{name}': config class {config_cls!r} must be a dataclass with a `run: RunConfig` field "
            "(derive it from BaseExperimentConfig)"
        )

    def deco(fn: Callable[[Any], ExperimentSpec]) -> Callable[[Any], ExperimentSpec]:
        EXPERIMENTS.register(name, Experiment(name, config_cls, fn))
        return fn

    return deco
