"""What both runners do with one experiment's pieces: load its tokenizer and data
sets, build its model roles and interfaces, call one MFC, evaluate, save a role.

The in-process runner (realflow.system.inprocess) and the model workers
(realflow.system.worker) call these same functions, which is why a distributed
run gives the in-process statistics bit for bit.

Not here: scheduling (realflow.api.scheduler, the runners), processes, sockets.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable

import transformers

import realflow.interfaces  # noqa: F401  (registers the built-in interfaces)
from realflow.api.data import SequenceSample
from realflow.api.dataset import DatasetUtility, make_dataset
from realflow.api.dfg import MFCDef, MFCKind, ModelName
from realflow.api.errors import ConfigError, InterfaceError
from realflow.api.experiment import DatasetSpec, ExperimentSpec, RunConfig
from realflow.api.interface import Model, ModelInterface, make_interface
from realflow.assets import tokenizer_path
from realflow.engine.train import InferenceEngine, TrainEngine
from realflow.model.builder import build_role_models
from realflow.system.step_log import MFCRecord
from realflow.tasks.arithmetic import FILE_FOR_DATASET, write_arithmetic_task

logger = logging.getLogger(__name__)


def load_run_tokenizer(run: RunConfig) -> Any:
    path = run.tokenizer_path or tokenizer_path()
    if not Path(path).is_dir():
        raise ConfigError(f"run.tokenizer_path '{path}' is not a directory holding a tokenizer")
    return transformers.AutoTokenizer.from_pretrained(path)


def build_dataset(spec: DatasetSpec, tokenizer: Any, run: RunConfig, work_dir: Path, split: str = "train") -> Any:
    """The data set of `spec`; with no path, the bundled arithmetic task is written
    first and its `split` ("train", or "test" for evaluation) is read."""
    source = spec.path
    if source is None:
        if spec.name not in FILE_FOR_DATASET:
            raise ConfigError(
                f"dataset '{spec.name}' has no path and the arithmetic task has no file for it; "
                f"give dataset.path (the task has files for {sorted(FILE_FOR_DATASET)})"
            )
        paths = write_arithmetic_task(
            work_dir / "data", n_train=spec.arithmetic_n_train, seed=run.seed, difficulty=spec.arithmetic_difficulty
        )
        source = paths[f"{FILE_FOR_DATASET[spec.name]}_{split}"]
    util = DatasetUtility(tokenizer=tokenizer, seed=run.seed, dp_rank=0, world_size=1)
    return make_dataset(spec.name, util, source=source, **spec.args)


@dataclass
class RoleSet:
    """The models of an experiment with their engines, by role."""

    models: dict[str, Model]

    @classmethod
    def build(
        cls, spec: ExperimentSpec, tokenizer: Any, run: RunConfig, roles: Collection[str] | None = None,
        dp_ranks: dict[str, int] | None = None,
    ) -> RoleSet:
        """Models and engines of `roles` (default: every role of `spec`).

        `dp_ranks[role]` (default 0) is this replica's index among the data-parallel
        workers of a role: it offsets the engine's sampling seed, so replicas do not
        draw the same random numbers for different prompts. Replica 0 samples exactly
        as the single-process run does.

        Only the modules of `roles` (and the roles they start from, `init_from`) are
        built; weights and engine seeds follow each role's index among all roles, so a
        worker hosting a subset gets bit-identical models and samplers.
        """
        modules = build_role_models(
            spec.models,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            seed=run.seed,
            roles=roles,
        )
        trained = {m.role: m.name for m in spec.mfcs if m.kind is MFCKind.TRAIN_STEP}
        models = {
            role: Model(ModelName(role), None, tokenizer, None)  # type: ignore[arg-type]
            for role, mspec in spec.models.items()
            if mspec.model_free and (roles is None or role in roles)
        }
        index = {role: i for i, role in enumerate(sorted(r for r, s in spec.models.items() if not s.model_free))}
        for role, module in sorted(modules.items()):
            i = index[role]
            mspec = spec.models[role]
            seed = run.seed * 7919 + i + 104729 * (dp_ranks or {}).get(role, 0)
            if role in trained:
                if mspec.optimizer is None:
                    raise ConfigError(
                        f"model role '{role}' is trained by MFC '{trained[role]}' but has no optimizer "
                        f"(set models.{role}.optimizer)"
                    )
                engine: InferenceEngine = TrainEngine(module, mspec.optimizer, total_steps=run.n_steps, seed=seed)
            else:
                module.requires_grad_(False)
                engine = InferenceEngine(module, seed=seed)
            models[role] = Model(ModelName(role), module, tokenizer, engine)
        return cls(models)


def n_tokens(sample: SequenceSample) -> int:
    return sample.total_len(sample.default_token_key()) if sample.keys else 0


def mfc_inputs(mfc: MFCDef, batch: SequenceSample) -> SequenceSample:
    """The MFC's input keys of `batch`, renamed from graph to interface names."""
    inputs = batch.select(mfc.input_keys)
    inputs.remap_keys_({g: i for g, i in mfc.input_rename.items() if g != i})
    return inputs


