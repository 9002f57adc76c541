"""The decode step (decoder.py) on both GEMM kernels: oneDNN-prepacked weights and
plain F.linear/addmm agree with F.linear, decode logits equal HF's and the packed
forward's, and greedy generation equals HF generate token for token."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_testlib import hf_packed_logits, packed_batch

from realflow.model import decoder, load_hf_checkpoint
from realflow.model.decoder import Decoder, PreparedLinear
from realflow.model.generate import GenerationConfig, generate
from realflow.model.kv_cache import KVCache


@pytest.fixture(params=["dense", "onednn"])
def kernel(request, monkeypatch) -> str:
    """Force one GEMM kernel for every weight (the tiny test models are below the
    size from which the decoder picks oneDNN on its own)."""
    if request.param == "onednn":
        if not decoder._HAS_ONEDNN:
            pytest.skip("this PyTorch has no mkldnn linear ops")
        monkeypatch.setattr(decoder, "ONEDNN_MIN_WEIGHT", 0)
    else:
        monkeypatch.setattr(decoder, "ONEDNN_MIN_WEIGHT", float("inf"))
    return request.param


@pytest.mark.parametrize("with_bias", [True, False])
def test_prepared_linear_matches_f_linear(kernel, with_bias):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, generator=g)
    bias = torch.randn(24, generator=g) if with_bias else None
    lin = PreparedLinear(weight, bias, batch=8)
    assert (lin.packed is not None) == (kernel == "onednn")
    for rows in (1, 5, 8, 33):  # the batch is only a layout hint
        x = torch.randn(rows, 16, generator=g)
        residual = torch.randn(rows, 24, generator=g)
        torch.testing.assert_close(lin(x), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin.add(x, residual), residual + F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_onednn_only_for_large_float32_cpu_weights_and_mkldnn_enabled(monkeypatch):
    big = torch.zeros(decoder.ONEDNN_MIN_WEIGHT // 64 + 1, 64)
    assert decoder.use_onednn(big) == decoder._HAS_ONEDNN
    assert not decoder.use_onednn(big[:1])
    assert not decoder.use_onednn(big.to(torch.bfloat16))
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # the user's switch
    assert not decoder.use_onednn(big)


def test_decode_logits_match_hf_and_the_packed_forward(hf_checkpoint, kernel):
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path).eval()
    lengths, steps = [5, 1, 9, 3], 4
    ids, cu = packed_batch(lengths, seed=3)
    lens = torch.tensor(lengths)
    fed = torch.randint(0, model.config.vocab_size, (len(lengths), steps), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        cache = KVCache(model.config, lens, steps, model.dtype, model.device)
        model(ids, cu, cache=cache, head_rows=cu[1:].long() - 1)
        cache.column = cache.prompt_width
        step = Decoder(model, len(lengths))
        assert (step.lm_head.packed is not None) == (kernel == "onednn")
        positions = lens.clone()
        decoded = []
        for s in range(steps):
            decoded.append(step(fed[:, s], positions, cache))  # (B, vocab)
            positions += 1
            cache.column += 1
    decoded = torch.stack(decoded, dim=1)  # (B, steps, vocab)
    bounds = cu.tolist()
    full = torch.cat([torch.cat((ids[s:e], fed[i])) for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))])
    full_cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    full_cu[1:] = torch.cumsum(lens + steps, 0)
    # Row of sequence i's token fed at step s: its start + prompt length + s.
    rows = (full_cu[:-1].long() + lens)[:, None] + torch.arange(steps)[None, :]
    with torch.no_grad():
        ours = model(full, full_cu)[rows]
        ref = hf_packed_logits(hf, full, full_cu)[rows]
    torch.testing.assert_close(decoded, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded, ref, atol=1e-5, rtol=0)


def test_greedy_with_onednn_linears_equals_hf_generate(hf_checkpoint, monkeypatch):
    if not decoder._HAS_ONEDNN:
        pytest.skip("this PyTorch has no mkldnn linear ops")
    monkeypatch.setattr(decoder, "ONEDNN_MIN_WEIGHT", 0)
    _, hf, path = hf_checkpoint
    model = load_hf_checkpoint(path)
    lengths, new = [5, 1, 9, 3, 3, 12, 7, 2], 16
    ids, cu = packed_batch(lengths, seed=9)
    out = generate(model, ids, cu, GenerationConfig(max_new_tokens=new, min_new_tokens=new, greedy=True), 7)
    width = max(lengths)
    padded = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(padded)
    bounds = cu.tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        padded[i, width - (e - s):] = ids[s:e]
        mask[i, width - (e - s):] = 1
    ref = hf.generate(padded, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                      eos_token_id=7, pad_token_id=0)[:, width:]
    assert torch.equal(out.output_ids.view(len(lengths), new), ref)
