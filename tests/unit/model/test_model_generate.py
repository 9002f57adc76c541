"""KV-cache generation: greedy equals HF generate; sampling outputs are self-consistent."""
from __future__ import annotations

import pytest
import torch
from model_testlib import VOCAB, make_hf_model, packed_batch, save_hf, tiny_hf_config

from realflow.api.errors import ConfigError, DataError, ModelError
from realflow.model import load_hf_checkpoint
from realflow.model.generate import GenerationConfig, generate
from realflow.model.kv_cache import KVCache
from realflow.model.sampling import draw, filter_logits

PROMPTS = [5, 1, 9, 3, 3]
EOS = 7


def _split(ids, cu):
    b = cu.tolist()
    return [ids[s:e].tolist() for s, e in zip(b[:-1], b[1:])]


def test_greedy_equals_hf_generate(hf_checkpoint):
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path)
    ids, cu = packed_batch(PROMPTS, seed=5)
    out = generate(model, ids, cu, GenerationConfig(max_new_tokens=24, greedy=True), eos_token_id=EOS)
    ours = _split(out.output_ids, out.output_cu_seqlens)
    for i, prompt in enumerate(_split(ids, cu)):
        x = torch.tensor([prompt])
        ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                          eos_token_id=EOS, pad_token_id=0)[0, len(prompt):].tolist()
        assert ours[i] == ref, f"prompt {i}"
        assert bool(out.no_eos[i]) == (EOS not in ref)
    assert out.logprobs.shape == out.output_ids.shape and torch.all(out.logprobs <= 0)


def _recompute_logprobs(model, ids, cu, out, gconfig):
    """Log-probs of the generated tokens from one packed forward over prompt + output."""
    prompts, outputs = _split(ids, cu), _split(out.output_ids, out.output_cu_seqlens)
    seqs = [p + o for p, o in zip(prompts, outputs)]
    full = torch.tensor([t for s in seqs for t in s])
    full_cu = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0).to(torch.int32)
    with torch.no_grad():
        logits = model(full, full_cu).float()
    rows = torch.tensor([b + len(p) - 1 + j for b, p, o in zip(full_cu.tolist(), prompts, outputs)
                         for j in range(len(o))])
    picked = logits[rows] / gconfig.temperature
    if out.logits_mask is not None:
        picked = picked.masked_fill(out.logits_mask, float("-inf"))
    return picked.log_softmax(-1).gather(-1, out.output_ids[:, None]).squeeze(-1)


@pytest.mark.parametrize(
    "gconfig",
    [
        GenerationConfig(max_new_tokens=12, temperature=0.7),
        GenerationConfig(max_new_tokens=12, top_k=5, return_logits_mask=True),
        GenerationConfig(max_new_tokens=12, top_p=0.6, temperature=1.3, return_logits_mask=True),
    ],
    ids=["temperature", "top_k", "top_p"],
)
def test_sampled_logprobs_match_a_packed_forward(hf_checkpoint, gconfig):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch(PROMPTS, seed=5)
    out = generate(model, ids, cu, gconfig, EOS, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.logprobs, _recompute_logprobs(model, ids, cu, out, gconfig), atol=1e-5, rtol=0)
    if gconfig.return_logits_mask:
        assert out.logits_mask.shape == (out.output_ids.numel(), VOCAB)
        assert not out.logits_mask.gather(-1, out.output_ids[:, None]).any()  # sampled tokens were kept
        if gconfig.top_k:
            assert torch.all((~out.logits_mask).sum(-1) == gconfig.top_k)


