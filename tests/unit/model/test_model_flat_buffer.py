"""The flat parameter/gradient buffers and the (keys, tensor-parallel slice) -> intervals map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testlib import packed_batch

from realflow.api.errors import ModelError
from realflow.model import ReaLModel, ReaLModelConfig, shard_fused, tp_shard_spec

LLAMA = ReaLModelConfig(n_layers=2, hidden_dim=32, n_q_heads=4, n_kv_heads=2, head_dim=8, intermediate_dim=48,
                        vocab_size=96, qkv_bias=True)
GPT2 = ReaLModelConfig(n_layers=2, hidden_dim=32, n_q_heads=4, n_kv_heads=4, head_dim=8, intermediate_dim=64,
                       vocab_size=96, n_positions=64, abs_position_embedding=True, norm_type="layer", norm_eps=1e-5,
                       activation="gelu_tanh", gated_mlp=False, qkv_bias=True, o_bias=True, mlp_bias=True,
                       tied_embedding=True)
CONFIGS = {"llama": LLAMA, "gpt2": GPT2}


@pytest.fixture(params=list(CONFIGS))
def model(request) -> ReaLModel:
    return ReaLModel(CONFIGS[request.param])


def test_key_order_is_the_documented_contract():
    assert ReaLModel(LLAMA).layout.keys == (
        "0.wte.weight",
        "1.attn.ln.weight", "1.attn.qkv.weight", "1.attn.qkv.bias", "1.attn.o.weight",
        "1.mlp.ln.weight", "1.mlp.gate_up.weight", "1.mlp.down.weight",
        "2.attn.ln.weight", "2.attn.qkv.weight", "2.attn.qkv.bias", "2.attn.o.weight",
        "2.mlp.ln.weight", "2.mlp.gate_up.weight", "2.mlp.down.weight",
        "3.ln_f.weight", "3.head.weight",
    )
    assert ReaLModel(LLAMA).layout.shape("1.attn.qkv.weight") == (32 + 2 * 16, 32)


def test_every_parameter_is_a_view_of_the_buffer(model):
    buf = model.flat_params
    assert buf.dim() == 1 and buf.numel() == sum(p.numel() for p in model.parameters())
    for key, p in model.named_parameters():
        start, end = model.layout.interval(key)
        assert p.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr(), key
        assert p.data_ptr() == buf[start:].data_ptr() and p.numel() == end - start, key


def test_writing_the_buffer_changes_the_model(model):
    ids, cu = packed_batch([3, 5])
    with torch.no_grad():
        before = model(ids, cu)
        start, end = model.layout.interval("1.attn.qkv.weight")
        model.flat_params[start:end] = 0.5
        assert torch.all(model.layer(1).attn.qkv.weight == 0.5)
        assert not torch.allclose(model(ids, cu), before)


def test_intervals_of_a_key_cover_exactly_its_elements(model):
    covered = np.zeros(model.layout.numel, dtype=np.int64)
    for key, p in model.named_parameters():
        iv = model.param_intervals([key])
        assert iv.shape == (1, 2) and iv[0, 1] - iv[0, 0] == p.numel()
        covered[iv[0, 0]:iv[0, 1]] += 1
        marker = torch.arange(p.numel(), dtype=p.dtype).view_as(p)
        with torch.no_grad():
            p.copy_(marker)
        torch.testing.assert_close(model.flat_params[iv[0, 0]:iv[0, 1]], marker.flatten())
    assert np.all(covered == 1)
    assert model.param_intervals().tolist() == [[0, model.layout.numel]]  # all keys: one merged interval


@pytest.mark.parametrize("tp_size", [2, 4])
def test_tensor_parallel_intervals_gather_each_shard(model, tp_size):
    if model.config.n_kv_heads % tp_size:
        pytest.skip(f"{model.config.n_kv_heads} kv heads do not split across {tp_size} ranks")
    with torch.no_grad():
        model.flat_params.copy_(torch.arange(model.layout.numel, dtype=torch.float32))
    config = model.config
    for key, p in model.named_parameters():
        spec = tp_shard_spec(config, key)
        seen = []
        for rank in range(tp_size):
            iv = model.param_intervals([key], tp_rank=rank, tp_size=tp_size)
            gathered = torch.cat([model.flat_params[s:e] for s, e in iv.tolist()])
            if spec.dim is None:
                expected = p.detach().flatten()
            else:
                expected = shard_fused(p.detach(), spec.sections, rank, tp_size, spec.dim, spec.unit).flatten()
            torch.testing.assert_close(gathered, expected, atol=0, rtol=0, msg=key)
            seen.append(gathered)
        if spec.dim is not None:  # the shards of all ranks partition the parameter
            assert sorted(torch.cat(seen).tolist()) == p.detach().flatten().tolist()


def test_intervals_follow_the_order_of_the_keys_given(model):
    keys = ["1.attn.o.weight", "0.wte.weight"]
    iv = model.param_intervals(keys)
    assert [tuple(r) for r in iv.tolist()] == [model.layout.interval(k) for k in keys]


def test_unknown_key_and_indivisible_heads_raise(model):
    with pytest.raises(ModelError, match="'9.attn.qkv.weight' is not in this layout"):
        model.param_intervals(["9.attn.qkv.weight"])
    with pytest.raises(ModelError, match="across 3 tensor-parallel ranks"):
        model.param_intervals(["1.attn.qkv.weight"], tp_rank=0, tp_size=3)


def test_gradients_land_in_the_flat_grad_buffer(model):
    grads = model.enable_flat_grads()
    ids, cu = packed_batch([4, 2])
    model(ids, cu).float().pow(2).mean().backward()
    for key, p in model.named_parameters():
        start, end = model.layout.interval(key)
        assert p.grad.data_ptr() == grads[start:].data_ptr(), key
    first = grads.clone()
    assert first.abs().sum() > 0
    model(ids, cu).float().pow(2).mean().backward()  # accumulates in place
    torch.testing.assert_close(grads, 2 * first)
    model.zero_grad()
    assert grads.abs().sum() == 0 and all(p.grad is not None for p in model.parameters())


def test_optimizer_updates_the_buffer_and_dtype_moves_keep_views(model):
    model.enable_flat_grads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids, cu = packed_batch([4, 2])
    before = model.flat_params.clone()
    model(ids, cu).float().pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, model.flat_params)
    params = list(model.parameters())
    model.to(torch.float64)
    assert model.flat_params.dtype == torch.float64 and model.flat_grads.dtype == torch.float64
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # optimizer references survive
    for key, p in model.named_parameters():
        assert p.dtype == torch.float64 and p.data_ptr() == model.flat_params[model.layout.interval(key)[0]:].data_ptr()
    assert model(ids, cu).dtype == torch.float64


def test_stage_layout_keeps_global_keys_and_matches_layout_for():
    stage = ReaLModel(LLAMA, layer_range=(1, 3))
    assert stage.layout == ReaLModel.layout_for(LLAMA, (1, 3))
    assert stage.layout.keys[0] == "1.attn.ln.weight" and stage.layout.keys[-1] == "2.mlp.down.weight"
    assert ReaLModel.layout_for(LLAMA) == ReaLModel(LLAMA).layout
