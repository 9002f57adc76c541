"""The in-process runner: any experiment, one process, the real scheduler core.

`run_inprocess(spec, run)` loads the tokenizer and the data set, builds every model
role (ReaLModel) and its engine, validates the graph, and then steps it with the
same `Scheduler` the distributed master drives: each ready MFC takes its input keys
from the step's batch, calls its interface, and adds its outputs to the batch.
Because everything lives in one process, a plain debugger can stop anywhere, which
makes this both the debug mode and the fastest way to test an algorithm.

Deliberately not here: processes, sockets, parallelism, data transfer; and what
both runners share (building roles, interfaces and data sets, calling an MFC,
evaluating, saving): realflow.system.execution.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from realflow.api.data import SequenceSample
from realflow.api.dfg import ModelName, build_graph, mfc_of, train_mfc_by_role
from realflow.api.experiment import ExperimentSpec, RunConfig
from realflow.api.interface import INTERFACES, Model
from realflow.api.scheduler import Scheduler
from realflow.system.data_cursor import DataCursor
from realflow.system.execution import (
    RoleSet, build_dataset, build_eval_dataset, build_interfaces, call_mfc, end_train_step, eval_mfcs, evaluate_mfc,
    load_run_tokenizer, n_tokens, save_role,
)
from realflow.system.step_log import MFCRecord, OnStep, RunRecords, StepEnd

logger = logging.getLogger(__name__)


@dataclass
class RunResult(RunRecords):
    """The records and files of an in-process run, and its models."""

    models: dict[str, Model]


class InProcessRunner:
    """Builds an experiment and steps its graph in this process."""

    def __init__(self, spec: ExperimentSpec, run: RunConfig) -> None:
        self.spec = spec
        self.run = run
        self.run_dir = run.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(run.seed)
        self.tokenizer = load_run_tokenizer(run)
        self.dataset = build_dataset(spec.dataset, self.tokenizer, run, self.run_dir)
        self.graph = build_graph(
            spec.mfcs,
            dataset_keys=sorted(self.dataset[0].keys),
            known_interfaces=INTERFACES.names(),
            known_models=[ModelName(r) for r in spec.models],
        )
        self.roles = RoleSet.build(spec, self.tokenizer, run)
        self.interfaces = build_interfaces(spec.mfcs)
        self.train_mfcs = train_mfc_by_role(self.graph)
        self.cursor = DataCursor(self.dataset, batch_size=spec.mfcs[0].n_seqs, seed=run.seed)
        self.scheduler = Scheduler(self.graph, n_steps=run.n_steps)
        self.records: list[MFCRecord] = []
        self.eval_mfcs = eval_mfcs(spec.mfcs, self.dataset[0].keys) if run.evaluates else []
        self.eval_dataset = build_eval_dataset(spec.dataset, self.tokenizer, run, self.run_dir) \
            if self.eval_mfcs else None
        if run.evaluates and not self.eval_mfcs:
            logger.warning("run.eval_freq_* is set, but no train MFC reads only data-set keys: nothing to evaluate")

    def run_all(self, on_step: OnStep = None) -> RunResult:
        """Step the graph `run.n_steps` times, or until `on_step` returns True."""
        batches: dict[int, SequenceSample] = {}
        step_records: dict[int, list[MFCRecord]] = {}
        end = StepEnd(self.run, self.run_dir, logger, self.cursor.batches_per_epoch, self.records, self.save,
                      self.scheduler.stop_early, self._evaluate if self.eval_mfcs else None, on_step)
        with end:
            while self.scheduler.is_active():
                ready = self.scheduler.get_ready()
                if not ready:
                    raise RuntimeError(f"scheduler stalled with nothing ready: running {self.scheduler.running()}")
                step, name = ready[0]
                if step not in batches:
                    batches[step] = self.cursor.next_batch()
                self.scheduler.start(step, name)
                record = self._run_task(step, name, batches[step])
                step_records.setdefault(step, []).append(record)
                if self.scheduler.done(step, name):
                    del batches[step]
                    end(step, self.cursor.epoch, step_records.pop(step))
        self.save(self.run_dir / "checkpoints" / "final")
        return RunResult(self.records, self.run_dir, self.roles.models)

    def _run_task(self, step: int, name: str, batch: SequenceSample) -> MFCRecord:
        mfc = mfc_of(self.graph, name)
        model = self.roles.models[mfc.role]
        t0 = time.perf_counter()
        out, stats = call_mfc(mfc, self.interfaces[name], model, batch)
        seconds = time.perf_counter() - t0
        if out is not None:
            batch.update_(out)
        end_train_step(mfc, model)
        return MFCRecord(step, name, seconds, batch.bs, n_tokens(batch.select(mfc.input_keys)), stats)

    def _evaluate(self, step: int) -> list[MFCRecord]:
        return [evaluate_mfc(step, m, self.interfaces[m.name], self.roles.models[m.role], self.eval_dataset)
                for m in self.eval_mfcs]

    def save(self, root: Path) -> None:
        """HF checkpoints of every trained role (plus the tokenizer)."""
        for role, mfc_name in self.train_mfcs.items():
            save_role(self.interfaces[mfc_name], self.roles.models[role], self.tokenizer, root / role)


def run_inprocess(
    spec: ExperimentSpec, run: RunConfig, on_step: OnStep = None
) -> RunResult:
    """Run `spec` for `run.n_steps` steps in this process (see the module docstring)."""
    return InProcessRunner(spec, run).run_all(on_step)