def call_mfc(mfc: MFCDef, interface: ModelInterface, model: Model, batch: SequenceSample) -> tuple[SequenceSample | None, dict[str, float]]:
    """Run one MFC on `batch` (graph key names in and out); returns (outputs, stats)."""
    inputs = mfc_inputs(mfc, batch)
    if mfc.kind is MFCKind.TRAIN_STEP:
        stats = interface.train_step(model, inputs, mfc.mb_spec)
        return None, dict(stats or {})
    call = interface.generate if mfc.kind is MFCKind.GENERATE else interface.inference
    out = call(model, inputs, mfc.mb_spec)
    rename = mfc.output_rename
    if out is None or not set(rename) <= out.keys:
        got = sorted(out.keys) if out is not None else None
        raise InterfaceError(
            f"MFC '{mfc.name}': interface '{mfc.interface_type}' {mfc.kind.value} returned keys {got}, "
            f"but the MFC declares outputs {sorted(rename)} (interface names)"
        )
    out = out.select(list(rename))
    out.remap_keys_({i: g for i, g in rename.items() if i != g})
    return out, {}


def build_interfaces(mfcs: Iterable[MFCDef]) -> dict[str, ModelInterface]:
    """The interface of each MFC, by MFC name: one instance per (role, interface, arguments).

    MFCs of one role that name the same interface with equal arguments share one
    instance, and so its state (`ModelInterface.state_dict`): the critic's inference
    denormalises values with the normaliser its train step updates, and the actor's
    MFCs see one KL controller. An instance per MFC would let the copies drift apart
    silently. MFCs with other arguments (an actor inference that recomputes old
    log-probs under another `logprobs_key`) get their own instance. Both runners
    build their interfaces here, so they share alike.
    """
    out: dict[str, ModelInterface] = {}
    built: list[tuple[str, str, dict[str, Any], ModelInterface]] = []
    for m in mfcs:
        args = dict(m.interface_args)
        same = [i for role, kind, a, i in built if (role, kind, a) == (m.role, m.interface_type, args)]
        if same:
            out[m.name] = same[0]
        else:
            out[m.name] = make_interface(m.interface_type, **args)
            built.append((m.role, m.interface_type, args, out[m.name]))
    return out


def build_eval_dataset(spec: DatasetSpec, tokenizer: Any, run: RunConfig, work_dir: Path) -> Any:
    """The held-out set: `run.eval_path` in the training data set's format, or the
    bundled task's test split when the training data set has no path."""
    if run.eval_path is None and spec.path is not None:
        raise ConfigError(f"run.eval_freq_* is set but run.eval_path is not: give a held-out file in the format of "
                          f"data set '{spec.name}' (the training data is {spec.path})")
    return build_dataset(dataclasses.replace(spec, path=run.eval_path), tokenizer, run, work_dir, split="test")


def eval_mfcs(mfcs: Iterable[MFCDef], dataset_keys: Collection[str]) -> list[MFCDef]:
    """The train MFCs evaluation runs: those whose inputs are all data-set keys."""
    return [m for m in mfcs if m.kind is MFCKind.TRAIN_STEP and set(m.input_keys) <= set(dataset_keys)]


EVAL_SUFFIX = ":eval"  # an evaluation's record is named after its train MFC plus this


def evaluate_mfc(step: int, mfc: MFCDef, interface: ModelInterface, model: Model, dataset: Any) -> MFCRecord:
    """`interface.evaluate` over the whole held-out `dataset` in batches of the MFC's
    `n_seqs`, as the record `<mfc>:eval` of `step`. Each statistic is the mean over
    the batches weighted by their loss tokens (`n_tokens`, when the interface reports
    it) or samples; `summed_stats` are summed."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(dataset), mfc.n_seqs):
        batch = SequenceSample.gather([dataset[i] for i in range(start, min(start + mfc.n_seqs, len(dataset)))])
        tokens += n_tokens(batch.select(mfc.input_keys))  # graph names, as the runners count
        inputs = mfc_inputs(mfc, batch)
        stats = interface.evaluate(model, inputs, mfc.mb_spec)
        w = float(stats.get("n_tokens", batch.bs))
        for k, v in stats.items():
            summed = k in interface.summed_stats
            totals[k] = totals.get(k, 0.0) + float(v) * (1.0 if summed else w)
            weights[k] = weights.get(k, 0.0) + (0.0 if summed else w)
    stats = {k: v / weights[k] if weights[k] else v for k, v in totals.items()}
    return MFCRecord(step, mfc.name + EVAL_SUFFIX, time.perf_counter() - t0, len(dataset), tokens, stats)


def end_train_step(mfc: MFCDef, model: Model) -> None:
    """After an MFC call: a train step advances its engine (LR schedule, parameter version)."""
    if mfc.kind is MFCKind.TRAIN_STEP:
        model.engine.end_step()  # type: ignore[attr-defined]


def save_role(interface: ModelInterface, model: Model, tokenizer: Any, out: Path) -> None:
    """An HF checkpoint of one trained role, with the tokenizer next to it."""
    interface.save(model, str(out))
    tokenizer.save_pretrained(str(out))
