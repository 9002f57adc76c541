"""Generation of the policy interfaces: the rollout layout, group_size, EOS, logits masks."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from interfaces_testlib import batch

import realflow.interfaces  # noqa: F401
from realflow.api.data import MicroBatchSpec, SequenceSample
from realflow.api.dfg import ModelName
from realflow.api.errors import InterfaceError
from realflow.api.generation import GenerationConfig, GenerationResult
from realflow.api.interface import Model, make_interface

ROLLOUT_KEYS = {"packed_input_ids", "prompt_mask", "packed_logprobs", "seq_no_eos_mask"}


class ScriptedEngine:
    """An engine whose generate returns fixed continuations (to check the layout exactly)."""

    version = 0

    def __init__(self, outputs: list[list[int]], no_eos: list[bool], vocab: int = 7) -> None:
        self.outputs, self.no_eos, self.vocab = outputs, no_eos, vocab
        self.calls: list[tuple[list[int], GenerationConfig]] = []

    def generate(self, prompt_ids, prompt_cu_seqlens, gconfig, eos_token_id, pad_token_id=None):
        lens = (prompt_cu_seqlens[1:] - prompt_cu_seqlens[:-1]).tolist()
        self.calls.append((lens, gconfig))
        assert len(lens) == len(self.outputs)
        flat = [t for o in self.outputs for t in o]
        cu = torch.tensor([0] + torch.tensor([len(o) for o in self.outputs]).cumsum(0).tolist(), dtype=torch.int32)
        mask = None
        if gconfig.return_logits_mask:
            mask = torch.zeros(len(flat), self.vocab, dtype=torch.bool)
            mask[:, -1] = True  # the last token of the vocabulary is always filtered out
        return GenerationResult(torch.tensor(flat), cu, -torch.arange(1, len(flat) + 1).float() / 10,
                                torch.tensor(self.no_eos), mask)


def _prompts(lengths: list[int], answers: list[str]) -> SequenceSample:
    ids = torch.arange(10, 10 + sum(lengths))
    return SequenceSample.from_default([f"p{i}" for i in range(len(lengths))], lengths, {"packed_prompts": ids},
                                       metadata={"answer": answers})


def test_generate_lays_out_groups_in_the_key_contract():
    eos = 1
    engine = ScriptedEngine(outputs=[[5, eos], [6, 6, 6], [eos], [4, 4, 4]], no_eos=[False, True, False, True])
    model = Model(ModelName("actor"), None, SimpleNamespace(eos_token_id=eos, pad_token_id=0), engine)
    actor = make_interface("ppo_actor", group_size=2, generation=dict(max_new_tokens=3, top_k=3))
    out = actor.generate(model, _prompts([3, 2], ["7", "8"]), MicroBatchSpec())

    assert engine.calls[0][0] == [3, 3, 2, 2]  # each prompt repeated group_size times
    assert engine.calls[0][1].return_logits_mask  # top-k is active: the mask is requested
    assert out.keys == ROLLOUT_KEYS | {"packed_logits_mask"}
    assert out.ids == ["p0", "p1"] and out.metadata == {"answer": ["7", "8"]}
    assert out.seqlens["packed_input_ids"] == [[5, 6], [3, 5]]
    assert out.seqlens["prompt_mask"] == [[5, 6], [3, 5]]
    assert out.seqlens["packed_logprobs"] == [[4, 5], [2, 4]]
    assert out.seqlens["packed_logits_mask"] == [[4, 5], [2, 4]]
    assert out.seqlens["seq_no_eos_mask"] == [[1, 1], [1, 1]]
    assert out.data["packed_input_ids"].tolist() == [10, 11, 12, 5, eos, 10, 11, 12, 6, 6, 6,
                                                     13, 14, eos, 13, 14, 4, 4, 4]
    assert out.data["prompt_mask"].tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0]
    lp = out.data["packed_logprobs"].tolist()
    assert lp == pytest.approx([0, 0, -0.1, -0.2, 0, 0, -0.3, -0.4, -0.5, 0, -0.6, 0, -0.7, -0.8, -0.9])
    assert out.data["seq_no_eos_mask"].tolist() == [False, True, False, True]
    lmask = out.data["packed_logits_mask"]
    assert lmask.shape == (15, 7) and lmask.dtype == torch.bool
    prompt_actions = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    assert not lmask[prompt_actions].any() and lmask[~prompt_actions, -1].all()


def test_generate_without_filters_has_no_logits_mask():
    engine = ScriptedEngine(outputs=[[5], [6]], no_eos=[True, True])
    model = Model(ModelName("actor"), None, SimpleNamespace(eos_token_id=1, pad_token_id=0), engine)
    out = make_interface("grpo", group_size=2, generation=dict(max_new_tokens=1)).generate(
        model, _prompts([2], ["x"]), MicroBatchSpec())
    assert out.keys == ROLLOUT_KEYS and not engine.calls[0][1].return_logits_mask


def test_generate_needs_one_prompt_per_sample():
    data = _prompts([2, 2], ["a", "b"])
    data.seqlens["packed_prompts"] = [[2, 2], []]
    model = Model(ModelName("actor"), None, SimpleNamespace(eos_token_id=1, pad_token_id=0), ScriptedEngine([], []))
    with pytest.raises(InterfaceError, match="one prompt per sample"):
        make_interface("ppo_actor").generate(model, data, MicroBatchSpec())


def test_real_generation_respects_group_size_eos_and_is_reproduced_by_inference(tokenizer, task, actor):
    prompts = batch(tokenizer, task, "prompt", n=3)
    # EOS := the greedy first token of prompt 0, so that sequence stops at once.
    first = prompts.data["packed_prompts"][: prompts.flat_seqlens("packed_prompts")[0]]
    with torch.no_grad():
        eos = int(actor.module(first, torch.tensor([0, len(first)], dtype=torch.int32))[-1].argmax())
    model = Model(actor.name, actor.module, SimpleNamespace(eos_token_id=eos, pad_token_id=0), actor.engine)
    greedy = make_interface("ppo_actor", group_size=2, generation=dict(max_new_tokens=5, greedy=True))
    out = greedy.generate(model, prompts, MicroBatchSpec())
    assert [len(s) for s in out.seqlens["packed_input_ids"]] == [2, 2, 2]
    p_lens = prompts.flat_seqlens("packed_prompts")
    resp_lens = [n - p_lens[i // 2] for i, n in enumerate(out.flat_seqlens("packed_input_ids"))]
    assert resp_lens[:2] == [1, 1] and out.data["seq_no_eos_mask"][:2].tolist() == [False, False]
    seqs = out.data["packed_input_ids"].split(out.flat_seqlens("packed_input_ids"))
    for seq, n, no_eos in zip(seqs, resp_lens, out.data["seq_no_eos_mask"].tolist()):
        response = seq[-n:].tolist()
        assert eos not in response[:-1]  # generation stops at the first EOS
        assert no_eos == (response[-1] != eos) and (not no_eos or n == 5)

    # Sampling with temperature and top-k: inference on the same model reproduces the
    # generation log-probs when it is given the logits mask (same temperature, same mask).
    actor_if = make_interface("ppo_actor", group_size=3, logprobs_key="recomputed",
                              generation=dict(max_new_tokens=4, temperature=0.7, top_k=5))
    out = actor_if.generate(actor, prompts, MicroBatchSpec())
    assert [len(s) for s in out.seqlens["packed_input_ids"]] == [3, 3, 3]
    assert out.metadata["answer"] == prompts.metadata["answer"]
    again = actor_if.inference(actor, out.select(["packed_input_ids", "packed_logits_mask"]), MicroBatchSpec(n_mbs=2))
    assert again.seqlens["recomputed"] == out.seqlens["packed_logprobs"]
    response = ~out.data["prompt_mask"]
    response_actions = torch.cat([m[1:] for m in response.split(out.flat_seqlens("packed_input_ids"))])
    torch.testing.assert_close(again.data["recomputed"][response_actions],
                               out.data["packed_logprobs"][response_actions], atol=2e-4, rtol=1e-4)
    unmasked = actor_if.inference(actor, out.select(["packed_input_ids"]), MicroBatchSpec())
    assert (unmasked.data["recomputed"][response_actions] < again.data["recomputed"][response_actions] - 1e-4).any()


def test_remax_generates_the_greedy_response_last(tokenizer, task, actor):
    prompts = batch(tokenizer, task, "prompt", n=2)
    remax = make_interface("remax", group_size=2, generation=dict(max_new_tokens=4))
    out = remax.generate(actor, prompts, MicroBatchSpec())
    assert [len(s) for s in out.seqlens["packed_input_ids"]] == [3, 3]
    assert out.seqlens["seq_no_eos_mask"] == [[1, 1, 1], [1, 1, 1]]
    greedy = actor.engine.generate(prompts.data["packed_prompts"], prompts.cu_seqlens("packed_prompts"),
                                   GenerationConfig(max_new_tokens=4, greedy=True), tokenizer.eos_token_id, 0)
    seqs = out.data["packed_input_ids"].split(out.flat_seqlens("packed_input_ids"))
    g = greedy.output_ids.split(greedy.output_lens.tolist())
    for i in range(2):
        assert seqs[3 * i + 2][-len(g[i]):].tolist() == g[i].tolist()
