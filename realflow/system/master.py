"""The master: steps the algorithm graph by sending MFCs to model workers.

It wraps the I/O-free `Scheduler` (unchanged) and a `DataCursor` driven over
`range(n_samples)`, and holds only metadata: per step, one tensor-free
`SequenceSample` (ids, lengths, dtypes of every key so far) and which worker holds
each (sample id, key). Tensors stay on the workers:

- the *data worker* (worker 0) loads each step's samples from its own copy of the
  data set, given the indices the cursor picked (FETCH_DATA), and reports metadata;
- a ready MFC goes to the workers hosting its role (`allocation`, role -> worker
  indices). A role on k > 1 workers is data parallel: the step's samples are cut
  into k contiguous shards balanced by tokens (`partition_balanced` over the
  lengths of the MFC's first input key), each worker runs the MFC on its shard,
  and a train MFC's replicas sum their gradients (realflow.engine.train). With the
  requests goes one `TransferPlan` (realflow.system.transfer_plan) that moves every
  shard's input keys from the workers holding them; sources outside the role get a
  TRANSFER request with the same plan at the same time. The shards' outputs stay
  where they were made; their statistics are merged as means weighted by the
  shards' sample counts (a train step's are already global, so they agree);
- an MFC is dispatched when its workers and every source of its plan are free.
  So transfers never wait on a peer busy with something else (no deadlock), and
  MFCs on disjoint workers run concurrently (`RequestClient.wait_any`). The one
  exception needs no transfer: an MFC whose inputs are on its (single) worker or
  will be made there by MFCs already sent may wait in that worker's queue
  (`_queue_behind`, at most `QUEUE_DEPTH` requests a worker);
- when a step is done its samples are freed on every worker holding them: the ids
  ride on the worker's next RUN_MFC or FETCH_DATA (`free`), which drops them before
  anything else, so freeing costs no round trip; FREE_DATA goes out only before a
  checkpoint and at the end.

The parameter-version rule (generate of step t+1 after train of step t) is the
Scheduler's. Per-step log lines, stats JSONL, TensorBoard scalars and when to save
are those of the in-process runner (`realflow.system.step_log`), the lines under this
module's logger; checkpoints (HF format, per trained role) are written by the
workers hosting those roles (SAVE).

Not here: processes (realflow.system.launcher); tensor or pipeline parallelism
inside a worker.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Hashable, Mapping, Sequence

from realflow.api.data import SequenceSample
from realflow.api.partition import partition_balanced
from realflow.api.dfg import ModelName, build_graph, mfc_of, train_mfc_by_role
from realflow.api.errors import ConfigError
from realflow.api.experiment import ExperimentSpec, RunConfig
from realflow.api.interface import INTERFACES
from realflow.api.scheduler import Scheduler, TaskState
from realflow.system.data_cursor import DataCursor
from realflow.system.execution import EVAL_SUFFIX, eval_mfcs, n_tokens
from realflow.system.step_log import MFCRecord, OnStep, StepEnd
from realflow.system.messages import Request, RequestKind
from realflow.system.request_client import RequestClient
from realflow.system.transfer_plan import DataKey, Need, TransferPlan, sizes_from_meta, transfer_plan
from realflow.system.protocol import (
    DataInfo, EvaluateMFCs, FetchData, MFCResult, RunMFC, SaveRoles, TransferData, WorkerSetup, worker_name,
)

logger = logging.getLogger(__name__)

DATA_WORKER = 0
QUEUE_DEPTH = 3  # requests the master keeps in flight at one worker when pipelining (Master._queue_behind)
MASTER_STATE = "master_state.json"  # in a checkpoint directory: scheduler, data cursor, allocation
WORKER_STATE = "worker_state"  # in a checkpoint directory: <worker>.pt per worker


@dataclass(frozen=True)
class MasterTimeouts:
    """Deadlines (seconds) of the master's requests."""

    configure_s: float = 300.0
    mfc_s: float = 600.0
    control_s: float = 60.0  # FETCH_DATA, FREE_DATA
    save_s: float = 300.0


Allocation = dict[str, tuple[int, ...]]  # role -> its workers (sorted); several: data parallel


def default_allocation(spec: ExperimentSpec, n_workers: int) -> Allocation:
    """Roles round-robin over the workers, in sorted order, one worker each."""
    return {role: (i % n_workers,) for i, role in enumerate(sorted(spec.models))}


