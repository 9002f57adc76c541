"""Training of ppo_actor, ppo_critic, grpo, rloo and remax on fixed synthetic batches."""
from __future__ import annotations

import math

import pytest
import torch
from interfaces_testlib import add_key, batch, frozen_copy, make_model, params, rollout_batch

import realflow.interfaces  # noqa: F401
from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.dfg import FrozenDict
from realflow.api.errors import InterfaceError
from realflow.api.interface import make_interface

PROMPTS = ["12+30=", "40+2=", "7+35=", "21+21="]


def _rollout(tokenizer, model, completions: list[list[str]], rewards: list[float]) -> SequenceSample:
    """A rollout batch: the model's own log-probs as old and reference, zero values, EOS everywhere."""
    data = rollout_batch(tokenizer, PROMPTS[: len(completions)], completions)
    logp = make_interface("sft").inference(model, data, MicroBatchSpec()).data["packed_logprobs"]
    n_tok, n_seq = data.total_len("packed_input_ids"), len(data.flat_seqlens("packed_input_ids"))
    add_key(data, "packed_logprobs", logp, "action")
    add_key(data, "packed_ref_logprobs", logp.clone(), "action")
    add_key(data, "values", torch.zeros(n_tok), "token")
    add_key(data, "rewards", torch.tensor(rewards, dtype=torch.float32), "sequence")
    add_key(data, "seq_no_eos_mask", torch.zeros(n_seq, dtype=torch.bool), "sequence")
    return data


def _response_logprob_sums(model, data: SequenceSample) -> torch.Tensor:
    logp = make_interface("sft").inference(model, data, MicroBatchSpec()).data["packed_logprobs"]
    lens = data.flat_seqlens("packed_input_ids")
    masks = data.data["prompt_mask"].split(lens)
    return torch.stack([(lp * ~m[1:]).sum() for lp, m in zip(logp.split([n - 1 for n in lens]), masks)])


