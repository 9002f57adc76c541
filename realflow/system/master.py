"""The master: steps the algorithm graph by sending MFCs to model workers.

It wraps the I/O-free `Scheduler` (unchanged) and a `DataCursor` driven over
`range(n_samples)`, and holds only metadata: per step, one tensor-free
`SequenceSample` (ids, lengths, dtypes of every key so far) and which worker holds
each (sample id, key). Tensors stay on the workers:

- the *data worker* (worker 0) loads each step's samples from its own copy of the
  data set, given the indices the cursor picked (FETCH_DATA), and reports metadata;
- a ready MFC goes to the worker hosting its role (`allocation`, role -> worker
  index) with a `TransferPlan` (realflow.system.transfer_plan) that moves its input
  keys from the workers holding them; the sources get a TRANSFER request with the
  same plan at the same time;
- a worker has at most one request in flight, and an MFC is dispatched only when
  its worker and every source of its plan are free. So transfers never wait on a
  peer busy with something else (no deadlock), and MFCs on disjoint workers run
  concurrently (`RequestClient.wait_any`);
- when a step is done its samples are freed on every worker holding them.

The parameter-version rule (generate of step t+1 after train of step t) is the
Scheduler's. Per-step log lines and stats JSONL are the in-process runner's
(`log_step`); checkpoints (HF format, per trained role) are written by the workers
hosting those roles (SAVE).

Not here: processes (realflow.system.launcher), data-parallel splits of one MFC
over several workers (one worker per role for now), exact resume.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Hashable

from realflow.api.data import SequenceSample
from realflow.api.dfg import ModelName, build_graph, mfc_of, train_mfc_by_role
from realflow.api.errors import ConfigError
from realflow.api.experiment import ExperimentSpec, RunConfig
from realflow.api.interface import INTERFACES
from realflow.api.scheduler import Scheduler
from realflow.system.data_cursor import DataCursor
from realflow.system.inprocess import MFCRecord, log_step, n_tokens
from realflow.system.messages import Request, RequestKind
from realflow.system.request_client import RequestClient
from realflow.system.transfer_plan import DataKey, Need, TransferPlan, sizes_from_meta, transfer_plan
from realflow.system.protocol import (
    DataInfo, FetchData, MFCResult, RunMFC, SaveRoles, TransferData, WorkerSetup, worker_name,
)

logger = logging.getLogger(__name__)

DATA_WORKER = 0
OnStep = Callable[[int, list[MFCRecord]], None] | None  # called after each step with its records
MASTER_STATE = "master_state.json"  # in a checkpoint directory: scheduler, data cursor, allocation
WORKER_STATE = "worker_state"  # in a checkpoint directory: <worker>.pt per worker


@dataclass(frozen=True)
class MasterTimeouts:
    """Deadlines (seconds) of the master's requests."""

    configure_s: float = 300.0
    mfc_s: float = 600.0
    control_s: float = 60.0  # FETCH_DATA, FREE_DATA
    save_s: float = 300.0


def default_allocation(spec: ExperimentSpec, n_workers: int) -> dict[str, int]:
    """Roles round-robin over the workers, in sorted order."""
    return {role: i % n_workers for i, role in enumerate(sorted(spec.models))}


def check_allocation(spec: ExperimentSpec, allocation: dict[str, int], n_workers: int) -> dict[str, int]:
    missing = sorted(set(spec.models) - set(allocation))
    unknown = sorted(set(allocation) - set(spec.models))
    bad = {r: w for r, w in allocation.items() if not (isinstance(w, int) and 0 <= w < n_workers)}
    if missing or unknown or bad:
        raise ConfigError(
            f"allocation {allocation}: roles without a worker {missing or '-'}, unknown roles {unknown or '-'}, "
            f"worker indices outside 0..{n_workers - 1}: {bad or '-'} (roles: {sorted(spec.models)})"
        )
    return dict(allocation)


@dataclass
class _Step:
    meta: SequenceSample  # every key of the step so far, no tensors
    holders: dict[DataKey, set[int]]
    records: list[MFCRecord]


