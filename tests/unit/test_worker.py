"""The model worker's handlers, called in this process (world of one, no sockets)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from realflow.api.errors import ConfigError
from realflow.apps.experiments import load_experiment
from realflow.system.messages import Request, RequestKind
from realflow.system.protocol import DataInfo, FetchData, MFCResult, RunMFC, SaveRoles, WorkerSetup
from realflow.system.worker import ModelWorker

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]


def _req(kind: RequestKind, payload) -> Request:  # noqa: ANN001
    return Request.new(kind, "w0", 60, payload)


@pytest.fixture
def sft(tmp_path: Path):
    cfg, spec = load_experiment("sft", ["n_seqs=4", *("model." + t for t in TINY), "dataset.arithmetic_n_train=16",
                                        "run.n_steps=2", f"run.fileroot={tmp_path}"])
    old = torch.get_num_threads()
    yield cfg, spec
    torch.set_num_threads(old)


def test_configure_fetch_run_free_save(sft, tmp_path: Path) -> None:
    cfg, spec = sft
    w = ModelWorker("w0")
    setup = WorkerSetup(spec, cfg.run, ("default",), 0, 1, "tcp://127.0.0.1:1", load_data=True)
    info = w.configure(_req(RequestKind.CONFIGURE, setup))
    assert isinstance(info, DataInfo) and info.n_samples == 16 and "packed_input_ids" in info.keys
    with pytest.raises(ConfigError, match="already configured"):
        w.configure(_req(RequestKind.CONFIGURE, setup))

    meta = w.fetch_data(_req(RequestKind.FETCH_DATA, FetchData(0, (3, 1, 2, 0))))
    assert meta.data is None and meta.bs == 4 and len(w.store) == 4
    mfc = spec.mfcs[0].name
    result = w.run_mfc(_req(RequestKind.RUN_MFC, RunMFC(0, mfc, tuple(meta.ids), None)))
    assert isinstance(result, MFCResult) and result.meta is None and result.stats["loss"] > 0
    assert w.roles.models["default"].version == 1
    with pytest.raises(ConfigError, match="does not host MFC 'nope'"):
        w.run_mfc(_req(RequestKind.RUN_MFC, RunMFC(0, "nope", tuple(meta.ids), None)))
    assert w.free_data(_req(RequestKind.FREE_DATA, list(meta.ids))) == 4 and len(w.store) == 0

    root = tmp_path / "ckpt"
    w.save(_req(RequestKind.SAVE, SaveRoles(str(root), {"default": mfc}, state_dir=str(root / "worker_state"))))
    assert (root / "default" / "config.json").is_file() and (root / "worker_state" / "w0.pt").is_file()

    again = ModelWorker("w0")
    again.configure(_req(RequestKind.CONFIGURE, WorkerSetup(spec, cfg.run, ("default",), 0, 1, "tcp://127.0.0.1:1",
                                                           load_data=False, resume_dir=str(root / "worker_state"))))
    a, b = w.roles.models["default"], again.roles.models["default"]
    assert b.version == 1
    assert all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()))
    with pytest.raises(ConfigError, match="holds no data set"):
        again.fetch_data(_req(RequestKind.FETCH_DATA, FetchData(0, (0,))))


def test_finished_ids_ride_on_the_next_request(sft) -> None:
    cfg, spec = sft
    w = ModelWorker("w0")
    w.configure(_req(RequestKind.CONFIGURE, WorkerSetup(spec, cfg.run, ("default",), 0, 1, "tcp://127.0.0.1:1",
                                                        load_data=True)))
    mfc = spec.mfcs[0].name
    # A finished step's ids ride on the next request and are dropped before it runs.
    meta = w.fetch_data(_req(RequestKind.FETCH_DATA, FetchData(1, (5, 6, 7, 8))))
    w.fetch_data(_req(RequestKind.FETCH_DATA, FetchData(2, (9,), free=tuple(meta.ids[:3]))))
    assert len(w.store) == 2 and w.store.has(meta.ids[3], "packed_input_ids")
    nine = next(sid for sid in w.store.holdings() if sid != meta.ids[3])
    w.run_mfc(_req(RequestKind.RUN_MFC, RunMFC(2, mfc, (nine,), None, free=(meta.ids[3],))))
    assert list(w.store.holdings()) == [nine]
    assert w.free_data(_req(RequestKind.FREE_DATA, [nine])) == 1
