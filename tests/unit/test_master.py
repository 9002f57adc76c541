"""The master's dispatch, driven by a fake client that plays the workers in-process.

What is checked: the allocation rules; FETCH_DATA goes to the data worker; an MFC
whose inputs live elsewhere carries a transfer plan and its sources get TRANSFER
with the same plan; a worker never has two requests in flight; finished steps are
freed on every holder; records carry the workers' stats.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from realflow.api.data import SequenceSample
from realflow.api.dfg import MFCDef, MFCKind
from realflow.api.errors import ConfigError
from realflow.api.experiment import DatasetSpec, ExperimentSpec, ModelSpec, RunConfig
from realflow.api.interface import ModelInterface, register_interface
from realflow.system.master import Master, check_allocation, default_allocation
from realflow.system.messages import Request, RequestKind, Response
from realflow.system.protocol import DataInfo, MFCResult, RunMFC, SaveRoles, TransferData


@register_interface("null_for_master_test", overwrite=True)
class _Null(ModelInterface):
    pass


def _meta(ids: list[int], keys: list[str]) -> SequenceSample:
    return SequenceSample.unchecked(
        keys=set(keys), ids=list(ids), seqlens={k: [[3]] * len(ids) for k in keys},
        trailing_shapes={k: () for k in keys}, dtypes={k: torch.int64 for k in keys},
    )


def _spec() -> ExperimentSpec:
    a = MFCDef(name="a", model_name="r0", kind=MFCKind.INFERENCE, interface_type="null_for_master_test",
               input_keys=("x",), output_keys=("y",), n_seqs=2)
    b = MFCDef(name="b", model_name="r1", kind=MFCKind.INFERENCE, interface_type="null_for_master_test",
               input_keys=("x", "y"), output_keys=("z",), n_seqs=2)
    models = {"r0": ModelSpec(model_free=True), "r1": ModelSpec(model_free=True)}
    return ExperimentSpec(mfcs=[a, b], models=models, dataset=DatasetSpec(name="prompt"))


class FakeClient:
    """Answers requests as workers would, synchronously; records what was sent."""

    def __init__(self, last_first: bool = False) -> None:
        self.last_first = last_first  # answer the newest request first (a RUN_MFC before its TRANSFER)
        self.sent: list[Request] = []
        self.inflight: dict[str, Request] = {}
        self._next_id = 0

    def send(self, worker: str, kind: RequestKind, payload=None, *, timeout: float) -> Request:  # noqa: ANN001
        busy = [r for r in self.inflight.values() if r.target == worker]
        assert not busy, f"{worker} got {kind.name} while busy with {busy[0].kind.name}"
        req = Request.new(kind, worker, timeout, payload)
        self.sent.append(req)
        self.inflight[req.id] = req
        return req

    def _answer(self, req: Request) -> Response:
        if req.kind is RequestKind.CONFIGURE:
            payload = DataInfo(10, ("x",)) if req.target == "w0" else None
        elif req.kind is RequestKind.FETCH_DATA:
            payload = _meta([100 + i for i in req.payload.indices], ["x"])
        elif req.kind is RequestKind.RUN_MFC:
            p: RunMFC = req.payload
            out = {"a": "y", "b": "z"}[p.mfc]
            payload = MFCResult(_meta(list(p.ids), [out]), {"s": 1.0}, 0.01)
        else:
            payload = None
        return Response(req.id, req.kind, req.target, True, payload)

    def wait_any(self, requests: list[Request]) -> list[Response]:
        first = requests[-1] if self.last_first else requests[0]
        del self.inflight[first.id]
        return [self._answer(first)]

    def call(self, worker, kind, payload=None, *, timeout):  # noqa: ANN001
        req = self.send(worker, kind, payload, timeout=timeout)
        del self.inflight[req.id]
        return self._answer(req).payload

    def call_all(self, kind, payloads, *, timeout):  # noqa: ANN001
        return {w: self.call(w, kind, p, timeout=timeout) for w, p in payloads.items()}


def test_default_allocation_is_round_robin_over_sorted_roles() -> None:
    assert default_allocation(_spec(), 1) == {"r0": 0, "r1": 0}
    assert default_allocation(_spec(), 2) == {"r0": 0, "r1": 1}


@pytest.mark.parametrize("alloc,words", [
    ({"r0": 0}, "roles without a worker ['r1']"),
    ({"r0": 0, "r1": 2}, "outside 0..1: {'r1': 2}"),
    ({"r0": 0, "r1": 1, "nope": 0}, "unknown roles ['nope']"),
])
def test_bad_allocation_is_named(alloc, words) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        check_allocation(_spec(), alloc, 2)
    assert words in str(err.value)


@pytest.mark.parametrize("last_first", [False, True], ids=["transfer-reply-first", "run-mfc-reply-first"])
def test_dispatch_transfers_inputs_from_their_holders_and_frees_every_holder(tmp_path: Path, last_first) -> None:
    client = FakeClient(last_first)
    run = RunConfig(n_steps=2, fileroot=str(tmp_path), log_jsonl=True)
    master = Master(_spec(), run, client, n_workers=2, dist_init="tcp://127.0.0.1:1")  # type: ignore[arg-type]
    master.configure()
    records = master.run_all()

    kinds = [(r.kind.name, r.target) for r in client.sent]
    assert kinds[:2] == [("CONFIGURE", "w0"), ("CONFIGURE", "w1")]
    step0 = kinds[2:8]
    assert step0 == [("FETCH_DATA", "w0"), ("RUN_MFC", "w0"), ("TRANSFER", "w0"), ("RUN_MFC", "w1"),
                     ("FREE_DATA", "w0"), ("FREE_DATA", "w1")]
    transfer = next(r for r in client.sent if r.kind is RequestKind.TRANSFER).payload
    run_b = next(r for r in client.sent if r.kind is RequestKind.RUN_MFC and r.target == "w1").payload
    assert isinstance(transfer, TransferData) and run_b.transfer == transfer
    moved = {(t.src, t.dsts, t.key) for t in transfer.plan.transfers}
    assert moved == {(0, (1,), "x"), (0, (1,), "y")}  # x from the data worker, y from a's worker
    assert transfer.meta.data is None  # metadata only
    assert [(r.step, r.mfc, r.stats) for r in records] == [(0, "a", {"s": 1.0}), (0, "b", {"s": 1.0}),
                                                           (1, "a", {"s": 1.0}), (1, "b", {"s": 1.0})]
    saves = [r for r in client.sent if r.kind is RequestKind.SAVE]
    assert sorted(r.target for r in saves) == ["w0", "w1"] and all(isinstance(r.payload, SaveRoles) for r in saves)
    state = (tmp_path / "realflow" / "trial0" / "checkpoints" / "final" / "master_state.json").read_text()
    assert '"completed_steps": 2' in state
