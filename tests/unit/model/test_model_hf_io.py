"""Loading and saving HF directories: round trips, sharding, critics, clear errors."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers
from model_testlib import hf_packed_logits, make_hf_model, packed_batch, save_hf, tiny_hf_config
from safetensors.torch import load_file, save_file

from realflow.api.errors import ModelError
from realflow.model import ReaLModel, load_hf_checkpoint, read_hf_config, save_hf_checkpoint


def _hf_logits(path, ids, cu):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return hf_packed_logits(hf, ids, cu)


def test_save_pretrained_load_save_reload_gives_identical_logits(hf_checkpoint, tmp_path):
    family, _, path = hf_checkpoint
    model = load_hf_checkpoint(path)
    assert model.config.hf_family == family
    save_hf_checkpoint(model, tmp_path / "ours")
    ids, cu = packed_batch([6, 1, 9])
    # Both directories reloaded by HF: bitwise equal weights give bitwise equal logits.
    assert torch.equal(_hf_logits(tmp_path / "ours", ids, cu), _hf_logits(path, ids, cu))
    reloaded = load_hf_checkpoint(tmp_path / "ours")
    assert torch.equal(reloaded.flat_params, model.flat_params)
    assert reloaded.config == model.config


def test_sharded_safetensors_with_index(hf_checkpoint, tmp_path):
    path = hf_checkpoint[2]
    model = load_hf_checkpoint(path)
    save_hf_checkpoint(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and not (tmp_path / "sharded" / "model.safetensors").exists()
    ids, cu = packed_batch([5, 2])
    assert torch.equal(_hf_logits(tmp_path / "sharded", ids, cu), _hf_logits(path, ids, cu))
    assert torch.equal(load_hf_checkpoint(tmp_path / "sharded").flat_params, model.flat_params)
    # Saving again unsharded replaces the shards.
    save_hf_checkpoint(model, tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded").glob("model*")) == ["model.safetensors"]


def test_pytorch_model_bin(tmp_path):
    hf = make_hf_model(tiny_hf_config("llama"))
    hf.config.save_pretrained(str(tmp_path))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = load_hf_checkpoint(tmp_path)
    ids, cu = packed_batch([4, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cu), hf_packed_logits(hf, ids, cu), atol=1e-5, rtol=0)


def test_checkpoint_without_base_prefix(tmp_path):
    """The original gpt2 files name tensors 'h.0.attn...' without 'transformer.'."""
    hf = make_hf_model(tiny_hf_config("gpt2"))
    path = save_hf(hf, tmp_path / "g")
    tensors = load_file(path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, path / "model.safetensors")
    ids, cu = packed_batch([4, 3])
    with torch.no_grad():
        torch.testing.assert_close(load_hf_checkpoint(path)(ids, cu), hf_packed_logits(hf, ids, cu), atol=1e-5, rtol=0)


def test_stage_loads_only_its_layers(hf_checkpoint):
    path = hf_checkpoint[2]
    full = load_hf_checkpoint(path)
    stage = load_hf_checkpoint(path, layer_range=(1, 3))
    for key in stage.layout.keys:
        assert torch.equal(stage.state_dict()[key], full.state_dict()[key])


def test_critic_from_actor_and_back_through_hf(hf_checkpoint, tmp_path):
    _, _, path = hf_checkpoint
    critic = load_hf_checkpoint(path, is_critic=True)
    assert critic.config.is_critic and not critic.config.tied_embedding
    save_hf_checkpoint(critic, tmp_path / "critic")
    assert read_hf_config(tmp_path / "critic")[2]  # the saved checkpoint is a critic
    again = load_hf_checkpoint(tmp_path / "critic")  # is_critic inferred
    assert again.config.is_critic and torch.equal(again.flat_params, critic.flat_params)
    hf_critic = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "critic")).eval()
    ids, _ = packed_batch([6])
    with torch.no_grad():
        ours = critic(ids, torch.tensor([0, 6], dtype=torch.int32))
        ref = hf_critic(ids[None]).logits  # HF pools the last token: (1, 1)
    torch.testing.assert_close(ours[-1], ref[0, 0], atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="checkpoint is a critic"):
        load_hf_checkpoint(tmp_path / "critic", is_critic=False)


def test_mistral_is_one_small_file(tmp_path):
    hf = make_hf_model(tiny_hf_config("mistral", sliding_window=None))
    model = load_hf_checkpoint(save_hf(hf, tmp_path / "m"))
    ids, cu = packed_batch([5, 1, 4])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cu), hf_packed_logits(hf, ids, cu), atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="sliding_window=4096 is not supported"):
        load_hf_checkpoint(save_hf(make_hf_model(tiny_hf_config("mistral")), tmp_path / "sw"))


# ------------------------------------------------------------------ errors


def test_path_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_hf_checkpoint(tmp_path)


def test_unknown_architecture_lists_registered(hf_checkpoint):
    path = hf_checkpoint[2]
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="unknown HF architecture 'FooForCausalLM'; registered: .*LlamaForCausalLM"):
        load_hf_checkpoint(path)


def test_missing_tensor_is_named(hf_checkpoint):
    family, _, path = hf_checkpoint
    tensors = load_file(path / "model.safetensors")
    victim = next(k for k in sorted(tensors) if ".1." in k and k.endswith("weight"))
    del tensors[victim]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ModelError, match=f"missing tensor '{victim}'"):
        load_hf_checkpoint(path)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    hf = make_hf_model(tiny_hf_config("llama"))
    path = save_hf(hf, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (path / "config.json").write_text(json.dumps(cfg))
    expected = r"'model.layers.0.mlp.gate_proj.weight'.*has \(48, 32\), the config expects \(40, 32\)"
    with pytest.raises(ModelError, match=expected):
        load_hf_checkpoint(path)


def test_no_weights_and_no_family(tmp_path):
    hf = make_hf_model(tiny_hf_config("llama"))
    hf.config.save_pretrained(str(tmp_path))
    with pytest.raises(ModelError, match="no weights found"):
        load_hf_checkpoint(tmp_path)
    model = ReaLModel(dataclasses.replace(read_hf_config(tmp_path)[1], hf_family=None))
    with pytest.raises(ModelError, match="name the HF family"):
        save_hf_checkpoint(model, tmp_path / "out")
