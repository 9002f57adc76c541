"""`sft`, `paired_rw` and `dpo` on a tiny model and the built-in datasets."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from interfaces_testlib import add_key, batch, frozen_copy, make_model, params

import realflow.interfaces  # noqa: F401
from realflow.api.data import MicroBatchSpec
from realflow.api.errors import InterfaceError
from realflow.api.interface import make_interface


def _manual_answer_nll(model, sample) -> float:
    """Mean NLL of the answer tokens, one sequence at a time."""
    total, n = 0.0, 0
    ids_all = sample.data["packed_input_ids"].split(sample.flat_seqlens("packed_input_ids"))
    masks = sample.data["prompt_mask"].split(sample.flat_seqlens("packed_input_ids"))
    with torch.no_grad():
        for ids, pm in zip(ids_all, masks):
            logits = model.module(ids, torch.tensor([0, len(ids)], dtype=torch.int32))
            nll = F.cross_entropy(logits[:-1], ids[1:], reduction="none")
            keep = ~pm[1:]
            total += float(nll[keep].sum())
            n += int(keep.sum())
    return total / n


def test_sft_loss_is_answer_only_and_matches_per_sequence_reference(tokenizer, task, actor):
    sft = make_interface("sft")
    data = batch(tokenizer, task, "prompt_answer", n=4)
    expected = _manual_answer_nll(actor, data)
    assert sft.evaluate(actor, data, MicroBatchSpec())["loss"] == pytest.approx(expected, rel=1e-5)
    before = params(actor)
    stats = sft.train_step(actor, data, MicroBatchSpec(n_mbs=2))  # accumulation: same loss as one batch
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["n_tokens"] == int((~data.data["prompt_mask"]).sum())
    assert all(math.isfinite(v) for v in stats.values())
    assert not torch.equal(before, params(actor))


def test_sft_loss_falls_on_a_fixed_batch(tokenizer, task):
    model = make_model(tokenizer, lr=1e-2)
    sft = make_interface("sft")
    data = batch(tokenizer, task, "prompt_answer", n=8)
    losses = []
    for _ in range(20):
        losses.append(sft.train_step(model, data, MicroBatchSpec())["loss"])
        model.engine.end_step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_sft_inference_gives_action_aligned_logprobs(tokenizer, task, actor):
    data = batch(tokenizer, task, "prompt_answer", n=3)
    out = make_interface("sft").inference(actor, data, MicroBatchSpec())
    assert out.keys == {"packed_logprobs"}
    assert out.seqlens["packed_logprobs"] == [[n - 1 for n in s] for s in data.seqlens["packed_input_ids"]]
    assert bool((out.data["packed_logprobs"] <= 0).all())


def test_paired_rw_inference_scores_the_last_token(tokenizer, task, critic):
    rw = make_interface("paired_rw", output_scaling=2.0, output_bias=-1.0)
    data = batch(tokenizer, task, "rw_paired", n=3)
    out = rw.inference(critic, data, MicroBatchSpec(n_mbs=2))
    assert out.keys == {"rewards"} and out.dtypes["rewards"] == torch.float32
    assert out.seqlens["rewards"] == [[1, 1]] * 3
    with torch.no_grad():
        seqs = data.data["packed_input_ids"].split(data.flat_seqlens("packed_input_ids"))
        want = [float(critic.module(s, torch.tensor([0, len(s)], dtype=torch.int32))[-1]) * 2 - 1 for s in seqs]
    torch.testing.assert_close(out.data["rewards"], torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_paired_rw_learns_the_preference(tokenizer, task):
    critic = make_model(tokenizer, critic=True, lr=1e-2)
    rw = make_interface("paired_rw")
    data = batch(tokenizer, task, "rw_paired", n=8)
    before = params(critic)
    first = rw.train_step(critic, data, MicroBatchSpec(n_mbs=2))
    assert set(first) >= {"loss", "accuracy", "margin", "grad_norm"}
    assert not torch.equal(before, params(critic))
    for _ in range(30):
        critic.engine.end_step()
        last = rw.train_step(critic, data, MicroBatchSpec())
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert rw.evaluate(critic, data, MicroBatchSpec())["accuracy"] == 1.0


def test_paired_rw_rejects_unpaired_data(tokenizer, task, critic):
    data = batch(tokenizer, task, "prompt_answer", n=2)
    data.seqlens["packed_input_ids"] = [[n] for n in data.flat_seqlens("packed_input_ids")]
    with pytest.raises(InterfaceError, match="even number of sequences"):
        make_interface("paired_rw").train_step(critic, data, MicroBatchSpec())


def test_dpo_starts_at_log2_and_raises_the_chosen(tokenizer, task):
    policy = make_model(tokenizer, lr=1e-2)
    ref = frozen_copy(policy)
    dpo = make_interface("dpo", beta=0.5)
    data = batch(tokenizer, task, "rw_paired", n=4)
    ref_out = dpo.inference(ref, data, MicroBatchSpec())
    assert ref_out.keys == {"packed_ref_logprobs"}
    assert ref_out.seqlens["packed_ref_logprobs"] == [[n - 1 for n in s] for s in data.seqlens["packed_input_ids"]]
    data.update_(ref_out)
    before = params(policy)
    first = dpo.train_step(policy, data, MicroBatchSpec(n_mbs=2))
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # pi == ref
    assert not torch.equal(before, params(policy))
    for _ in range(5):
        policy.engine.end_step()
        last = dpo.train_step(policy, data, MicroBatchSpec())
    assert last["loss"] < first["loss"] and last["reward_margin"] > 0 and last["reward_accuracy"] == 1.0


def test_dpo_needs_the_reference_logprobs(tokenizer, task, actor):
    data = batch(tokenizer, task, "rw_paired", n=2)
    with pytest.raises(InterfaceError, match=r"lacks key\(s\) \['packed_ref_logprobs'\]"):
        make_interface("dpo").train_step(actor, data, MicroBatchSpec())
    add_key(data, "packed_ref_logprobs", torch.zeros(data.total_len("packed_input_ids")), "token")
    with pytest.raises(InterfaceError, match="must be action-aligned"):
        make_interface("dpo").train_step(actor, data, MicroBatchSpec())
