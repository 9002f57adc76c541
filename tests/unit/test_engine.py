"""The single-process train engine: accumulation equals one big step, LR schedule
matches hand-computed values, outputs come back in sample order, resume is exact."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from realflow.api.config import OptimizerConfig
from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.errors import DataError
from realflow.engine.optim import lr_multiplier
from realflow.engine.train import InferenceEngine, TrainEngine


class _Toy(torch.nn.Module):
    """A packed 'language model' whose output depends on the position in its sequence."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(64, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        pos = torch.cat([torch.arange(n) for n in lens]) if lens else x.new_zeros(0)
        return self.out(torch.tanh(self.emb(x) + self.pos(pos)))  # (T, vocab)


def _batch(n: int = 7, seed: int = 0) -> SequenceSample:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, 12, (n,), generator=g).tolist()
    ids = torch.randint(0, 11, (sum(lens),), generator=g)
    return SequenceSample.from_default(ids=[f"s{i}" for i in range(n)], seqlens=lens, data={"packed_input_ids": ids})


def _next_token_loss(logits: torch.Tensor, mb: SequenceSample):
    """Mean next-token cross-entropy over the mb's predicted tokens."""
    ids = mb.data["packed_input_ids"]
    cu = mb.cu_seqlens("packed_input_ids").tolist()
    losses = [F.cross_entropy(logits[a : b - 1], ids[a + 1 : b], reduction="sum") for a, b in zip(cu, cu[1:])]
    n = _n_loss_tokens(mb)
    return torch.stack(losses).sum() / n, {"n_tokens": float(n)}


def _n_loss_tokens(mb: SequenceSample) -> float:
    return float(sum(n - 1 for n in mb.flat_seqlens("packed_input_ids")))


def _train(model: torch.nn.Module, sample: SequenceSample, spec: MicroBatchSpec, steps: int = 2, **cfg):
    engine = TrainEngine(model, OptimizerConfig(lr=1e-2, **cfg), total_steps=10)
    stats = []
    for _ in range(steps):
        stats.append(engine.train_batch(sample, spec, _next_token_loss, _n_loss_tokens))
        engine.end_step()
    return engine, stats


@pytest.mark.parametrize("spec", [MicroBatchSpec(n_mbs=3), MicroBatchSpec(n_mbs=1, max_tokens_per_mb=20)])
def test_accumulation_equals_one_big_batch(spec):
    torch.manual_seed(0)
    base = _Toy()
    sample = _batch()
    big, big_stats = _train(copy.deepcopy(base), sample, MicroBatchSpec())
    small, small_stats = _train(copy.deepcopy(base), sample, spec)
    for a, b in zip(big.module.parameters(), small.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for s1, s2 in zip(big_stats, small_stats):
        assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-5)
        assert s1["grad_norm"] == pytest.approx(s2["grad_norm"], rel=1e-5)


