"""KL estimators, KL-penalised rewards, KL controllers and the packed-sequence helpers."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realflow.interfaces.functional import (
    AdaptiveKLController,
    FixedKLController,
    cu_seqlens_to_seqlens,
    drop_last_token,
    gather_packed_logprobs,
    kl_estimate,
    kl_penalized_rewards,
    last_token,
    masked_mean,
    masked_normalize,
    segment_ids,
    seqlens_to_cu_seqlens,
    shift_cu_seqlens,
)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # log_r = log 0.5
    close(kl_estimate(logp, ref, "k1"), [math.log(2)])
    close(kl_estimate(logp, ref, "k2"), [0.5 * math.log(2) ** 2])
    close(kl_estimate(logp, ref, "k3"), [0.5 - 1 + math.log(2)])
    close(kl_estimate(ref, ref, "k3"), [0.0])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; choose one of k1, k2, k3"):
        kl_estimate(logp, ref, "k4")


def test_kl_estimators_are_unbiased_where_claimed():
    # Sampling from p = N(0,1) with q = N(0.3, 1): KL(p||q) = 0.045; k1 and k3 unbiased.
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logp, logq = -0.5 * x**2, -0.5 * (x - 0.3) ** 2
    for kind in ("k1", "k3"):
        close(kl_estimate(logp, logq, kind).mean(), 0.045, 3e-3)


def test_kl_penalized_rewards_hand_computed():
    # Two sequences of 2 and 1 actions; k1 = logp - ref = [1, 0, 0.5]; beta 0.1; mask drops action 0;
    # scores 3 and -4 clipped to +-2 land on each sequence's last action.
    rewards = kl_penalized_rewards(torch.zeros(3), torch.tensor([-1.0, 0.0, -0.5]), torch.tensor([3.0, -4.0]),
                                   seqlens_to_cu_seqlens([2, 1]), kl_coef=0.1,
                                   loss_mask=torch.tensor([0, 1, 1]), reward_clip=2.0)
    close(rewards, [0.0, 2.0, -2.05])
    rewards = kl_penalized_rewards(torch.zeros(3), torch.tensor([-1.0, 0.0, -0.5]), torch.tensor([3.0, -4.0]),
                                   seqlens_to_cu_seqlens([2, 1]), kl_coef=0.1)
    close(rewards, [-0.1, 3.0, -4.05])


@settings(max_examples=30, deadline=None)
@given(seqlens=st.lists(st.integers(1, 8), min_size=1, max_size=5), kind=st.sampled_from(["k1", "k2", "k3"]),
       clip=st.one_of(st.none(), st.floats(0.1, 2.0)), seed=st.integers(0, 2**16))
def test_kl_penalized_rewards_match_loop_reference(seqlens, kind, clip, seed):
    g = torch.Generator().manual_seed(seed)
    total = sum(seqlens)
    logp, ref = torch.randn(total, generator=g), torch.randn(total, generator=g)
    mask, scores = torch.rand(total, generator=g) < 0.6, torch.randn(len(seqlens), generator=g) * 3
    expected, offset = [], 0
    for i, n in enumerate(seqlens):
        for t in range(n):
            lr = ref[offset + t].item() - logp[offset + t].item()
            kl = {"k1": -lr, "k2": 0.5 * lr * lr, "k3": math.exp(lr) - 1 - lr}[kind]
            r = -0.05 * kl * float(mask[offset + t])
            if t == n - 1:
                s = scores[i].item()
                r += s if clip is None else min(max(s, -clip), clip)
            expected.append(r)
        offset += n
    got = kl_penalized_rewards(logp, ref, scores, seqlens_to_cu_seqlens(seqlens), 0.05, mask, clip, kind)
    close(got, expected, 1e-4)


def test_kl_penalized_rewards_errors():
    cu = seqlens_to_cu_seqlens([2, 1])
    with pytest.raises(ValueError, match=r"scores must have one entry per sequence \(2\), got \(3,\)"):
        kl_penalized_rewards(torch.zeros(3), torch.zeros(3), torch.zeros(3), cu, 0.1)
    with pytest.raises(ValueError, match="must cover the 4 log-probs"):
        kl_penalized_rewards(torch.zeros(4), torch.zeros(4), torch.zeros(2), cu, 0.1)


def test_kl_controllers_follow_ziegler_update():
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(9.0, 256)  # error 0.5 clipped to 0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    before = ctl.value
    ctl.update(6.0, 256)  # on target: unchanged
    assert ctl.value == before
    ctl.update(5.4, 1000)  # error -0.1
    assert ctl.value == pytest.approx(before * (1 - 0.1 * 0.1))
    resumed = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    with pytest.raises(ValueError, match="target > 0 and horizon > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=1.0)


# ----------------------------------------------------------------------------- packing


def test_offsets_and_segments():
    cu = seqlens_to_cu_seqlens([3, 1, 2])
    assert cu.tolist() == [0, 3, 4, 6] and cu.dtype == torch.long
    assert cu_seqlens_to_seqlens(cu).tolist() == [3, 1, 2]
    assert shift_cu_seqlens(cu).tolist() == [0, 2, 2, 3]
    assert segment_ids(cu).tolist() == [0, 0, 0, 1, 2, 2]
    x = torch.arange(6)
    assert last_token(x, cu).tolist() == [2, 3, 5]
    assert drop_last_token(x, cu).tolist() == [0, 1, 4]
    with pytest.raises(ValueError, match=r"last_token needs every sequence to be non-empty; lengths: \[2, 0\]"):
        last_token(torch.arange(2), seqlens_to_cu_seqlens([2, 0]))


def test_gather_packed_logprobs_hand_computed():
    # Sequence [0, 2, 1]: position 0 predicts 2 with p = 2/4; position 1 predicts 1 with p = 1/5.
    # Sequence [1] has no next token.
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [math.log(3), 0.0, 0.0], [5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    ids, cu = torch.tensor([0, 2, 1, 1]), seqlens_to_cu_seqlens([3, 1])
    close(gather_packed_logprobs(logits, ids, cu), [math.log(0.5), math.log(0.2)])
    close(gather_packed_logprobs(logits * 2, ids, cu, temperature=2.0), [math.log(0.5), math.log(0.2)])
    with pytest.raises(ValueError, match="logits cover 4 tokens but input_ids has 3"):
        gather_packed_logprobs(logits, ids[:3], cu)


@settings(max_examples=30, deadline=None)
@given(seqlens=st.lists(st.integers(1, 7), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_gather_packed_logprobs_matches_loop_reference(seqlens, seed):
    g = torch.Generator().manual_seed(seed)
    vocab, total = 11, sum(seqlens)
    logits = torch.randn(total, vocab, generator=g, dtype=torch.float64)
    ids = torch.randint(0, vocab, (total,), generator=g)
    expected, offset = [], 0
    for n in seqlens:
        for t in range(n - 1):
            expected.append(torch.log_softmax(logits[offset + t], -1)[ids[offset + t + 1]].item())
        offset += n
    got = gather_packed_logprobs(logits, ids, seqlens_to_cu_seqlens(seqlens))
    assert got.shape == (total - len(seqlens),)
    close(got, expected, 1e-9)


def test_masked_normalize_hand_computed():
    x, mask = torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    s = math.sqrt(1.5)  # 1 / sqrt(population variance 2/3)
    close(masked_normalize(x, mask, eps=0.0), [-s, 0.0, s, 0.0])
    close(masked_normalize(x, mask, eps=0.0, shift_mean=False), [-s + 2, 2.0, s + 2, 0.0])
    close(masked_mean(x, mask), 2.0)
    close(masked_mean(x, torch.zeros(4)), 0.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 2**16))
def test_masked_normalize_matches_loop_reference(n, seed):
    g = torch.Generator().manual_seed(seed)
    x, mask = torch.randn(n, generator=g, dtype=torch.float64) * 4 + 1, torch.rand(n, generator=g) < 0.6
    mask[0] = True
    kept = [v for v, m in zip(x.tolist(), mask.tolist()) if m]
    mean, var = statistics.fmean(kept), statistics.pvariance(kept)
    expected = [(v - mean) / math.sqrt(var + 1e-5) if m else 0.0 for v, m in zip(x.tolist(), mask.tolist())]
    close(masked_normalize(x, mask), expected, 1e-9)