def check_allocation(
    spec: ExperimentSpec, allocation: Mapping[str, int | Sequence[int]], n_workers: int
) -> Allocation:
    """`allocation` (role -> a worker index or a list of them) checked and normalised.

    Raises one ConfigError listing roles without workers, unknown roles, bad worker
    indices, and MFCs with fewer samples than their role has workers.
    """
    missing = sorted(set(spec.models) - set(allocation))
    unknown = sorted(set(allocation) - set(spec.models))
    out: Allocation = {}
    bad: dict[str, Any] = {}
    for role, ws in allocation.items():
        listed = [ws] if isinstance(ws, int) else ws
        ok = isinstance(listed, (list, tuple)) and len(listed) > 0 and len(set(listed)) == len(listed) and all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w < n_workers for w in listed
        )
        if ok:
            out[role] = tuple(sorted(listed))
        else:
            bad[role] = ws
    if missing or unknown or bad:
        raise ConfigError(
            f"allocation {dict(allocation)}: roles without a worker {missing or '-'}, unknown roles {unknown or '-'}, "
            f"not one or more distinct worker indices in 0..{n_workers - 1}: {bad or '-'} "
            f"(roles: {sorted(spec.models)})"
        )
    small = [f"'{m.name}' has n_seqs={m.n_seqs} but role '{m.role}' is on {len(out[m.role])} workers"
             for m in spec.mfcs if m.role in out and m.n_seqs < len(out[m.role])]
    if small:
        raise ConfigError(f"allocation: every data-parallel worker needs at least one sample: {'; '.join(small)}")
    return out


def shard_ids(meta: SequenceSample, key: str, workers: Sequence[int]) -> list[tuple[int, tuple[Hashable, ...]]]:
    """(worker, ids) per data-parallel shard: contiguous, balanced by the tokens of `key`."""
    ids = list(meta.ids)
    if len(workers) == 1:
        return [(workers[0], tuple(ids))]
    sizes = [sum(meta.seqlens[key][i]) for i in range(len(ids))]
    return [(w, tuple(ids[a:b])) for w, (a, b) in zip(workers, partition_balanced(sizes, len(workers)))]


