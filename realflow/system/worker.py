"""The model worker: a process that hosts some model roles and runs their MFCs.

    python -m realflow.system.worker --index 0 --experiment exp --trial t0 --name-root DIR

The launcher starts it with the run secret in its environment. It publishes its
`RequestServer` address under `names.worker(exp, trial, index)` and serves the
master until EXIT (or until the master falls silent for `--idle-timeout` s):

Payloads are the dataclasses of realflow.system.protocol.

- CONFIGURE (`WorkerSetup`): join the torch.distributed (gloo) world of the
  workers (its rendezvous timeout, `DIST_TIMEOUT`, bounds a transfer whose peer
  died), build the hosted roles (`RoleSet.build(..., roles=...)`) and the interfaces of
  their MFCs; the *data worker* also builds its copy of the data set and replies
  with its size and keys.
- FETCH_DATA (`FetchData`): load the samples at the given data-set indices into the
  `SampleStore`; reply with their metadata. The master drives the `DataCursor` over
  `range(len(dataset))`, so only indices and metadata ever reach it.
- TRANSFER (`TransferData`): send this worker's part of a transfer plan.
- RUN_MFC (`RunMFC`): receive the plan's data first, then run `call_mfc` on the
  MFC's inputs gathered from the store, keep the outputs, reply `MFCResult`
  (output metadata, statistics, seconds).
- EVALUATE (`EvaluateMFCs`): the held-out set (built on first use), each named
  train MFC's `evaluate` over it; replies one `MFCRecord` per MFC.
- FREE_DATA (ids), SAVE (`SaveRoles`), EXIT. FETCH_DATA and RUN_MFC also carry
  `free`: ids of finished steps, dropped from the store before anything else.

Not here: scheduling, deciding what moves where (the master), process lifecycle
(the launcher).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from realflow.api.data import SequenceSample
from realflow.api.dfg import MFCDef
from realflow.api.errors import ConfigError
from realflow.api.interface import ModelInterface
from realflow.system import names
from realflow.system.auth import load_secret
from realflow.system.execution import (
    RoleSet, build_dataset, build_eval_dataset, build_interfaces, call_mfc, end_train_step, evaluate_mfc,
    load_run_tokenizer, save_role,
)
from realflow.system.messages import Request, RequestKind
from realflow.system.name_resolve import FileNameResolver
from realflow.system.rendezvous import DIST_TIMEOUT, join_group
from realflow.system.protocol import (
    DataInfo, EvaluateMFCs, FetchData, MFCResult, RunMFC, SaveRoles, TransferData, WorkerSetup, worker_name,
)
from realflow.system.step_log import MFCRecord
from realflow.system.request_server import RequestServer
from realflow.system.sample_store import SampleStore
from realflow.system.transfer import GroupCache, run_transfer_plan
from realflow.system.user_files import import_user_file

logger = logging.getLogger(__name__)


class ModelWorker:
    """The handlers of one worker; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.store = SampleStore()
        self.groups = GroupCache()
        self.setup: WorkerSetup | None = None
        self.roles: RoleSet | None = None
        self.mfcs: dict[str, MFCDef] = {}
        self.interfaces: dict[str, ModelInterface] = {}
        self.dataset: Any = None
        self.eval_dataset: Any = None
        self.tokenizer: Any = None

    def handlers(self) -> dict[RequestKind, Any]:
        return {
            RequestKind.CONFIGURE: self.configure,
            RequestKind.FETCH_DATA: self.fetch_data,
            RequestKind.TRANSFER: self.transfer,
            RequestKind.RUN_MFC: self.run_mfc,
            RequestKind.FREE_DATA: self.free_data,
            RequestKind.SAVE: self.save,
            RequestKind.EVALUATE: self.evaluate,
        }

    def configure(self, request: Request) -> DataInfo | None:
        s: WorkerSetup = request.payload
        if self.setup is not None:
            raise ConfigError(f"worker '{self.name}' is already configured")
        for path in s.user_files:
            import_user_file(path)
        torch.set_num_threads(1)
        torch.manual_seed(s.run.seed)
        role_workers = s.role_workers or {r: (s.rank,) for r in s.roles}
        if s.world_size > 1:
            join_group(s.dist_init, s.rank, s.world_size, DIST_TIMEOUT)  # the launcher's store (rendezvous.py)
            # Collective: every worker makes the same data-parallel groups in the same order.
            self.groups.create(sorted({ws for ws in role_workers.values() if len(ws) > 1}))
        self.tokenizer = load_run_tokenizer(s.run)
        info = None
        if s.load_data:
            self.dataset = build_dataset(s.spec.dataset, self.tokenizer, s.run, s.run.run_dir)
            info = DataInfo(len(self.dataset), tuple(sorted(self.dataset[0].keys)))
        dp_ranks = {r: role_workers[r].index(s.rank) for r in s.roles}
        self.roles = RoleSet.build(s.spec, self.tokenizer, s.run, roles=s.roles, dp_ranks=dp_ranks)
        for role in s.roles:
            engine = self.roles.models[role].engine
            if engine is not None and len(role_workers[role]) > 1:  # model-free roles have no engine
                engine.dp_group = self.groups.get(role_workers[role])  # type: ignore[attr-defined]
        self.mfcs = {m.name: m for m in s.spec.mfcs if m.role in s.roles}
        self.interfaces = build_interfaces(self.mfcs.values())  # shared per role: see build_interfaces
        self.setup = s
        if s.resume_dir is not None:
            self._load_state(Path(s.resume_dir) / f"{self.name}.pt")
        logger.info("worker '%s' (rank %d/%d) hosts roles %s", self.name, s.rank, s.world_size, list(s.roles))
        return info

    def fetch_data(self, request: Request) -> SequenceSample:
        p: FetchData = request.payload
        self.store.free(p.free)
        if self.dataset is None:
            raise ConfigError(f"worker '{self.name}' holds no data set (it is not the data worker)")
        batch = SequenceSample.gather([self.dataset[i] for i in p.indices])
        self.store.put(batch)
        return batch.meta()

    def transfer(self, request: Request) -> int:
        p: TransferData = request.payload
        return len(run_transfer_plan(p.plan, p.meta, self.store, self.groups))

    def run_mfc(self, request: Request) -> MFCResult:
        p: RunMFC = request.payload
        self.store.free(p.free)  # before the plan runs: a new step may reuse a finished step's ids
        if p.transfer is not None:
            run_transfer_plan(p.transfer.plan, p.transfer.meta, self.store, self.groups)
        mfc = self.mfcs.get(p.mfc)
        if mfc is None or self.roles is None:
            raise ConfigError(f"worker '{self.name}' does not host MFC '{p.mfc}' (it hosts {sorted(self.mfcs)})")
        model = self.roles.models[mfc.role]
        batch = self.store.get(p.ids, mfc.input_keys)
        t0 = time.perf_counter()
        out, stats = call_mfc(mfc, self.interfaces[p.mfc], model, batch)
        seconds = time.perf_counter() - t0
        end_train_step(mfc, model)
        summed = tuple(sorted(self.interfaces[p.mfc].summed_stats & set(stats)))
        if out is None:
            return MFCResult(None, stats, seconds, summed)
        self.store.put(out)
        return MFCResult(out.meta(), stats, seconds, summed)

    def evaluate(self, request: Request) -> list[MFCRecord]:
        p: EvaluateMFCs = request.payload
        s = self.setup
        assert s is not None and self.roles is not None
        if self.eval_dataset is None:  # built on first use: only workers hosting an evaluated role need it
            self.eval_dataset = build_eval_dataset(s.spec.dataset, self.tokenizer, s.run, s.run.run_dir)
        return [evaluate_mfc(p.step, self.mfcs[name], self.interfaces[name], self.roles.models[self.mfcs[name].role],
                             self.eval_dataset) for name in p.mfcs]

    def free_data(self, request: Request) -> int:
        return self.store.free(request.payload)

    def save(self, request: Request) -> list[str]:
        p: SaveRoles = request.payload
        assert self.roles is not None
        for role, mfc in p.roles.items():
            save_role(self.interfaces[mfc], self.roles.models[role], self.tokenizer, Path(p.root) / role)
        if p.state_dir is not None:
            Path(p.state_dir).mkdir(parents=True, exist_ok=True)
            torch.save(self._state(), Path(p.state_dir) / f"{self.name}.pt")
        return sorted(p.roles)

    def _state(self) -> dict[str, Any]:
        """What an exact resume needs beyond the HF weights: bit-exact parameters of the
        trained roles, engine state (optimizer, LR schedule, version, sampler), the state
        of every hosted MFC's interface (KL controller, value normaliser), the global RNG."""
        assert self.roles is not None
        roles: dict[str, Any] = {}
        for role, model in self.roles.models.items():
            engine = model.engine
            if engine is None:
                continue
            entry: dict[str, Any] = {"generator": engine.generator.get_state()}
            if hasattr(engine, "optimizer"):
                entry["module"] = model.module.state_dict()
                entry["engine"] = engine.state_dict()
            roles[role] = entry
        interfaces = {name: iface.state_dict() for name, iface in self.interfaces.items()}
        return {"roles": roles, "interfaces": interfaces, "torch_rng": torch.get_rng_state()}

    def _load_state(self, path: Path) -> None:
        assert self.roles is not None
        if not path.is_file():
            raise ConfigError(f"worker '{self.name}': no resume state at {path}")
        state = torch.load(path, weights_only=False)
        hosted = {r for r, m in self.roles.models.items() if m.engine is not None}
        if set(state["roles"]) != hosted:
            raise ConfigError(f"worker '{self.name}': the resume state in {path} holds roles {sorted(state['roles'])}, "
                              f"this worker hosts {sorted(hosted)}; resume with the same allocation")
        if set(state["interfaces"]) != set(self.interfaces):
            raise ConfigError(f"worker '{self.name}': the resume state in {path} holds the interface state of MFCs "
                              f"{sorted(state['interfaces'])}, this worker hosts {sorted(self.interfaces)}")
        for role, entry in state["roles"].items():
            model = self.roles.models[role]
            if "module" in entry:
                model.module.load_state_dict(entry["module"])
                model.engine.load_state_dict(entry["engine"])  # type: ignore[attr-defined]
            else:
                model.engine.generator.set_state(entry["generator"])  # type: ignore[attr-defined]
        for name, iface_state in state["interfaces"].items():  # a shared instance loads the same state again
            self.interfaces[name].load_state_dict(iface_state)
        torch.set_rng_state(state["torch_rng"])
        logger.info("worker '%s' resumed from %s", self.name, path)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a realflow model worker (started by the launcher)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--trial", required=True)
    parser.add_argument("--name-root", required=True, help="root of the FileNameResolver")
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    name = worker_name(args.index)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    worker = ModelWorker(name)
    with RequestServer(name, load_secret(), worker.handlers()) as server:
        server.publish(FileNameResolver(args.name_root), names.worker(args.experiment, args.trial, args.index))
        try:
            server.serve(idle_timeout=args.idle_timeout)
        finally:
            worker.close()
    logger.info("worker '%s' exits", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