class Master:
    """Drives the workers through `run.n_steps` steps; see the module docstring."""

    def __init__(
        self,
        spec: ExperimentSpec,
        run: RunConfig,
        client: RequestClient,
        n_workers: int,
        dist_init: str,
        allocation: dict[str, int] | None = None,
        timeouts: MasterTimeouts = MasterTimeouts(),
        user_files: tuple[str, ...] = (),
        resume_from: Path | None = None,
    ) -> None:
        self.user_files = tuple(user_files)
        self.resume_from = resume_from
        self.spec, self.run, self.client = spec, run, client
        self.n_workers = n_workers
        self.dist_init = dist_init
        self.allocation = check_allocation(spec, allocation or default_allocation(spec, n_workers), n_workers)
        self.timeouts = timeouts
        self.run_dir = Path(run.fileroot) / run.experiment_name / run.trial_name
        self.records: list[MFCRecord] = []
        self._steps: dict[int, _Step] = {}
        self._busy: set[int] = set()
        self._inflight: dict[str, tuple[Request, int, str | None, frozenset[int]]] = {}  # id -> (req, step, mfc, ranks)

    # ----------------------------------------------------------------- set-up

    def configure(self) -> None:
        """CONFIGURE every worker (collectively: they join one gloo world), then build the graph."""
        payloads = {}
        for w in range(self.n_workers):
            roles = tuple(sorted(r for r, i in self.allocation.items() if i == w))
            payloads[worker_name(w)] = WorkerSetup(
                self.spec, self.run, roles, w, self.n_workers, self.dist_init, load_data=(w == DATA_WORKER),
                user_files=self.user_files,
                resume_dir=None if self.resume_from is None else str(self.resume_from / WORKER_STATE),
            )
        infos = self.client.call_all(RequestKind.CONFIGURE, payloads, timeout=self.timeouts.configure_s)
        data: DataInfo = infos[worker_name(DATA_WORKER)]
        self.graph = build_graph(
            self.spec.mfcs,
            dataset_keys=list(data.keys),
            known_interfaces=INTERFACES.names(),
            known_models=[ModelName(r) for r in self.spec.models],
        )
        self.train_mfcs = train_mfc_by_role(self.graph)
        self.cursor = DataCursor(range(data.n_samples), batch_size=self.spec.mfcs[0].n_seqs, seed=self.run.seed)
        self.scheduler = Scheduler(self.graph, n_steps=self.run.n_steps)
        if self.resume_from is not None:
            self._load_state(self.resume_from / MASTER_STATE)

    # ------------------------------------------------------------------- loop

    def run_all(self, on_step: OnStep = None, stop_after_steps: int | None = None) -> list[MFCRecord]:
        """Step until `run.n_steps` are done, or stop (with a resumable checkpoint
        `checkpoints/step<k>`) once `stop_after_steps` steps are complete."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / "stats.jsonl").open("a") if self.run.log_jsonl else None
        try:
            done_steps: set[int] = set()  # done in the scheduler; finished once no request of theirs is out
            while self.scheduler.is_active() or self._inflight:
                if stop_after_steps is not None and self.scheduler.completed_steps >= stop_after_steps \
                        and not self._inflight:
                    self.save(self.run_dir / "checkpoints" / f"step{self.scheduler.completed_steps}")
                    return self.records
                self._dispatch_ready()
                if not self._inflight:
                    raise RuntimeError(f"scheduler stalled with nothing ready: running {self.scheduler.running()}")
                requests = [r for r, *_ in self._inflight.values()]
                for response in self.client.wait_any(requests):
                    request, step, name, ranks = self._inflight.pop(response.request_id)
                    self._busy -= ranks
                    payload = response.unwrap()
                    if name is not None and self._mfc_done(step, name, payload):
                        done_steps.add(step)
                # A source's TRANSFER reply may come after its consumer's RUN_MFC reply.
                for step in sorted(done_steps):
                    if not any(s == step for _, s, _, _ in self._inflight.values()):
                        done_steps.discard(step)
                        self._finish_step(step, log, on_step)
        finally:
            if log is not None:
                log.close()
        self.save(self.run_dir / "checkpoints" / "final")
        return self.records

    def _dispatch_ready(self) -> None:
        for step, name in self.scheduler.get_ready():
            mfc = mfc_of(self.graph, name)
            w = self.allocation[mfc.role]
            if step not in self._steps:
                if self._busy:
                    continue  # a new step's data comes once the workers are free
                self._fetch(step)
            st = self._steps[step]
            plan = self._plan(st, w, mfc.input_keys)
            ranks = frozenset({w, *plan.ranks()})
            if ranks & self._busy:
                continue
            self.scheduler.start(step, name)
            transfer = None
            if plan.transfers:
                keys = sorted({t.key for t in plan.transfers})
                transfer = TransferData(plan, st.meta.select(keys))
                for src in sorted(set(plan.ranks()) - {w}):
                    req = self.client.send(worker_name(src), RequestKind.TRANSFER, transfer,
                                           timeout=self.timeouts.mfc_s)
                    self._inflight[req.id] = (req, step, None, frozenset({src}))
                for sid, key in plan.received_by(w):
                    st.holders[(sid, key)].add(w)
            req = self.client.send(worker_name(w), RequestKind.RUN_MFC, RunMFC(step, name, tuple(st.meta.ids), transfer),
                                   timeout=self.timeouts.mfc_s)
            self._inflight[req.id] = (req, step, name, frozenset({w}))
            self._busy |= ranks

    def _fetch(self, step: int) -> None:
        indices = tuple(self.cursor.next_indices())
        meta: SequenceSample = self.client.call(
            worker_name(DATA_WORKER), RequestKind.FETCH_DATA, FetchData(step, indices), timeout=self.timeouts.control_s
        )
        holders = {(sid, k): {DATA_WORKER} for sid in meta.ids for k in meta.keys}
        self._steps[step] = _Step(meta, holders, [])

    @staticmethod
    def _plan(st: _Step, w: int, keys: tuple[str, ...] | list[str]) -> TransferPlan:
        need = Need(w, tuple(st.meta.ids), tuple(keys))
        return transfer_plan(st.holders, [need], sizes_from_meta(st.meta.select(keys)))

    def _mfc_done(self, step: int, name: str, result: MFCResult) -> bool:
        """File an MFC's result; True when this finished its step in the scheduler."""
        st = self._steps[step]
        mfc = mfc_of(self.graph, name)
        w = self.allocation[mfc.role]
        if result.meta is not None:
            st.meta.update_(result.meta)
            for sid in result.meta.ids:
                for k in result.meta.keys:
                    st.holders[(sid, k)] = {w}  # a recomputed key lives only here
        st.records.append(MFCRecord(step, name, result.seconds, st.meta.bs,
                                    n_tokens(st.meta.select(mfc.input_keys)), dict(result.stats)))
        return self.scheduler.done(step, name)

    def _finish_step(self, step: int, log: IO[str] | None, on_step: OnStep) -> None:
        st = self._steps.pop(step)
        holding = sorted({w for ws in st.holders.values() for w in ws})
        ids: list[Hashable] = list(st.meta.ids)
        self.client.call_all(RequestKind.FREE_DATA, {worker_name(w): ids for w in holding},
                             timeout=self.timeouts.control_s)
        self.records.extend(st.records)
        log_step(step, self.run.n_steps, self.cursor.epoch, st.records, log)
        if self.run.save_freq_steps and (step + 1) % self.run.save_freq_steps == 0:
            self.save(self.run_dir / "checkpoints" / f"step{step + 1}")
        if on_step is not None:
            on_step(step, st.records)

    # ------------------------------------------------------------ checkpoints

    def save(self, root: Path) -> None:
        """A checkpoint between steps: HF weights of every trained role (written by the
        workers hosting them), each worker's resume state, and the master's state."""
        assert not self._inflight, "save only between steps"
        by_worker: dict[str, dict[str, str]] = {worker_name(w): {} for w in range(self.n_workers)}
        for role, mfc in self.train_mfcs.items():
            by_worker[worker_name(self.allocation[role])][role] = mfc
        payloads = {w: SaveRoles(str(root), roles, state_dir=str(root / WORKER_STATE)) for w, roles in by_worker.items()}
        self.client.call_all(RequestKind.SAVE, payloads, timeout=self.timeouts.save_s)
        state = {
            "scheduler": self.scheduler.state_dict(),
            "cursor": self.cursor.state_dict(),
            "allocation": self.allocation,
            "n_workers": self.n_workers,
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / MASTER_STATE).write_text(json.dumps(state, indent=1))

    def _load_state(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"cannot resume: no master state at {path}")
        state = json.loads(path.read_text())
        if state["allocation"] != self.allocation or state["n_workers"] != self.n_workers:
            raise ConfigError(
                f"cannot resume from {path}: it was saved with {state['n_workers']} workers and allocation "
                f"{state['allocation']}, this run has {self.n_workers} and {self.allocation}"
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self.cursor.load_state_dict(state["cursor"])
        logger.info("resumed from %s after %d steps", path.parent, self.scheduler.completed_steps)
