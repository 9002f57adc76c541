"""The data-transfer executor on 3 gloo processes: every consumer ends bit-identical.

Each rank builds the same reference batch from a seed, keeps only the (id, key)
pairs its placement gives it, runs the plan, and checks what it then holds against
the reference byte for byte. Several dtypes, trailing shapes, multi-sequence
samples, a zero-length sample, data held by two ranks, broadcasts to two
consumers and a consumer that already holds part of its need are all exercised, first point to
point (no groups made), then over broadcast groups, then a plan in the other
direction that only some ranks take part in.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dist_helpers import free_port, run_ranks
from realflow.api.data import SequenceSample
from realflow.api.errors import DataError
from realflow.system.sample_store import SampleStore
from realflow.system.transfer import GroupCache, run_transfer_plan
from realflow.system.transfer_plan import Need, Transfer, TransferPlan, sizes_from_meta, transfer_plan

WORLD = 3
IDS = [f"s{i}" for i in range(6)]
TEST_DEADLINE_S = 90.0


def reference_batch() -> SequenceSample:
    g = torch.Generator().manual_seed(1234)
    tok_lens = [5, 3, 0, 7, 2, 4]  # s2 is empty
    h_lens = [[2, 1], [1], [3, 3], [1, 2], [4], [2]]  # several sequences per sample
    n_tok, n_h = sum(tok_lens), sum(map(sum, h_lens))
    data = {
        "tok": torch.randint(0, 50_000, (n_tok,), generator=g, dtype=torch.int64),
        "logp": torch.randn(n_tok, generator=g),
        "h": torch.randn(n_h, 2, 3, generator=g).to(torch.bfloat16),
        "rew": torch.randn(len(IDS), generator=g, dtype=torch.float64),
    }
    return SequenceSample(
        keys=set(data),
        ids=IDS,
        seqlens={"tok": [[n] for n in tok_lens], "logp": [[n] for n in tok_lens], "h": h_lens,
                 "rew": [[1]] * len(IDS)},
        trailing_shapes={k: tuple(t.shape[1:]) for k, t in data.items()},
        dtypes={k: t.dtype for k, t in data.items()},
        data=data,
        metadata={"prompt": [f"p{i}" for i in range(len(IDS))]},
    )


# Which rank holds which (id, key) before the transfer.
PLACEMENT = {
    **{(sid, "tok"): {0} for sid in IDS},
    **{(sid, "logp"): {1} for sid in IDS[:3]},
    **{(sid, "logp"): {2} for sid in IDS[3:]},
    **{(sid, "h"): {1, 2} for sid in IDS},
    **{(sid, "rew"): {2} for sid in IDS},
}
NEEDS = [
    Need(0, tuple(IDS[:3]), ("tok", "logp", "h", "rew")),
    Need(1, tuple(IDS[3:]), ("tok", "logp", "rew", "h")),  # already holds h
    Need(2, tuple(IDS), ("tok", "h")),
]
# Afterwards, everything goes back to rank 1 from wherever it now lives.
NEEDS_BACK = [Need(1, tuple(IDS), ("tok", "logp", "rew"))]


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _holdings(ref: SequenceSample, placement: dict, rank: int) -> SampleStore:
    store = SampleStore()
    for sample in ref.unpack():
        keys = [k for k in sorted(ref.keys) if rank in placement.get((sample.ids[0], k), ())]
        if keys:
            store.put(sample.select(keys))
    return store


def _check(store: SampleStore, ref: SequenceSample, rank: int, needs: list[Need]) -> int:
    by_id = {s.ids[0]: s for s in ref.unpack()}
    checked = 0
    for need in needs:
        if need.rank != rank:
            continue
        for sid, key in need.items():
            got, want = store.tensor(sid, key), by_id[sid].data[key]
            assert got.dtype == want.dtype and got.shape == want.shape, (rank, sid, key)
            assert _bits(got) == _bits(want), f"rank {rank}: sample {sid} key {key} differs"
            checked += 1
        batch = store.get(need.ids, need.keys)  # rebuilt samples regroup into a valid batch
        batch.validate()
        assert batch.metadata["prompt"] == [by_id[sid].metadata["prompt"][0] for sid in need.ids]
        for k in need.keys:
            assert batch.seqlens[k] == [by_id[sid].seqlens[k][0] for sid in need.ids]
    return checked


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        ref = reference_batch()
        meta = ref.meta()
        plan = transfer_plan(PLACEMENT, NEEDS, sizes_from_meta(meta))
        groups = GroupCache(timeout=datetime.timedelta(seconds=30))

        # 1. No groups made: every transfer goes point to point (0 -> 1, 2 included).
        store = _holdings(ref, PLACEMENT, rank)
        received = run_transfer_plan(plan, meta, store, groups)
        assert received == plan.received_by(rank)
        n = _check(store, ref, rank, NEEDS)

        # 2. With groups made collectively: broadcasts over the world and over {0, 1}.
        groups.create([(0, 1), (0, 1, 2), (1, 0)])
        assert len(groups) == 2
        broadcast = {t.ranks for t in plan.for_rank(rank) if groups.get(t.ranks) is not None}
        assert broadcast == {(0, 1, 2), (0, 1)} if rank in (0, 1) else broadcast == {(0, 1, 2)}
        store = _holdings(ref, PLACEMENT, rank)
        assert run_transfer_plan(plan, meta, store, groups) == received
        n += _check(store, ref, rank, NEEDS)

        # 3. The reverse direction, planned from where the data lives now.
        now_held: dict = {}
        for r in range(WORLD):
            for item, ranks in PLACEMENT.items():
                if r in ranks:
                    now_held.setdefault(item, set()).add(r)
            for item in plan.received_by(r):
                now_held.setdefault(item, set()).add(r)
        back = transfer_plan(now_held, NEEDS_BACK, sizes_from_meta(meta))
        assert back.transfers and all(t.dsts == (1,) for t in back.transfers)
        if rank in back.ranks():
            run_transfer_plan(back, meta, store, groups)
        n += _check(store, ref, rank, NEEDS_BACK)

        # A sender whose data disagrees with the metadata fails before any communication.
        if rank == 0:
            bad = TransferPlan((Transfer(0, (1,), "tok", ("s0",), (1,)),))
            wrong = reference_batch()
            wrong.seqlens["tok"][0] = [6]
            try:
                run_transfer_plan(bad, wrong.meta(), store, groups)
                raise AssertionError("expected a DataError")
            except DataError as e:
                assert "holds key 'tok' of sample 's0' as (5,)" in str(e) and "(6,)" in str(e)
        Path(out_dir, f"rank{rank}.ok").write_text(str(n))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(TEST_DEADLINE_S + 30)
def test_three_gloo_ranks_receive_exactly_the_right_bits(tmp_path: Path) -> None:
    run_ranks(_worker, (free_port(), str(tmp_path)), WORLD, TEST_DEADLINE_S, "the transfer test")
    counts = {r: int((tmp_path / f"rank{r}.ok").read_text()) for r in range(WORLD)}
    # Twice: rank 0 3 ids x 4 keys, rank 1 3 x 4, rank 2 6 x 2; then rank 1 6 x 3.
    assert counts == {0: 24, 1: 24 + 18, 2: 24}
