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
from realflow.system.master import QUEUE_DEPTH, Master, check_allocation, default_allocation, merge_shard_stats, shard_ids
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


def _spec(n_seqs: int = 2) -> ExperimentSpec:
    a = MFCDef(name="a", model_name="r0", kind=MFCKind.INFERENCE, interface_type="null_for_master_test",
               input_keys=("x",), output_keys=("y",), n_seqs=n_seqs)
    b = MFCDef(name="b", model_name="r1", kind=MFCKind.INFERENCE, interface_type="null_for_master_test",
               input_keys=("x", "y"), output_keys=("z",), n_seqs=n_seqs)
    models = {"r0": ModelSpec(model_free=True), "r1": ModelSpec(model_free=True)}
    return ExperimentSpec(mfcs=[a, b], models=models, dataset=DatasetSpec(name="prompt"))


class FakeClient:
    """Answers requests as workers would, synchronously; records what was sent."""

    def __init__(self, last_first: bool = False, n_samples: int = 10) -> None:
        self.n_samples = n_samples
        self.last_first = last_first  # answer the newest request first (a RUN_MFC before its TRANSFER)
        self.sent: list[Request] = []
        self.depth: list[int] = []
        self.timeouts: list[float] = []
        self.inflight: dict[str, Request] = {}
        self._next_id = 0

    def send(self, worker: str, kind: RequestKind, payload=None, *, timeout: float) -> Request:  # noqa: ANN001
        busy = [r for r in self.inflight.values() if r.target == worker]
        # A worker serves requests in order; the master may queue one RUN_MFC behind another.
        queued = kind is RequestKind.RUN_MFC and len(busy) < QUEUE_DEPTH and all(
            r.kind is RequestKind.RUN_MFC for r in busy)
        assert not busy or (queued and not self.last_first), f"{worker} got {kind.name} while busy with {busy[0].kind.name}"
        req = Request.new(kind, worker, timeout, payload)
        self.sent.append(req)
        self.depth.append(len(busy) + 1)  # requests in flight at that worker once this one is sent
        self.timeouts.append(timeout)
        self.inflight[req.id] = req
        return req

    def _answer(self, req: Request) -> Response:
        if req.kind is RequestKind.CONFIGURE:
            payload = DataInfo(self.n_samples, ("x",)) if req.target == "w0" else None
        elif req.kind is RequestKind.FETCH_DATA:
            payload = _meta([100 + i for i in req.payload.indices], ["x"])
        elif req.kind is RequestKind.RUN_MFC:
            p: RunMFC = req.payload
            out = {"a": "y", "b": "z", "c": "w"}[p.mfc]
            # "n" tells the shards apart: a shard of k samples reports n=k.
            payload = MFCResult(_meta(list(p.ids), [out]), {"s": 1.0, "n": float(len(p.ids))}, 0.01)
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
    assert default_allocation(_spec(), 1) == {"r0": (0,), "r1": (0,)}
    assert default_allocation(_spec(), 2) == {"r0": (0,), "r1": (1,)}


def test_allocation_accepts_an_index_or_a_list_and_normalises() -> None:
    assert check_allocation(_spec(), {"r0": 1, "r1": [1, 0]}, 2) == {"r0": (1,), "r1": (0, 1)}


@pytest.mark.parametrize("alloc,words", [
    ({"r0": 0}, "roles without a worker ['r1']"),
    ({"r0": 0, "r1": 2}, "distinct worker indices in 0..1: {'r1': 2}"),
    ({"r0": 0, "r1": 1, "nope": 0}, "unknown roles ['nope']"),
    ({"r0": 0, "r1": [0, 0]}, "distinct worker indices in 0..1: {'r1': [0, 0]}"),
    ({"r0": 0, "r1": []}, "{'r1': []}"),
    ({"r0": 0, "r1": True}, "{'r1': True}"),
])
def test_bad_allocation_is_named(alloc, words) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        check_allocation(_spec(), alloc, 2)
    assert words in str(err.value)


def test_a_data_parallel_role_needs_a_sample_per_worker() -> None:
    with pytest.raises(ConfigError, match="'a' has n_seqs=2 but role 'r0' is on 3 workers"):
        check_allocation(_spec(), {"r0": [0, 1, 2], "r1": 0}, 3)


def test_shards_are_contiguous_and_balanced_by_tokens() -> None:
    meta = SequenceSample.unchecked(
        keys={"x"}, ids=[10, 11, 12, 13, 14], seqlens={"x": [[8], [1], [1], [1], [5]]},
        trailing_shapes={"x": ()}, dtypes={"x": torch.int64},
    )
    # Token counts 8 | 1 1 1 5: the best contiguous split of [8, 1, 1, 1, 5] into two is 8 vs 8.
    assert shard_ids(meta, "x", (0, 2)) == [(0, (10,)), (2, (11, 12, 13, 14))]
    assert shard_ids(meta, "x", (3,)) == [(3, (10, 11, 12, 13, 14))]


