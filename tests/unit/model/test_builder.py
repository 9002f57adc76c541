"""Role models: a subset of roles is built with the weights a full build gives them."""
from __future__ import annotations

import pytest
import torch

from realflow.api.errors import ConfigError
from realflow.api.experiment import ModelArch, ModelSpec
from realflow.model.builder import build_role_models

ARCH = ModelArch(n_layers=1, hidden_dim=16, n_q_heads=2, n_kv_heads=1, intermediate_dim=32)
SPECS = {
    "actor": ModelSpec(arch=ARCH),
    "critic": ModelSpec(init_from="actor", is_critic=True),
    "ref": ModelSpec(init_from="actor"),
    "reward": ModelSpec(arch=ARCH, is_critic=True),
    "rule": ModelSpec(model_free=True),
}


def _build(roles=None):
    return build_role_models(SPECS, vocab_size=64, bos_token_id=None, eos_token_id=1, seed=3, roles=roles)


def test_a_subset_gets_the_weights_of_the_full_build_and_only_its_roles():
    full = _build()
    assert sorted(full) == ["actor", "critic", "ref", "reward"]  # model-free roles get no module
    for roles in (["critic"], ["reward"], ["ref", "reward"]):
        part = _build(roles)
        assert sorted(part) == sorted(roles)  # the init_from source (actor) was built and dropped
        for role, model in part.items():
            want = full[role].state_dict()
            got = model.state_dict()
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in got), role
    # The critic starts from the actor's body, with a 1-output value head.
    critic, actor = full["critic"].state_dict(), full["actor"].state_dict()
    assert torch.equal(critic["0.wte.weight"], actor["0.wte.weight"])
    assert torch.equal(critic["1.attn.qkv.weight"], actor["1.attn.qkv.weight"])
    assert critic["2.head.weight"].shape[0] == 1


def test_init_from_an_unknown_role_is_named():
    specs = {"a": ModelSpec(arch=ARCH), "b": ModelSpec(init_from="nope")}
    with pytest.raises(ConfigError, match=r"do not exist.*'b': 'nope'"):
        build_role_models(specs, vocab_size=64, bos_token_id=None, eos_token_id=1, seed=3, roles=["b"])
