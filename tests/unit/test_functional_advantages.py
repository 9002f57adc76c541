"""Advantage estimators: hand-computed values and per-sequence loop references."""
from __future__ import annotations

import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realflow.interfaces.functional import (
    broadcast_to_tokens,
    gae,
    group_advantages,
    remax_advantages,
    rloo_advantages,
    seqlens_to_cu_seqlens,
)

SEQLENS = st.lists(st.integers(0, 10), min_size=1, max_size=6)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_computed():
    # One 3-action sequence (gamma 0.9, lam 0.8) and a 1-action sequence that must not leak into it.
    rewards = torch.tensor([0.0, 0.0, 1.0, 5.0])
    values = torch.tensor([0.5, 0.2, 0.4, 1.0])
    cu = seqlens_to_cu_seqlens([3, 1])
    adv, ret = gae(rewards, values, cu, gamma=0.9, lam=0.8)
    # delta = [0.9*0.2-0.5, 0.9*0.4-0.2, 1-0.4 | 5-1]; A_i = delta_i + 0.72 A_{i+1}
    close(adv, [-0.32 + 0.72 * 0.592, 0.16 + 0.72 * 0.6, 0.6, 4.0])
    close(ret, [0.10624 + 0.5, 0.592 + 0.2, 1.0, 5.0])
    # Truncated first sequence: bootstrap with the value 2.0 of its final state.
    adv, _ = gae(rewards, values, cu, gamma=0.9, lam=0.8, bootstrap_values=torch.tensor([2.0, 0.0]))
    close(adv, [-0.32 + 0.72 * 1.888, 0.16 + 0.72 * 2.4, 2.4, 4.0])


def test_gae_lambda_one_zero_values_is_reward_to_go():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    adv, ret = gae(rewards, torch.zeros(3), seqlens_to_cu_seqlens([3]), gamma=0.5, lam=1.0)
    close(adv, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0])
    close(ret, adv)


def gae_reference(rewards, values, seqlens, gamma, lam, bootstrap):
    adv, ret, offset = [], [], 0
    for i, n in enumerate(seqlens):
        r, v = rewards[offset:offset + n].tolist(), values[offset:offset + n].tolist() + [float(bootstrap[i])]
        a, running = [0.0] * n, 0.0
        for t in reversed(range(n)):
            running = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * running
            a[t] = running
        adv += a
        ret += [a[t] + v[t] for t in range(n)]
        offset += n
    return adv, ret


@settings(max_examples=40, deadline=None)
@given(seqlens=SEQLENS, gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_gae_matches_loop_reference(seqlens, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    total = sum(seqlens)
    rewards, values = torch.randn(total, generator=g, dtype=torch.float64), torch.randn(total, generator=g,
                                                                                          dtype=torch.float64)
    bootstrap = torch.randn(len(seqlens), generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, seqlens_to_cu_seqlens(seqlens), gamma, lam, bootstrap_values=bootstrap)
    ref_adv, ref_ret = gae_reference(rewards, values, seqlens, gamma, lam, bootstrap)
    assert adv.dtype == torch.float64
    close(adv, ref_adv, 1e-9)
    close(ret, ref_ret, 1e-9)


def test_gae_rejects_mismatched_inputs():
    cu = seqlens_to_cu_seqlens([2])
    with pytest.raises(ValueError, match="must be equal 1-D shapes"):
        gae(torch.zeros(2), torch.zeros(3), cu, 1.0, 1.0)
    with pytest.raises(ValueError, match="cu_seqlens covers 2 entries but rewards has 3"):
        gae(torch.zeros(3), torch.zeros(3), cu, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"bootstrap_values must have shape \(1,\), got \(2,\)"):
        gae(torch.zeros(2), torch.zeros(2), cu, 1.0, 1.0, bootstrap_values=torch.zeros(2))


# ----------------------------------------------------------------------------- group baselines


def test_group_advantages_hand_computed():
    # Group (1, 0): mean 0.5, unbiased std sqrt(0.5). Group (1, 2, 3) below: mean 2, std 1.
    h = 0.5 ** 0.5
    close(group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, eps=0.0), [h, -h, -h, h])
    close(group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3, eps=0.0), [-1.0, 0.0, 1.0])
    close(group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3, normalize_std=False), [-1.0, 0.0, 1.0])
    close(group_advantages(torch.tensor([2.0, 2.0]), 2), [0.0, 0.0])  # equal rewards: no signal, no NaN
    close(group_advantages(torch.tensor([1, 0]), 2, eps=0.0), [0.5 ** 0.5, -0.5 ** 0.5])  # integer scores


def test_rloo_and_remax_hand_computed():
    close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), [1 - 2.5, 2 - 2.0, 3 - 1.5])
    close(remax_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([0.5, 1.0])), [0.5, -0.5, 1.0, 1.0])
    close(remax_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0])), [0.5, -1.0])


@settings(max_examples=30, deadline=None)
@given(n_groups=st.integers(1, 5), group_size=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_group_baselines_match_loop_reference(n_groups, group_size, seed):
    r = torch.randn(n_groups * group_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grpo, rloo = [], []
    for start in range(0, r.numel(), group_size):
        group = r[start:start + group_size].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        grpo += [(x - mean) / (std + 1e-6) for x in group]
        rloo += [x - (sum(group) - x) / (group_size - 1) for x in group]
    assert group_advantages(r, group_size).dtype == torch.float64
    close(group_advantages(r, group_size), grpo, 1e-9)
    close(rloo_advantages(r, group_size), rloo, 1e-9)
    close(remax_advantages(r, r[::group_size]), [x - r[i - i % group_size] for i, x in enumerate(r.tolist())])


@pytest.mark.parametrize("call,message", [
    (lambda: group_advantages(torch.zeros(5), 2), "group_advantages: 5 rewards cannot form groups of 2"),
    (lambda: group_advantages(torch.zeros(3), 1), "group_advantages: 3 rewards cannot form groups of 1 "
                                                  "(need group_size >= 2"),
    (lambda: group_advantages(torch.zeros(2, 2), 2), "rewards must be 1-D"),
    (lambda: rloo_advantages(torch.zeros(4), 1), "rloo_advantages: 4 rewards cannot form groups of 1"),
    (lambda: remax_advantages(torch.zeros(3), torch.zeros(2)), "3 sampled rewards do not split evenly over 2"),
])
def test_group_errors(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def test_broadcast_per_sequence_advantage_to_tokens():
    cu = seqlens_to_cu_seqlens([2, 0, 3])
    close(broadcast_to_tokens(torch.tensor([1.0, 9.0, -1.0]), cu), [1, 1, -1, -1, -1])