def test_shard_stats_are_means_weighted_by_samples() -> None:
    merged = merge_shard_stats([({"a": 1.0, "b": 4.0}, 1), ({"a": 4.0}, 3)])
    assert merged == {"a": (1.0 * 1 + 4.0 * 3) / 4, "b": 4.0}
    assert merge_shard_stats([({"loss": 0.1}, 2)]) == {"loss": 0.1}
    assert merge_shard_stats([({"n_tokens": 5.0, "a": 1.0}, 1), ({"n_tokens": 7.0, "a": 2.0}, 1)], {"n_tokens"}) == {
        "n_tokens": 12.0, "a": 1.5}


@pytest.mark.parametrize("last_first", [False, True], ids=["transfer-reply-first", "run-mfc-reply-first"])
def test_dispatch_transfers_inputs_from_their_holders_and_frees_every_holder(tmp_path: Path, last_first) -> None:
    client = FakeClient(last_first)
    run = RunConfig(n_steps=2, fileroot=str(tmp_path), log_jsonl=True)
    master = Master(_spec(), run, client, n_workers=2, dist_init="tcp://127.0.0.1:1")  # type: ignore[arg-type]
    master.configure()
    records = master.run_all()

    kinds = [(r.kind.name, r.target) for r in client.sent]
    assert kinds[:2] == [("CONFIGURE", "w0"), ("CONFIGURE", "w1")]
    # Step 0's samples are freed by the next requests of the workers holding them;
    # what the last step leaves goes out as FREE_DATA before the final checkpoint.
    assert kinds[2:] == [("FETCH_DATA", "w0"), ("RUN_MFC", "w0"), ("TRANSFER", "w0"), ("RUN_MFC", "w1"),
                         ("FETCH_DATA", "w0"), ("RUN_MFC", "w0"), ("TRANSFER", "w0"), ("RUN_MFC", "w1"),
                         ("FREE_DATA", "w0"), ("FREE_DATA", "w1"), ("SAVE", "w0"), ("SAVE", "w1")]
    step0_ids = client.sent[2].payload.indices
    fetch1, run_a1, _, run_b1 = client.sent[6:10]
    assert fetch1.payload.free == tuple(100 + i for i in step0_ids)  # w0 held step 0's x and y
    assert run_a1.payload.free == () and run_b1.payload.free == tuple(100 + i for i in step0_ids)
    frees = {r.target: r.payload for r in client.sent[10:12]}
    step1_ids = [100 + i for i in fetch1.payload.indices]
    assert frees == {"w0": step1_ids, "w1": step1_ids}
    transfer = next(r for r in client.sent if r.kind is RequestKind.TRANSFER).payload
    run_b = next(r for r in client.sent if r.kind is RequestKind.RUN_MFC and r.target == "w1").payload
    assert isinstance(transfer, TransferData) and run_b.transfer == transfer
    moved = {(t.src, t.dsts, t.key) for t in transfer.plan.transfers}
    assert moved == {(0, (1,), "x"), (0, (1,), "y")}  # x from the data worker, y from a's worker
    assert transfer.meta.data is None  # metadata only
    assert [(r.step, r.mfc, r.stats["s"]) for r in records] == [(0, "a", 1.0), (0, "b", 1.0), (1, "a", 1.0), (1, "b", 1.0)]
    saves = [r for r in client.sent if r.kind is RequestKind.SAVE]
    assert sorted(r.target for r in saves) == ["w0", "w1"] and all(isinstance(r.payload, SaveRoles) for r in saves)
    state = (tmp_path / "realflow" / "trial0" / "checkpoints" / "final" / "master_state.json").read_text()
    assert '"completed_steps": 2' in state