def test_one_step_matches_plain_adamw():
    torch.manual_seed(0)
    base = _Toy()
    sample = _batch()
    engine, stats = _train(copy.deepcopy(base), sample, MicroBatchSpec(n_mbs=2), steps=1, gradient_clipping=0.0)
    ref = copy.deepcopy(base)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    loss, _ = _next_token_loss(ref(sample.data["packed_input_ids"], sample.cu_seqlens("packed_input_ids")), sample)
    loss.backward()
    opt.step()
    assert stats[0]["loss"] == pytest.approx(float(loss), rel=1e-5)
    for a, b in zip(engine.module.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_caps_the_update_norm():
    torch.manual_seed(0)
    _, stats = _train(_Toy(), _batch(), MicroBatchSpec(), steps=1, gradient_clipping=1e-3)
    assert stats[0]["grad_norm"] > 1e-3  # reported before clipping


def test_forward_restores_sample_order():
    torch.manual_seed(0)
    model = _Toy()
    sample = _batch(n=9)
    full = model(sample.data["packed_input_ids"], sample.cu_seqlens("packed_input_ids"))
    out = InferenceEngine(model).forward(sample, MicroBatchSpec(n_mbs=4))
    torch.testing.assert_close(out, full)
    logp = InferenceEngine(model).forward(sample, MicroBatchSpec(n_mbs=3), post_fn=lambda o, mb: o.log_softmax(-1)[:, 0])
    torch.testing.assert_close(logp, full.log_softmax(-1)[:, 0])


def test_bad_post_fn_is_reported():
    with pytest.raises(DataError, match="rows for a micro-batch"):
        InferenceEngine(_Toy()).forward(_batch(), MicroBatchSpec(), post_fn=lambda o, mb: o[:1])


def test_batch_without_loss_tokens():
    engine = TrainEngine(_Toy(), OptimizerConfig(), total_steps=1)
    with pytest.raises(DataError, match="no loss tokens"):
        engine.train_batch(_batch(), MicroBatchSpec(), _next_token_loss, lambda mb: 0.0)


def test_resume_continues_exactly():
    torch.manual_seed(0)
    base = _Toy()
    samples = [_batch(seed=s) for s in range(4)]
    straight = TrainEngine(copy.deepcopy(base), OptimizerConfig(lr=1e-2, warmup_steps_proportion=0.5), total_steps=4)
    for s in samples:
        straight.train_batch(s, MicroBatchSpec(n_mbs=2), _next_token_loss, _n_loss_tokens)
        straight.end_step()
    first = TrainEngine(copy.deepcopy(base), OptimizerConfig(lr=1e-2, warmup_steps_proportion=0.5), total_steps=4)
    for s in samples[:2]:
        first.train_batch(s, MicroBatchSpec(n_mbs=2), _next_token_loss, _n_loss_tokens)
        first.end_step()
    model2 = copy.deepcopy(first.module)
    second = TrainEngine(model2, OptimizerConfig(lr=1e-2, warmup_steps_proportion=0.5), total_steps=4)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for s in samples[2:]:
        second.train_batch(s, MicroBatchSpec(n_mbs=2), _next_token_loss, _n_loss_tokens)
        second.end_step()
    assert second.version == straight.version == 4
    for a, b in zip(straight.module.parameters(), second.module.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kind,step,expected",
    [
        ("constant", 0, 0.25),  # warmup: (0+1)/4
        ("constant", 3, 1.0),
        ("constant", 9, 1.0),
        ("linear", 4, 1.0),  # first step after warmup
        ("linear", 7, 1.0 - 0.5 * (3 / 6)),  # min 0.5, progress 3/6
        ("cosine", 4, 1.0),
        ("cosine", 7, 0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5))),
        ("cosine", 10, 0.5),
    ],
)
def test_lr_schedule_hand_values(kind, step, expected):
    cfg = OptimizerConfig(lr_scheduler_type=kind, warmup_steps_proportion=0.4, min_lr_ratio=0.5)
    assert lr_multiplier(step, 10, cfg) == pytest.approx(expected)


def test_weight_decay_spares_vectors():
    from realflow.engine.optim import make_optimizer

    opt = make_optimizer(_Toy().named_parameters(), OptimizerConfig(weight_decay=0.1))
    decays = {p.dim(): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {2: 0.1, 1: 0.0}


@pytest.mark.parametrize("layout", ["action", "sequence"])
def test_forward_other_layouts(layout):
    torch.manual_seed(0)
    model = _Toy()
    sample = _batch(n=6)
    cu = sample.cu_seqlens("packed_input_ids").tolist()
    full = model(sample.data["packed_input_ids"], sample.cu_seqlens("packed_input_ids"))[:, 0]
    if layout == "action":  # drop each sequence's last row
        expected = torch.cat([full[a : b - 1] for a, b in zip(cu, cu[1:])])
    else:  # keep each sequence's last row
        expected = full[torch.tensor(cu[1:]) - 1]

    def post(out, mb):
        mcu = mb.cu_seqlens("packed_input_ids").tolist()
        o = out[:, 0]
        if layout == "action":
            return torch.cat([o[a : b - 1] for a, b in zip(mcu, mcu[1:])])
        return o[torch.tensor(mcu[1:]) - 1]

    out = InferenceEngine(model).forward(sample, MicroBatchSpec(n_mbs=3), post_fn=post, output_layout=layout)
    torch.testing.assert_close(out, expected)
