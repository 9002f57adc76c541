"""Data-parallel TrainEngine on 2 gloo processes: the replicas, each stepping on its
shard of a batch, end where one engine stepping on the whole batch ends.

The single-process engine (tests/unit/test_engine.py checks it against plain AdamW)
is the reference. Also covered: a replica whose shard has no loss tokens in one
step (it must still join the all-reduce), statistics summed by name when one
replica reports none, and `dp_any`.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dist_helpers import free_port, run_ranks
from realflow.api.config import OptimizerConfig
from realflow.api.data import MicroBatchSpec, SequenceSample, SplitSpec
from realflow.engine.train import TrainEngine
from realflow.interfaces.functional import masked_normalize

WORLD = 2
DEADLINE_S = 90.0
SHARDS = [(0, 3), (3, 7)]  # samples of the 7-sample batch each rank trains on
MASKED = {"s3", "s4", "s5", "s6"}  # in step 1 these carry no loss: rank 1's shard has no loss tokens


class _Toy(torch.nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(x)))


def _batch() -> SequenceSample:
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(2, 12, (7,), generator=g).tolist()
    ids = torch.randint(0, 11, (sum(lens),), generator=g)
    return SequenceSample.from_default(ids=[f"s{i}" for i in range(7)], seqlens=lens, data={"packed_input_ids": ids})


def _weights(step: int):
    def weight(mb: SequenceSample) -> float:
        lens = mb.flat_seqlens("packed_input_ids")
        return float(sum(n - 1 for sid, n in zip(mb.ids, lens) if not (step == 1 and sid in MASKED)))
    return weight


def _loss(step: int):
    weight = _weights(step)

    def loss_fn(logits: torch.Tensor, mb: SequenceSample):
        ids = mb.data["packed_input_ids"]
        cu = mb.cu_seqlens("packed_input_ids").tolist()
        parts = [F.cross_entropy(logits[a : b - 1], ids[a + 1 : b], reduction="sum")
                 for sid, a, b in zip(mb.ids, cu, cu[1:]) if not (step == 1 and sid in MASKED)]
        loss = torch.stack(parts).sum() / weight(mb)
        return loss, {"mean_loss": float(loss.detach())}  # a weighted mean like the loss
    return loss_fn


def _train(engine: TrainEngine, shard: SequenceSample) -> list[dict[str, float]]:
    stats = []
    for step in range(3):
        spec = MicroBatchSpec(n_mbs=2 if shard.bs > 1 else 1)
        stats.append(engine.train_batch(shard, spec, _loss(step), _weights(step)))
        engine.end_step()
    return stats


def _engine() -> TrainEngine:
    torch.manual_seed(5)
    return TrainEngine(_Toy(), OptimizerConfig(lr=1e-2, gradient_clipping=0.5), total_steps=10)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=30))
    try:
        engine = _engine()
        engine.dp_group = dist.group.WORLD
        shard = _batch().split(SplitSpec(tuple(SHARDS)))[rank]
        stats = _train(engine, shard)
        anys = [engine.dp_any(rank == 1), engine.dp_any(False)]
        x, mask = _whiten_input()
        a, b = SHARDS[rank]
        whitened = masked_normalize(x[a:b], mask[a:b], reduce=engine.dp_sum)
        torch.save({"state": engine.module.state_dict(), "stats": stats, "anys": anys, "whitened": whitened},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _whiten_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return torch.randn(7, generator=g) * 3 + 1, torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)


@pytest.mark.timeout(DEADLINE_S + 30)
def test_two_replicas_take_the_whole_batch_step(tmp_path: Path) -> None:
    run_ranks(_worker, (free_port(), str(tmp_path)), WORLD, DEADLINE_S, "the data-parallel engine test")
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    ref = _engine()
    want = _train(ref, _batch())
    for r in range(WORLD):
        assert got[r]["anys"] == [True, False]
        for k, v in ref.module.state_dict().items():
            torch.testing.assert_close(got[r]["state"][k], v, rtol=0, atol=1e-6, msg=f"rank {r} {k}")
        for step in range(3):
            # Rank 1 reports no loss statistic of its own in step 1; the sum by name still gives the global mean.
            assert got[r]["stats"][step] == pytest.approx(want[step], rel=1e-5, abs=1e-7), (r, step)
    # Whitening over shards with dp_sum equals whitening the whole batch.
    x, mask = _whiten_input()
    whole = masked_normalize(x, mask)
    for r, (a, b) in enumerate(SHARDS):
        torch.testing.assert_close(got[r]["whitened"], whole[a:b], rtol=0, atol=1e-6)
    assert not torch.allclose(masked_normalize(x[3:7], mask[3:7]), whole[3:7], atol=1e-3)  # a shard alone differs
    # The replicas are identical to each other bit for bit (same summed gradient, same update).
    assert all(torch.equal(got[0]["state"][k], got[1]["state"][k]) for k in got[0]["state"])