CASES = {
    # interface, args, completions per prompt, rewards, which sequences must go up (+1) / down (-1) / either (0)
    "ppo_actor": (dict(kl_ctl=0.05), [["42"], ["17"], ["42"], ["99"]], [1.0, 0.0, 1.0, 0.0], [1, -1, 1, -1]),
    "grpo": (dict(group_size=2, beta=0.04), [["42", "17"], ["42", "99"]], [1.0, 0.0, 1.0, 0.0], [1, -1, 1, -1]),
    "rloo": (dict(group_size=2, beta=0.0), [["42", "17"], ["85", "99"]], [1.0, 0.0, 0.0, 1.0], [1, -1, -1, 1]),
    # remax: the last sequence of each sample is the greedy baseline (no loss on it)
    "remax": (dict(kl_ctl=0.05), [["42", "17", "5"], ["99", "42", "1"]], [1.0, 0.0, 0.5, 0.0, 1.0, 0.5],
              [1, -1, 0, -1, 1, 0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_policy_update_moves_logprobs_with_the_advantage(tokenizer, name):
    args, completions, rewards, direction = CASES[name]
    model = make_model(tokenizer, lr=1e-2)
    data = _rollout(tokenizer, model, completions, rewards)
    before_params, before = params(model), _response_logprob_sums(model, data)
    stats = make_interface(name, **args).train_step(model, data, MicroBatchSpec(n_mbs=2))
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert stats["importance_ratio"] == pytest.approx(1.0, abs=1e-4)  # old log-probs are the model's own
    assert stats["n_updates"] == 1 and stats["early_stopped"] == 0
    assert {"task_reward", "entropy", "clip_ratio", "approx_kl", "grad_norm"} <= set(stats)
    assert not torch.equal(before_params, params(model))
    change = _response_logprob_sums(model, data) - before
    for d, c in zip(direction, change.tolist()):
        assert d == 0 or d * c > 0, (change, direction)


def test_grpo_without_kl_needs_no_reference(tokenizer):
    model = make_model(tokenizer)
    data = _rollout(tokenizer, model, [["42", "17"], ["42", "99"]], [1.0, 0.0, 1.0, 0.0])
    data = data.select(["packed_input_ids", "prompt_mask", "packed_logprobs", "rewards"])
    stats = make_interface("grpo", beta=0.0).train_step(model, data, MicroBatchSpec())
    assert "kl_k3" not in stats and stats["task_reward"] == 0.5
    with pytest.raises(InterfaceError, match=r"lacks key\(s\) \['packed_ref_logprobs'\]"):
        make_interface("grpo", beta=0.1).train_step(model, data, MicroBatchSpec())


def test_grpo_rejects_uneven_groups(tokenizer):
    model = make_model(tokenizer)
    data = _rollout(tokenizer, model, [["42", "17"], ["42"]], [1.0, 0.0, 1.0])
    with pytest.raises(InterfaceError, match=r"same number \(>= 2\) of responses.*\[1, 2\]"):
        make_interface("grpo").train_step(model, data, MicroBatchSpec())


def test_ppo_minibatches_epochs_and_early_stop(tokenizer):
    model = make_model(tokenizer, lr=1e-2)
    data = _rollout(tokenizer, model, [["42"], ["17"], ["42"], ["99"]], [1.0, 0.0, 1.0, 0.0])
    stats = make_interface("ppo_actor", ppo_n_minibatches=2, ppo_epochs=2).train_step(model, data, MicroBatchSpec())
    assert stats["n_updates"] == 4 and stats["early_stopped"] == 0

    model = make_model(tokenizer, lr=5e-2)
    data = _rollout(tokenizer, model, [["42"], ["17"], ["42"], ["99"]], [1.0, 0.0, 1.0, 0.0])
    ppo = make_interface("ppo_actor", ppo_n_minibatches=4, early_stop_imp_ratio=1.01)
    stats = ppo.train_step(model, data, MicroBatchSpec())
    assert stats["early_stopped"] == 1 and stats["n_updates"] < 4
    ratio = stats["early_stop_importance_ratio"]
    assert not 1 / 1.01 <= ratio <= 1.01


def test_ppo_uses_the_logits_mask_and_temperature_of_generation(tokenizer, task, actor):
    ppo = make_interface("ppo_actor", kl_ctl=0.0, group_size=2,
                         generation=dict(max_new_tokens=4, temperature=0.7, top_p=0.6))
    data = ppo.generate(actor, batch(tokenizer, task, "prompt", n=2), MicroBatchSpec())
    assert "packed_logits_mask" in data.keys
    add_key(data, "values", torch.zeros(data.total_len("packed_input_ids")), "token")
    add_key(data, "rewards", torch.tensor([1.0, 0.0, 0.0, 1.0]), "sequence")
    with_mask = ppo.train_step(actor, data, MicroBatchSpec())
    assert with_mask["importance_ratio"] == pytest.approx(1.0, abs=1e-3)
    no_mask = ppo.train_step(actor, data.select(data.keys - {"packed_logits_mask"}), MicroBatchSpec())
    assert abs(no_mask["importance_ratio"] - 1.0) > 1e-3  # the untruncated distribution differs


def test_adaptive_kl_controller_moves_and_is_state(tokenizer):
    model = make_model(tokenizer)
    data = _rollout(tokenizer, model, [["42"], ["17"]], [1.0, 0.0])
    data.data["packed_ref_logprobs"] = data.data["packed_ref_logprobs"] - 0.5  # KL 0.5 per token >> target
    ppo = make_interface("ppo_actor", kl_ctl=0.1, adaptive_kl_target=0.01, adaptive_kl_horizon=10)
    stats = ppo.train_step(model, data, MicroBatchSpec())
    assert stats["kl_coef"] == 0.1 and stats["ref_kl"] > 0
    assert ppo.state_dict()["kl_controller"]["value"] == pytest.approx(0.1 * (1 + 0.2 * 2 / 10))
    other = make_interface("ppo_actor", kl_ctl=0.1, adaptive_kl_target=0.01)
    other.load_state_dict(ppo.state_dict())
    assert other.kl_controller.value == ppo.kl_controller.value


def test_critic_values_layout_and_training(tokenizer):
    critic = make_model(tokenizer, critic=True, lr=1e-2)
    actor = make_model(tokenizer)
    data = _rollout(tokenizer, actor, [["42"], ["17"], ["42"], ["99"]], [1.0, 0.0, 1.0, 0.0])
    crit = make_interface("ppo_critic", kl_ctl=0.0)
    out = crit.inference(critic, data.select(["packed_input_ids"]), MicroBatchSpec(n_mbs=2))
    assert out.keys == {"values"} and out.dtypes["values"] == torch.float32
    assert out.seqlens["values"] == data.seqlens["packed_input_ids"]
    data.update_(out)
    before = params(critic)
    losses = []
    for _ in range(10):  # as in a PPO loop: fresh old values every step (the loss clips around them)
        data.update_(crit.inference(critic, data, MicroBatchSpec()))
        stats = crit.train_step(critic, data, MicroBatchSpec(n_mbs=2))
        critic.engine.end_step()
        assert all(math.isfinite(v) for v in stats.values())
        losses.append(stats["loss"])
    assert not torch.equal(before, params(critic))
    assert losses[-1] < 0.5 * losses[0], losses


def test_critic_value_norm_denormalises_at_inference(tokenizer):
    critic = make_model(tokenizer, critic=True)
    data = _rollout(tokenizer, make_model(tokenizer), [["42"], ["17"]], [3.0, 1.0])
    crit = make_interface("ppo_critic", kl_ctl=0.0, value_norm=True)
    crit.train_step(critic, data, MicroBatchSpec())
    mean, std = crit.normalizer.mean_std()
    assert mean == pytest.approx(2.0, rel=1e-4) and std == pytest.approx(1.0, rel=1e-3)  # returns: 3s and 1s
    values = crit.inference(critic, data, MicroBatchSpec()).data["values"]
    with torch.no_grad():
        raw = critic.module(data.data["packed_input_ids"], data.cu_seqlens("packed_input_ids"))
    torch.testing.assert_close(values, raw * std + mean)


def test_ppo_requires_values_and_checks_layouts(tokenizer):
    model = make_model(tokenizer)
    data = _rollout(tokenizer, model, [["42"]], [1.0])
    with pytest.raises(InterfaceError, match=r"lacks key\(s\) \['values'\]"):
        make_interface("ppo_actor").train_step(model, data.select(data.keys - {"values"}), MicroBatchSpec())
    bad = data.select(data.keys - {"packed_logprobs"})
    add_key(bad, "packed_logprobs", torch.zeros(data.total_len("packed_input_ids")), "token")
    with pytest.raises(InterfaceError, match="'packed_logprobs' must be action-aligned"):
        make_interface("ppo_actor").train_step(model, bad, MicroBatchSpec())


@pytest.mark.parametrize("name,args,match", [
    ("grpo", dict(group_size=1), "group_size must be >= 2"),
    ("ppo_actor", dict(generation=dict(temprature=0.5)), r"unknown field\(s\) \['temprature'\]"),
    ("ppo_actor", dict(generation=dict(temperature=0.0)), "temperature must be > 0"),
    ("ppo_actor", dict(eps_clip=1.5), r"eps_clip must be in \(0, 1\)"),
    ("ppo_actor", dict(kl_estimator="k4"), "kl_estimator='k4'"),
    ("ppo_actor", dict(ppo_n_minibatches=0), "ppo_n_minibatches must be an int >= 1"),
    ("ppo_critic", dict(value_eps_clip=-1.0), "value_eps_clip must be > 0"),
    ("ppo_actor", dict(kl_coef=0.1), r"unknown argument\(s\) \['kl_coef'\]"),
    ("dpo", dict(beta=0.0), "beta must be > 0"),
    ("reward_fn", dict(), "give at least one function"),
    ("hf_classifier", dict(), "give `path`"),
])
def test_bad_arguments_fail_at_construction(name, args, match):
    with pytest.raises(InterfaceError, match=match):
        make_interface(name, **args)


def test_generation_args_accept_a_mapping_from_the_mfc():
    actor = make_interface("ppo_actor", generation=FrozenDict(max_new_tokens=3, temperature=0.5))
    assert actor.generation.max_new_tokens == 3 and actor.train_temperature == 0.5
    assert make_interface("ppo_actor", generation=dict(greedy=True)).train_temperature == 1.0


def test_reference_inference_gives_action_aligned_logprobs(tokenizer, actor):
    ref = frozen_copy(actor)
    data = rollout_batch(tokenizer, PROMPTS[:2], [["42", "17"], ["1", "2"]])
    for name in ("ppo_actor", "grpo", "remax"):
        out = make_interface(name).inference(ref, data, MicroBatchSpec(n_mbs=2))
        assert out.keys == {"packed_ref_logprobs"}
        assert out.seqlens["packed_ref_logprobs"] == [[n - 1 for n in s] for s in data.seqlens["packed_input_ids"]]