def test_a_data_parallel_mfc_runs_one_shard_per_worker_and_its_outputs_stay_there(tmp_path: Path) -> None:
    client = FakeClient()
    run = RunConfig(n_steps=1, fileroot=str(tmp_path), log_jsonl=False)
    master = Master(_spec(n_seqs=4), run, client, n_workers=3, dist_init="tcp://127.0.0.1:1",  # type: ignore[arg-type]
                    allocation={"r0": [0, 1], "r1": 2})
    master.configure()
    setups = {r.target: r.payload for r in client.sent if r.kind is RequestKind.CONFIGURE}
    assert setups["w0"].roles == ("r0",) and setups["w1"].roles == ("r0",) and setups["w2"].roles == ("r1",)
    assert setups["w1"].role_workers == {"r0": (0, 1), "r1": (2,)}
    records = master.run_all()

    sent = [(r.kind.name, r.target) for r in client.sent if r.kind is not RequestKind.CONFIGURE]
    assert sent[:6] == [("FETCH_DATA", "w0"), ("RUN_MFC", "w0"), ("RUN_MFC", "w1"),
                        ("TRANSFER", "w0"), ("TRANSFER", "w1"), ("RUN_MFC", "w2")]
    runs = [r.payload for r in client.sent if r.kind is RequestKind.RUN_MFC]
    # The fake data worker's ids; all samples have 3 tokens, so two samples a shard.
    fetched = next(r for r in client.sent if r.kind is RequestKind.FETCH_DATA).payload.indices
    ids = [100 + i for i in fetched]
    assert [(p.mfc, p.ids) for p in runs] == [("a", tuple(ids[:2])), ("a", tuple(ids[2:])), ("b", tuple(ids))]
    # a's shard on w1 gets x from the data worker; both shards carry the same plan.
    assert runs[0].transfer == runs[1].transfer
    assert {(t.src, t.dsts, t.key, t.ids) for t in runs[0].transfer.plan.transfers} == {(0, (1,), "x", tuple(ids[2:]))}
    # b on w2 gets y from where each shard made it, and x from both holders of the
    # second shard's x (w1 received it for a), balanced: each source sends two samples of each key.
    moved = {(t.src, t.key, t.ids) for t in runs[2].transfer.plan.transfers}
    assert moved == {(0, "x", tuple(ids[:2])), (1, "x", tuple(ids[2:])), (0, "y", tuple(ids[:2])), (1, "y", tuple(ids[2:]))}
    assert [(r.mfc, r.n_seqs, r.stats["n"]) for r in records] == [("a", 4, 2.0), ("b", 4, 4.0)]
    freed = sorted(r.target for r in client.sent if r.kind is RequestKind.FREE_DATA)
    assert freed == ["w0", "w1", "w2"]
    saves = {r.target: r.payload.roles for r in client.sent if r.kind is RequestKind.SAVE}
    assert saves == {"w0": {}, "w1": {}, "w2": {}}  # nothing is trained here


def test_an_mfc_waits_in_its_workers_queue_behind_its_producer(tmp_path: Path) -> None:
    client = FakeClient()
    run = RunConfig(n_steps=2, fileroot=str(tmp_path), log_jsonl=False)
    master = Master(_spec(), run, client, n_workers=1, dist_init="tcp://127.0.0.1:1",  # type: ignore[arg-type]
                    allocation={"r0": 0, "r1": 0})
    master.configure()
    records = master.run_all()
    sent = [(r.kind.name, r.payload.mfc if r.kind is RequestKind.RUN_MFC else None) for r in client.sent[1:]]
    # b is sent while a runs (no reply in between), without a transfer: its inputs are, or will be, on w0.
    assert sent[:3] == [("FETCH_DATA", None), ("RUN_MFC", "a"), ("RUN_MFC", "b")]
    assert sent[3:6] == [("FETCH_DATA", None), ("RUN_MFC", "a"), ("RUN_MFC", "b")]
    assert client.depth[1:7] == [1, 1, 2, 1, 1, 2]  # b went out while a was still in flight
    assert all(r.payload.transfer is None for r in client.sent if r.kind is RequestKind.RUN_MFC)
    assert [(r.step, r.mfc) for r in records] == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]

    client = FakeClient()
    master = Master(_spec(), RunConfig(n_steps=1, fileroot=str(tmp_path), log_jsonl=False), client,  # type: ignore[arg-type]
                    n_workers=1, dist_init="tcp://127.0.0.1:1", allocation={"r0": 0, "r1": 0}, pipeline=False)
    master.configure()
    master.run_all()
    assert [r.kind.name for r in client.sent[1:4]] == ["FETCH_DATA", "RUN_MFC", "RUN_MFC"]
    assert max(client.depth) == 1  # without the pipeline, b waits for a's reply in the master


def test_the_queue_at_a_worker_is_bounded_and_follows_the_graph(tmp_path: Path) -> None:
    spec = _spec()
    c = MFCDef(name="c", model_name="r1", kind=MFCKind.INFERENCE, interface_type="null_for_master_test",
               input_keys=("z",), output_keys=("w",), n_seqs=2)
    spec = ExperimentSpec(mfcs=[*spec.mfcs, c], models=spec.models, dataset=spec.dataset)
    client = FakeClient()
    master = Master(spec, RunConfig(n_steps=1, fileroot=str(tmp_path), log_jsonl=False), client,  # type: ignore[arg-type]
                    n_workers=1, dist_init="tcp://127.0.0.1:1", allocation={"r0": 0, "r1": 0})
    master.configure()
    records = master.run_all()
    runs = [r.payload.mfc for r in client.sent if r.kind is RequestKind.RUN_MFC]
    assert runs == ["a", "b", "c"] and client.depth[1:5] == [1, 1, 2, 3]  # FETCH, then a chain of three queued
    # A queued request's deadline covers the MFCs ahead of it.
    timeouts = [t for r, t in zip(client.sent, client.timeouts) if r.kind is RequestKind.RUN_MFC]
    assert timeouts == [600.0, 1200.0, 1800.0]
    assert [r.mfc for r in records] == ["a", "b", "c"]