def test_sampling_is_reproducible_with_a_generator(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch(PROMPTS)
    g = GenerationConfig(max_new_tokens=10)
    a = generate(model, ids, cu, g, EOS, generator=torch.Generator().manual_seed(3))
    b = generate(model, ids, cu, g, EOS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.output_ids, b.output_ids) and torch.equal(a.logprobs, b.logprobs)


def test_top_k_one_samples_the_argmax(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch(PROMPTS)
    greedy = generate(model, ids, cu, GenerationConfig(max_new_tokens=8, greedy=True), EOS)
    top1 = generate(model, ids, cu, GenerationConfig(max_new_tokens=8, top_k=1), EOS)
    assert torch.equal(greedy.output_ids, top1.output_ids)
    assert torch.all(top1.logprobs == 0)


def test_stops_per_sequence_and_flags_truncation(tmp_path):
    hf = make_hf_model(tiny_hf_config("llama"))
    model = load_hf_checkpoint(save_hf(hf, tmp_path / "m"))
    ids, cu = packed_batch(PROMPTS, seed=5)
    first = generate(model, ids, cu, GenerationConfig(max_new_tokens=6, greedy=True), None)
    assert first.output_lens.tolist() == [6] * len(PROMPTS) and first.no_eos.all()
    # Make the 2nd greedy token of sequence 0 the EOS: it stops there, the rest run on.
    eos = int(first.output_ids[1])
    out = generate(model, ids, cu, GenerationConfig(max_new_tokens=6, greedy=True), eos)
    seqs = _split(out.output_ids, out.output_cu_seqlens)
    for seq, truncated in zip(seqs, out.no_eos.tolist()):
        assert (eos in seq) != truncated
        if not truncated:
            assert seq.index(eos) == len(seq) - 1  # EOS is kept, nothing after it
    assert len(seqs[0]) == 2
    # min_new_tokens forbids the EOS before it.
    later = generate(model, ids, cu, GenerationConfig(max_new_tokens=6, min_new_tokens=4, greedy=True), [eos, 95])
    assert all(eos not in s[:4] for s in _split(later.output_ids, later.output_cu_seqlens))


def test_draw_samples_each_rows_distribution_and_never_a_removed_token():
    """The inverse-CDF sampler against the probabilities it is given: 200k draws per
    row; every frequency within 5 standard deviations of its probability; tokens of
    probability 0 (as top-k/top-p leave them, here also the first and the last of a
    row) never drawn."""
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([
        [0.0, 0.5, 0.0, 0.25, 0.125, 0.125, 0.0],
        [0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3],
        [1e-3, 0.2, 0.2, 0.2, 0.2, 0.199, 0.0],
    ])
    n = 200_000
    counts = torch.zeros_like(probs)
    for _ in range(n // 1000):
        tokens = draw(probs.repeat_interleave(1000, dim=0), g).view(3, 1000)
        counts += torch.nn.functional.one_hot(tokens, probs.shape[1]).sum(1).float()
    freq = counts / n
    assert counts[probs == 0].sum() == 0
    sd = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * sd + 1e-9).all(), (freq, probs)
    # Unnormalised rows (as the sampler's callers may pass) are drawn from the same distribution.
    torch.testing.assert_close(draw(probs * 3.0, torch.Generator().manual_seed(1)),
                               draw(probs, torch.Generator().manual_seed(1)))


def test_filter_logits_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    _, removed = filter_logits(logits, top_k=0, top_p=0.8)
    assert removed.tolist() == [[False, False, True, True]]
    _, removed = filter_logits(logits, top_k=0, top_p=0.81)
    assert removed.tolist() == [[False, False, False, True]]
    _, removed = filter_logits(logits, top_k=3, top_p=1.0)
    assert removed.tolist() == [[False, False, False, True]]


def test_bad_requests_raise(hf_checkpoint):
    path = hf_checkpoint[2]
    model = load_hf_checkpoint(path)
    ids, cu = packed_batch([3, 2])
    with pytest.raises(ConfigError, match="min_new_tokens must be in"):
        GenerationConfig(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        GenerationConfig(temperature=0.0)
    with pytest.raises(DataError, match="every prompt needs >= 1 token"):
        generate(model, ids, torch.tensor([0, 0, 5], dtype=torch.int32), GenerationConfig(greedy=True), EOS)
    with pytest.raises(DataError, match=r"eos_token_id \[500\] is outside the vocabulary \[0, 96\)"):
        generate(model, ids, cu, GenerationConfig(max_new_tokens=4), 500)
    with pytest.raises(ModelError, match="needs a whole actor model"):
        generate(load_hf_checkpoint(path, is_critic=True), ids, cu, GenerationConfig(), EOS)
    if model.config.abs_position_embedding:
        with pytest.raises(DataError, match="exceeds the model's 128 positions"):
            generate(model, ids, cu, GenerationConfig(max_new_tokens=200), EOS)


def test_dropping_stopped_rows_changes_nothing(hf_checkpoint, monkeypatch):
    """Rows that hit EOS leave the decode batch; each result equals generating alone."""
    drops = []
    original = KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, rows: (drops.append(rows.numel()), original(self, rows)))
    model = load_hf_checkpoint(hf_checkpoint[2])
    lengths = [3, 5, 1, 4, 6, 2, 7, 3]
    ids, cu = packed_batch(lengths, seed=11)
    free = generate(model, ids, cu, GenerationConfig(max_new_tokens=12, greedy=True), None)
    # The most common second token makes several rows stop early (and get dropped).
    second = free.output_ids.view(len(lengths), 12)[:, 1]
    eos = int(second.mode().values)
    g = GenerationConfig(max_new_tokens=12, top_k=20, return_logits_mask=True)
    out = generate(model, ids, cu, g, eos, generator=torch.Generator().manual_seed(1))
    greedy = generate(model, ids, cu, GenerationConfig(max_new_tokens=12, greedy=True), eos)
    assert drops, "no rows were dropped: the test does not exercise compaction"
    for i, prompt in enumerate(_split(ids, cu)):
        alone = generate(model, torch.tensor(prompt), torch.tensor([0, len(prompt)], dtype=torch.int32),
                         GenerationConfig(max_new_tokens=12, greedy=True), eos)
        s, e = greedy.output_cu_seqlens[i], greedy.output_cu_seqlens[i + 1]
        assert greedy.output_ids[s:e].tolist() == alone.output_ids.tolist()
        torch.testing.assert_close(greedy.logprobs[s:e], alone.logprobs, atol=1e-5, rtol=0)
        assert bool(greedy.no_eos[i]) == bool(alone.no_eos[0])
    torch.testing.assert_close(out.logprobs, _recompute_logprobs(model, ids, cu, out, g), atol=1e-5, rtol=0)


def test_batched_greedy_equals_hf_batched_generate(hf_checkpoint):
    """The benchmark's setting: many mixed-length prompts, EOS banned until max_new_tokens,
    against HF generating the same batch left-padded with its KV cache."""
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path)
    lengths = [5, 1, 9, 3, 3, 12, 7, 2, 8, 4]
    ids, cu = packed_batch(lengths, seed=9)
    new = 20
    out = generate(model, ids, cu, GenerationConfig(max_new_tokens=new, min_new_tokens=new, greedy=True), EOS)
    width = max(lengths)
    padded = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, prompt in enumerate(_split(ids, cu)):
        padded[i, width - len(prompt):] = torch.tensor(prompt)
        mask[i, width - len(prompt):] = 1
    ref = hf.generate(padded, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                      eos_token_id=EOS, pad_token_id=0)[:, width:]
    assert torch.equal(out.output_ids.view(len(lengths), new), ref)
    assert out.no_eos.all()


def test_padding_that_is_an_eos_id_does_not_lengthen_outputs(hf_checkpoint):
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch(PROMPTS, seed=5)
    free = generate(model, ids, cu, GenerationConfig(max_new_tokens=10, greedy=True), None)
    eos = int(free.output_ids[1])  # sequence 0 stops at its 2nd token, the others maybe later
    out = generate(model, ids, cu, GenerationConfig(max_new_tokens=10, greedy=True), eos, pad_token_id=eos)
    ref = generate(model, ids, cu, GenerationConfig(max_new_tokens=10, greedy=True), eos, pad_token_id=0)
    assert torch.equal(out.output_cu_seqlens, ref.output_cu_seqlens) and torch.equal(out.output_ids, ref.output_ids)
    assert len(_split(out.output_ids, out.output_cu_seqlens)[0]) == 2


def test_results_can_enter_autograd(hf_checkpoint):
    """The loop runs under inference_mode; what it returns must be ordinary tensors."""
    model = load_hf_checkpoint(hf_checkpoint[2])
    ids, cu = packed_batch(PROMPTS)
    out = generate(model, ids, cu, GenerationConfig(max_new_tokens=4, top_k=5, return_logits_mask=True), EOS)
    assert not any(t.is_inference() for t in (out.output_ids, out.logprobs, out.no_eos, out.logits_mask))
    new_logp = torch.zeros_like(out.logprobs, requires_grad=True)
    (torch.exp(new_logp - out.logprobs) * out.logprobs).sum().backward()  # saves logprobs for backward
    assert new_logp.grad is not None