def merge_shard_stats(
    shards: Sequence[tuple[Mapping[str, float], int]], summed: Collection[str] = ()
) -> dict[str, float]:
    """The statistics of a data-parallel MFC from its shards' (stats, n samples).

    A statistic in `summed` (a total, `ModelInterface.summed_stats`) is summed over
    the shards; any other is the mean over the shards that report it, weighted by
    their sample counts. Statistics a train step reduced over the group already
    agree on every shard, so they come out as they went in.
    """
    if len(shards) == 1:
        return dict(shards[0][0])
    total: dict[str, float] = {}
    weight: dict[str, int] = {}
    for stats, n in shards:
        for k, v in stats.items():
            w = 1 if k in summed else n
            total[k] = total.get(k, 0.0) + float(v) * w
            weight[k] = weight.get(k, 0) + n
    return {k: total[k] if k in summed else total[k] / weight[k] for k in total}


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
        allocation: Mapping[str, int | Sequence[int]] | None = None,
        timeouts: MasterTimeouts = MasterTimeouts(),
        user_files: tuple[str, ...] = (),
        resume_from: Path | None = None,
        pipeline: bool = True,
    ) -> None:
        self.user_files = tuple(user_files)
        self.resume_from = resume_from
        self.spec, self.run, self.client = spec, run, client
        self.n_workers = n_workers
        self.dist_init = dist_init
        self.allocation = check_allocation(spec, allocation or default_allocation(spec, n_workers), n_workers)
        self.timeouts = timeouts
        self.run_dir = run.run_dir
        self.records: list[MFCRecord] = []
        self._steps: dict[int, _Step] = {}
        self._load: Counter[int] = Counter()  # requests in flight per worker
        self.pipeline = pipeline
        # MFCs sent behind their producers on the same worker, not yet READY in the scheduler.
        self._queued: set[tuple[int, str]] = set()
        self._inflight: dict[str, tuple[Request, int, str | None, frozenset[int]]] = {}  # id -> (req, step, mfc, ranks)
        # Results of data-parallel MFCs as their shards come back: (step, mfc) -> shard index -> result.
        self._shards: dict[tuple[int, str], tuple[dict[int, MFCResult], list[int]]] = {}  # + shard sizes
        self._shard_of: dict[str, int] = {}  # request id -> shard index
        self._to_free: dict[int, list[Hashable]] = {}  # worker -> ids of finished steps it still holds

    # ----------------------------------------------------------------- set-up

    def configure(self) -> None:
        """CONFIGURE every worker (collectively: they join one gloo world), then build the graph."""
        payloads = {}
        for w in range(self.n_workers):
            roles = tuple(sorted(r for r, ws in self.allocation.items() if w in ws))
            payloads[worker_name(w)] = WorkerSetup(
                self.spec, self.run, roles, w, self.n_workers, self.dist_init, load_data=(w == DATA_WORKER),
                user_files=self.user_files,
                resume_dir=None if self.resume_from is None else str(self.resume_from / WORKER_STATE),
                role_workers=dict(self.allocation),
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
        self.eval_mfcs = eval_mfcs(self.spec.mfcs, data.keys) if self.run.evaluates else []
        if self.run.evaluates and not self.eval_mfcs:
            logger.warning("run.eval_freq_* is set, but no train MFC reads only data-set keys: nothing to evaluate")
        if self.resume_from is not None:
            self._load_state(self.resume_from / MASTER_STATE)

    # ------------------------------------------------------------------- loop

    def run_all(self, on_step: OnStep = None, stop_after_steps: int | None = None) -> list[MFCRecord]:
        """Step until `run.n_steps` are done, or stop (with a resumable checkpoint
        `checkpoints/step<k>`) once `stop_after_steps` steps are complete."""
        end = StepEnd(self.run, self.run_dir, logger, self.cursor.batches_per_epoch, self.records, self.save,
                      self.scheduler.stop_early, self._evaluate if self.eval_mfcs else None, on_step)
        with end:
            done_steps: set[int] = set()  # done in the scheduler; finished once no request of theirs is out
            while self.scheduler.is_active() or self._inflight:
                if stop_after_steps is not None and self.scheduler.completed_steps >= stop_after_steps \
                        and not self._inflight:
                    self.save(self.run_dir / "checkpoints" / f"step{self.scheduler.completed_steps}")
                    return self.records
                self._dispatch_ready()
                self._queue_behind()
                if not self._inflight:
                    raise RuntimeError(f"scheduler stalled with nothing ready: running {self.scheduler.running()}")
                requests = [r for r, *_ in self._inflight.values()]
                for response in self.client.wait_any(requests):
                    request, step, name, ranks = self._inflight.pop(response.request_id)
                    self._load.subtract(ranks)
                    payload = response.unwrap()
                    if name is not None and self._shard_done(response.request_id, step, name, payload):
                        done_steps.add(step)
                    self._start_queued()
                # A source's TRANSFER reply may come after its consumer's RUN_MFC reply.
                for step in sorted(done_steps):
                    if not any(s == step for _, s, _, _ in self._inflight.values()):
                        done_steps.discard(step)
                        self._finish_step(step, end)
        self.save(self.run_dir / "checkpoints" / "final")
        return self.records

    def _dispatch_ready(self) -> None:
        for step, name in self.scheduler.get_ready():
            mfc = mfc_of(self.graph, name)
            workers = self.allocation[mfc.role]
            if step not in self._steps:
                if self._busy:
                    continue  # a new step's data comes once the workers are free
                self._fetch(step)
            if self._busy.intersection(workers):
                continue  # checked before planning: planning is most of the master's work per MFC
            st = self._steps[step]
            shards = shard_ids(st.meta, mfc.input_keys[0], workers)
            plan = self._plan(st, shards, mfc.input_keys)
            ranks = frozenset({*workers, *plan.ranks()})
            if ranks & self._busy:
                continue
            self.scheduler.start(step, name)
            transfer = None
            if plan.transfers:
                keys = sorted({t.key for t in plan.transfers})
                transfer = TransferData(plan, st.meta.select(keys))
                for src in sorted(set(plan.ranks()) - set(workers)):
                    req = self.client.send(worker_name(src), RequestKind.TRANSFER, transfer,
                                           timeout=self.timeouts.mfc_s)
                    self._inflight[req.id] = (req, step, None, frozenset({src}))
                for w in workers:
                    for sid, key in plan.received_by(w):
                        st.holders[(sid, key)].add(w)
            if len(shards) > 1:
                self._shards[(step, name)] = ({}, [len(ids) for _, ids in shards])
            for i, (w, ids) in enumerate(shards):
                req = self.client.send(worker_name(w), RequestKind.RUN_MFC,
                                       RunMFC(step, name, ids, transfer, free=self._take_free(w)),
                                       timeout=self.timeouts.mfc_s)
                self._inflight[req.id] = (req, step, name, frozenset({w}))
                if len(shards) > 1:
                    self._shard_of[req.id] = i
            self._load.update(ranks)

    @property
    def _busy(self) -> set[int]:
        return {w for w, n in self._load.items() if n > 0}

    def _queue_behind(self) -> None:
        """Send a worker busy with an MFC the next MFC it can run without new data.

        A worker serves its requests in order, so an MFC whose inputs are all on that
        worker, or are outputs of MFCs already sent there, can wait in the worker's
        queue instead of in the master: the round trip and the master's own work
        between MFCs then overlap the running one (`pipeline=False` turns this off).
        Only single-worker roles, workers running nothing but RUN_MFCs of this step,
        at most `QUEUE_DEPTH` requests per worker, no transfers; the scheduler's rules
        are kept: every task a queued MFC waits for is already sent to its worker, and
        it is marked started when it becomes READY (`_start_queued`), before its reply.
        """
        if not self.pipeline:
            return
        sent: dict[int, list[str]] = {}  # worker -> the RUN_MFCs in flight there (only single-worker ones)
        mixed: set[int] = set()  # workers with a TRANSFER or a data-parallel shard in flight
        for _, step, name, ranks in self._inflight.values():
            for w in ranks:
                if name is not None and self.allocation[mfc_of(self.graph, name).role] == (w,):
                    sent.setdefault(w, []).append(name)
                else:
                    mixed.add(w)
        for step, st in self._steps.items():
            for name in self.scheduler.mfcs:
                if (step, name) in self._queued or self.scheduler.state(step, name) not in (
                        TaskState.READY, TaskState.BLOCKED):
                    continue
                mfc = mfc_of(self.graph, name)
                workers = self.allocation[mfc.role]
                w = workers[0]
                if len(workers) > 1 or w in mixed or not sent.get(w) or self._load[w] >= QUEUE_DEPTH:
                    continue
                ahead = set(sent[w])
                unmet = self.scheduler.unmet(step, name)
                if any(t.step != step or t.mfc not in ahead for t in unmet):
                    continue
                coming = {k for p in ahead for k in mfc_of(self.graph, p).output_keys}
                if not all(k in coming or w in st.holders.get((sid, k), ()) for k in mfc.input_keys
                           for sid in st.meta.ids):
                    continue
                if unmet:
                    self._queued.add((step, name))
                else:
                    self.scheduler.start(step, name)
                req = self.client.send(worker_name(w), RequestKind.RUN_MFC,
                                       RunMFC(step, name, tuple(st.meta.ids), None, free=self._take_free(w)),
                                       # its deadline also covers the MFCs ahead of it in the worker's queue
                                       timeout=self.timeouts.mfc_s * (1 + len(sent[w])))
                self._inflight[req.id] = (req, step, name, frozenset({w}))
                self._load[w] += 1
                sent[w].append(name)

    def _start_queued(self) -> None:
        """Mark queued MFCs started once the scheduler has them READY (their producer is done)."""
        for step, name in sorted(self._queued):
            if self.scheduler.state(step, name) is TaskState.READY:
                self.scheduler.start(step, name)
                self._queued.discard((step, name))

    def _fetch(self, step: int) -> None:
        indices = tuple(self.cursor.next_indices())
        meta: SequenceSample = self.client.call(
            worker_name(DATA_WORKER), RequestKind.FETCH_DATA, FetchData(step, indices, free=self._take_free(DATA_WORKER)),
            timeout=self.timeouts.control_s,
        )
        holders = {(sid, k): {DATA_WORKER} for sid in meta.ids for k in meta.keys}
        self._steps[step] = _Step(meta, holders, [])

    @staticmethod
    def _plan(st: _Step, shards: list[tuple[int, tuple[Hashable, ...]]], keys: Sequence[str]) -> TransferPlan:
        if all(w in st.holders[(sid, k)] for w, ids in shards for sid in ids for k in keys):
            return TransferPlan(())  # every shard's worker holds its inputs: nothing to plan
        needs = [Need(w, ids, tuple(keys)) for w, ids in shards]
        return transfer_plan(st.holders, needs, sizes_from_meta(st.meta.select(keys)))

    def _take_free(self, w: int) -> tuple[Hashable, ...]:
        """The ids worker `w` should drop before its next request (finished steps)."""
        return tuple(self._to_free.pop(w, ()))

    def _flush_free(self) -> None:
        """FREE_DATA now for whatever finished steps left on the workers."""
        if self._to_free:
            payloads = {worker_name(w): list(ids) for w, ids in sorted(self._to_free.items())}
            self._to_free.clear()
            self.client.call_all(RequestKind.FREE_DATA, payloads, timeout=self.timeouts.control_s)

    def _shard_done(self, request_id: str, step: int, name: str, result: MFCResult) -> bool:
        """File one RUN_MFC reply; True when this finished its step in the scheduler."""
        workers = self.allocation[mfc_of(self.graph, name).role]
        shard = self._shard_of.pop(request_id, None)
        if shard is None:
            return self._mfc_done(step, name, [(workers[0], 1, result)])
        results, sizes = self._shards[(step, name)]
        results[shard] = result
        if len(results) < len(workers):
            return False
        del self._shards[(step, name)]
        return self._mfc_done(step, name, [(workers[i], sizes[i], results[i]) for i in range(len(workers))])

    def _mfc_done(self, step: int, name: str, shards: list[tuple[int, int, MFCResult]]) -> bool:
        """File an MFC's results, one (worker, n samples, result) per shard in sample
        order; True when this finished its step in the scheduler."""
        st = self._steps[step]
        mfc = mfc_of(self.graph, name)
        metas = [r.meta for _, _, r in shards if r.meta is not None]
        if metas:
            st.meta.update_(metas[0] if len(metas) == 1 else SequenceSample.gather(metas))
            for w, _, r in shards:
                assert r.meta is not None
                for sid in r.meta.ids:
                    for k in r.meta.keys:
                        st.holders[(sid, k)] = {w}  # a recomputed key lives only where it was made
        stats = merge_shard_stats([(r.stats, n) for _, n, r in shards], {k for _, _, r in shards for k in r.summed})
        seconds = max(r.seconds for _, _, r in shards)
        st.records.append(MFCRecord(step, name, seconds, st.meta.bs, n_tokens(st.meta.select(mfc.input_keys)), stats))
        return self.scheduler.done(step, name)

    def _finish_step(self, step: int, end: StepEnd) -> None:
        st = self._steps.pop(step)
        # The step's samples are dropped by every worker holding them at the start of
        # its next RUN_MFC or FETCH_DATA (no round trip of its own); what is left at the
        # end, or before a checkpoint, goes out as FREE_DATA (`_flush_free`).
        for w in sorted({w for ws in st.holders.values() for w in ws}):
            self._to_free.setdefault(w, []).extend(st.meta.ids)
        end(step, self.cursor.epoch, st.records)

    def _evaluate(self, step: int) -> list[MFCRecord]:
        """EVALUATE on the first worker of each evaluated role (replicas are identical)."""
        by_worker: dict[str, list[str]] = {}
        for m in self.eval_mfcs:
            by_worker.setdefault(worker_name(self.allocation[m.role][0]), []).append(m.name)
        replies = self.client.call_all(RequestKind.EVALUATE,
                                       {w: EvaluateMFCs(step, tuple(names)) for w, names in by_worker.items()},
                                       timeout=self.timeouts.save_s)
        got = {r.mfc: r for records in replies.values() for r in records}
        return [got[m.name + EVAL_SUFFIX] for m in self.eval_mfcs]

    # ------------------------------------------------------------ checkpoints

    def save(self, root: Path) -> None:
        """A checkpoint between steps: HF weights of every trained role (written by the
        workers hosting them), each worker's resume state, and the master's state."""
        assert not self._inflight, "save only between steps"
        self._flush_free()
        by_worker: dict[str, dict[str, str]] = {worker_name(w): {} for w in range(self.n_workers)}
        for role, mfc in self.train_mfcs.items():
            by_worker[worker_name(self.allocation[role][0])][role] = mfc  # the first replica writes HF weights
        payloads = {w: SaveRoles(str(root), roles, state_dir=str(root / WORKER_STATE)) for w, roles in by_worker.items()}
        self.client.call_all(RequestKind.SAVE, payloads, timeout=self.timeouts.save_s)
        state = {
            "scheduler": self.scheduler.state_dict(),
            "cursor": self.cursor.state_dict(),
            "allocation": {r: list(ws) for r, ws in self.allocation.items()},
            "n_workers": self.n_workers,
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / MASTER_STATE).write_text(json.dumps(state, indent=1))

    def _load_state(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"cannot resume: no master state at {path}")
        state = json.loads(path.read_text())
        saved = {r: tuple(ws) if isinstance(ws, list) else (ws,) for r, ws in state["allocation"].items()}
        if saved != self.allocation or state["n_workers"] != self.n_workers:
            raise ConfigError(
                f"cannot resume from {path}: it was saved with {state['n_workers']} workers and allocation "
                f"{state['allocation']}, this run has {self.n_workers} and {self.allocation}"
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self.cursor.load_state_dict(state["cursor"])
        logger.info("resumed from %s after %d steps", path.parent, self.scheduler.completed_steps)
