"""Interface state: the default (none), what the PPO interfaces keep, and that the
MFCs of one role share it (`build_interfaces`, used by both runners)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from realflow.api.errors import InterfaceError
from realflow.api.interface import ModelInterface, make_interface
from realflow.apps.experiments import load_experiment
from realflow.system.execution import build_interfaces

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
PPO = ["n_seqs=8", *("actor." + t for t in TINY), "shaping.adaptive_kl_target=0.01", "critic_args.value_norm=true"]


def test_an_interface_without_state_saves_nothing_and_refuses_foreign_state() -> None:
    iface = ModelInterface()
    assert iface.state_dict() == {}
    iface.load_state_dict({})
    with pytest.raises(InterfaceError, match=r"ModelInterface keeps no state.*\['kl_controller'\]"):
        iface.load_state_dict({"kl_controller": {"value": 1.0}})


@pytest.mark.parametrize("name", ["ppo_actor", "ppo_critic", "remax"])
def test_every_interface_that_shapes_rewards_saves_its_kl_controller(name: str) -> None:
    a = make_interface(name, kl_ctl=0.1, adaptive_kl_target=0.5, adaptive_kl_horizon=10.0)
    a.kl_controller.update(2.0, n_steps=5)  # KL above target: the coefficient grows
    b = make_interface(name, kl_ctl=0.1, adaptive_kl_target=0.5, adaptive_kl_horizon=10.0)
    b.load_state_dict(a.state_dict())
    assert b.kl_controller.value == a.kl_controller.value == pytest.approx(0.1 * (1 + 0.2 * 5 / 10))


def test_the_critic_saves_its_value_normaliser() -> None:
    a = make_interface("ppo_critic", value_norm=True, value_norm_beta=0.9)
    a.normalizer.update(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([True, True, False]))
    b = make_interface("ppo_critic", value_norm=True, value_norm_beta=0.9)
    b.load_state_dict(a.state_dict())
    assert b.normalizer.mean_std() == a.normalizer.mean_std() == pytest.approx((2.0, (1 + 1e-5) ** 0.5))


def test_the_mfcs_of_a_role_share_one_interface_and_its_state() -> None:
    _, spec = load_experiment("ppo", PPO)
    ifaces = build_interfaces(spec.mfcs)
    assert ifaces["critic_inf"] is ifaces["critic_train"]  # inference denormalises with what training updates
    assert ifaces["actor_gen"] is ifaces["actor_train"]
    assert ifaces["ref_inf"] is not ifaces["actor_train"]  # another role: its own
    assert ifaces["critic_train"] is not ifaces["actor_train"]

    # What the critic's train step learns is what its inference uses.
    ifaces["critic_train"].normalizer.update(torch.tensor([4.0, 6.0]), torch.tensor([True, True]))
    values = ifaces["critic_inf"].normalizer.denormalize(torch.zeros(2))
    assert values.tolist() == pytest.approx([5.0, 5.0])


def test_other_arguments_make_another_instance() -> None:
    """An actor inference that recomputes old log-probs under another key is its own instance."""
    _, spec = load_experiment("ppo", PPO)
    gen = next(m for m in spec.mfcs if m.name == "actor_gen")
    recompute = dataclasses.replace(gen, name="actor_inf", kind=type(gen.kind).INFERENCE,
                                    interface_args={**gen.interface_args, "logprobs_key": "packed_logprobs"},
                                    output_keys=("packed_logprobs",))
    ifaces = build_interfaces([*spec.mfcs, recompute])
    assert ifaces["actor_inf"] is not ifaces["actor_train"] and ifaces["actor_inf"].logprobs_key == "packed_logprobs"
    assert ifaces["actor_gen"] is ifaces["actor_train"]
