"""Losses: hand-computed values, gradients where clipping matters, per-token loop references."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realflow.interfaces.functional import critic_loss, dpo_loss, pairwise_rw_loss, ppo_actor_loss


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- PPO actor


def ratios(*r):
    return torch.tensor([math.log(x) for x in r], requires_grad=True)


def test_ppo_actor_loss_hand_computed():
    # ratios 1.5 (A=+1: clipped to 1.2), 0.5 (A=+1: unclipped), 2.0 (A=-1: unclipped, -A*r = 2)
    logp, old, adv = ratios(1.5, 0.5, 2.0), torch.zeros(3), torch.tensor([1.0, 1.0, -1.0])
    loss, stats = ppo_actor_loss(logp, old, adv, eps_clip=0.2)
    close(loss, (-1.2 - 0.5 + 2.0) / 3)
    close(stats["clip_ratio"], 1 / 3)
    close(stats["importance_ratio"], (1.5 + 0.5 + 2.0) / 3)
    close(stats["importance_ratio_max"], 2.0)
    close(stats["dual_clip_ratio"], 0.0)
    close(stats["n_tokens"], 3)
    loss.backward()
    # d/dlogp of -A*r is -A*r; the clipped token has no gradient.
    close(logp.grad, [0.0, -0.5 / 3, 2.0 / 3])


def test_ppo_actor_loss_dual_clip_and_mask():
    logp, old, adv = ratios(1.5, 0.5, 2.0), torch.zeros(3), torch.tensor([1.0, 1.0, -1.0])
    loss, stats = ppo_actor_loss(logp, old, adv, eps_clip=0.2, c_clip=1.5)
    close(loss, (-1.2 - 0.5 + 1.5) / 3)  # the A<0 token is bounded by c_clip * |A|
    close(stats["dual_clip_ratio"], 1 / 3)
    loss, stats = ppo_actor_loss(logp, old, adv, eps_clip=0.2, loss_mask=torch.tensor([True, True, False]))
    close(loss, (-1.2 - 0.5) / 2)
    close(stats["importance_ratio"], 1.0)
    close(stats["approx_kl"], (-math.log(1.5) - math.log(0.5)) / 2)
    close(stats["n_tokens"], 2)
    loss_sum, _ = ppo_actor_loss(logp, old, adv, eps_clip=0.2, loss_mask=torch.tensor([1, 1, 0]), reduction="sum")
    close(loss_sum, -1.7)


def ppo_reference(logp, old, adv, mask, eps, c):
    total, count = 0.0, 0
    for lp, o, a, m in zip(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist()):
        r = math.exp(lp - o)
        term = max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
        if c is not None and a < 0:
            term = min(term, -c * a)
        total += term * m
        count += m
    return total / max(count, 1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), eps=st.floats(0.05, 0.5), dual=st.booleans(), seed=st.integers(0, 2**16))
def test_ppo_actor_loss_matches_loop_reference(n, eps, dual, seed):
    g = torch.Generator().manual_seed(seed)
    logp, old, adv = (torch.randn(n, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    mask = torch.rand(n, generator=g) < 0.7
    c = 3.0 if dual else None
    loss, _ = ppo_actor_loss(logp, old, adv, eps, loss_mask=mask, c_clip=c)
    close(loss, ppo_reference(logp, old, adv, mask.int(), eps, c), 1e-5)


# ----------------------------------------------------------------------------- critic


def test_critic_loss_hand_computed():
    values = torch.tensor([1.0, 1.0], requires_grad=True)
    old, returns = torch.tensor([0.5, 0.5]), torch.tensor([0.0, 2.0])
    # token 0: (1-0)^2=1 vs clipped (0.7-0)^2=0.49 -> 1; token 1: (1-2)^2=1 vs (0.7-2)^2=1.69 -> 1.69 (clipped)
    loss, stats = critic_loss(values, old, returns, value_eps_clip=0.2)
    close(loss, 0.5 * (1.0 + 1.69) / 2)
    close(stats["clip_ratio"], 0.5)
    close(stats["value"], 1.0)
    loss.backward()
    close(values.grad, [0.5 * 2 * 1.0 / 2, 0.0])  # no gradient through the clipped term's old value
    loss, _ = critic_loss(values, old, returns, value_eps_clip=None, loss_mask=torch.tensor([0, 1]))
    close(loss, 0.5 * 1.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), eps=st.one_of(st.none(), st.floats(0.05, 1.0)), seed=st.integers(0, 2**16))
def test_critic_loss_matches_loop_reference(n, eps, seed):
    g = torch.Generator().manual_seed(seed)
    v, old, ret = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(n, generator=g) < 0.7).int()
    total, count = 0.0, 0
    for vi, oi, ri, m in zip(v.tolist(), old.tolist(), ret.tolist(), mask.tolist()):
        term = (vi - ri) ** 2
        if eps is not None:
            term = max(term, (oi + min(max(vi - oi, -eps), eps) - ri) ** 2)
        total, count = total + 0.5 * term * m, count + m
    loss, _ = critic_loss(v, old, ret, eps, loss_mask=mask)
    close(loss, total / max(count, 1))


# ----------------------------------------------------------------------------- preference losses


def test_dpo_loss_hand_computed():
    loss, stats = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]),
                           beta=0.1)
    close(loss, math.log1p(math.exp(-0.1)))  # -log sigmoid(0.1 * (0.5 - -0.5))
    close(stats["chosen_reward"], 0.05)
    close(stats["rejected_reward"], -0.05)
    close(stats["reward_accuracy"], 1.0)
    close(stats["reward_margin"], 0.1)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 10), beta=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_dpo_and_pairwise_match_loop_reference(n, beta, seed):
    g = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (torch.randn(n, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    ref = sum(math.log1p(math.exp(-beta * ((a - c) - (b - d)))) for a, b, c, d in
              zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())) / n
    close(dpo_loss(pc, pr, rc, rr, beta)[0], ref)
    ref = sum(math.log1p(math.exp(-(a - b))) for a, b in zip(pc.tolist(), pr.tolist())) / n
    close(pairwise_rw_loss(pc, pr)[0], ref)


def test_pairwise_rw_loss_hand_computed():
    loss, stats = pairwise_rw_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    close(loss, (math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2)
    close(stats["accuracy"], 0.5)
    close(stats["margin"], 1.0)
    close(stats["chosen_score"], 1.0)
    close(stats["rejected_score"], 0.0)


@pytest.mark.parametrize("call,message", [
    (lambda: ppo_actor_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), 0.2), "shapes differ"),
    (lambda: ppo_actor_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.2, c_clip=1.0),
     "c_clip must be > 1"),
    (lambda: ppo_actor_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.2, reduction="max"),
     "reduction must be 'mean' or 'sum'"),
    (lambda: critic_loss(torch.zeros(2), torch.zeros(2), torch.zeros(1), 0.2), "shapes differ"),
    (lambda: pairwise_rw_loss(torch.zeros(2), torch.zeros(1)), "shapes differ"),
])
def test_loss_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
