"""The decode-step kernels: attention over the KV cache and the rotary table."""
from __future__ import annotations

import torch
from model_testlib import tiny_hf_config

from realflow.model.attention import decode_attention
from realflow.model.families.registry import get_hf_family
from realflow.model.kv_cache import KVCache
from realflow.model.rotary import inv_frequencies, rotary_cos_sin


def _reference_attention(q, k, v, lens, scale):
    """Per row and head, softmax over the row's own (right-aligned) slots, kv heads repeated."""
    b, n_q, d = q.shape
    group = n_q // k.shape[1]
    out = torch.empty_like(q)
    for row in range(b):
        own = slice(k.shape[2] - int(lens[row]), k.shape[2])
        for h in range(n_q):
            keys, values = k[row, h // group, own], v[row, h // group, own]  # (len, d)
            out[row, h] = torch.softmax(keys @ q[row, h] * scale, dim=0) @ values
    return out


def test_decode_attention_matches_a_per_row_reference():
    g = torch.Generator().manual_seed(0)
    b, n_q, n_kv, d, width = 5, 6, 2, 8, 9
    lens = torch.tensor([9, 1, 4, 7, 2])
    k = torch.randn(b, n_kv, width, d, generator=g)
    v = torch.randn(b, n_kv, width, d, generator=g)
    q = torch.randn(b, n_q, d, generator=g)
    hidden = torch.arange(width)[None, :] < (width - lens)[:, None]
    bias = torch.zeros(b, width).masked_fill_(hidden, float("-inf")).repeat_interleave(n_kv, 0)[:, None, :]
    # Large values in the masked slots must not leak (the cache zero-fills, but be strict).
    k = k.masked_fill(hidden[:, None, :, None], 1e4)
    out = decode_attention(q, k, v, bias, d**-0.5)
    torch.testing.assert_close(out, _reference_attention(q, k, v, lens, d**-0.5), atol=1e-5, rtol=0)


def _config(family):
    return get_hf_family(family).config_from_hf(tiny_hf_config(family))


def test_rotary_table_lookup_equals_computing_the_angles():
    config = _config("llama")
    lens = torch.tensor([3, 7, 1])
    cache = KVCache(config, lens, max_new_tokens=5, dtype=torch.float32, device=torch.device("cpu"))
    positions = torch.tensor([3, 11, 0])  # up to longest prompt + max_new_tokens - 1
    cos, sin = cache.rotary_at(positions)
    ref_cos, ref_sin = rotary_cos_sin(inv_frequencies(config), positions, torch.float32)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert KVCache(_config("gpt2"), lens, 5, torch.float32, torch.device("cpu")).rotary is None
