"""Data-parallel MFCs: one role on several workers, each running its shard of the batch.

SFT with its one model on two workers must take the in-process runner's steps (the
gradient of the union of the shards, up to float summation order); PPO with the
actor and the critic each on two workers must keep each role's replicas identical
(their gradients are summed before every optimizer step).
"""
from __future__ import annotations


import pytest
import torch
from e2e_helpers import hf_weights

from realflow.apps.experiments import load_experiment
from realflow.system.inprocess import run_inprocess
from realflow.system.launcher import LaunchConfig, run_local
from realflow.system.master import WORKER_STATE
from realflow.system.request_client import HeartbeatPolicy

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
DATA = ["dataset.arithmetic_n_train=64", "dataset.arithmetic_difficulty=easy"]
FAST_HB = HeartbeatPolicy(interval_s=0.5, timeout_s=3.0)


@pytest.mark.timeout(180)
def test_sft_data_parallel_over_two_workers_takes_the_single_process_steps(tmp_path):
    common = ["n_seqs=8", *("model." + t for t in TINY), *DATA, "run.n_steps=3", f"run.fileroot={tmp_path}"]
    cfg, spec = load_experiment("sft", [*common, "run.trial_name=dp"])
    (role,) = spec.models
    dp = run_local(spec, cfg.run, LaunchConfig(n_workers=2, allocation={role: [0, 1]}, heartbeat=FAST_HB))
    cfg, spec = load_experiment("sft", [*common, "run.trial_name=inproc"])
    ref = run_inprocess(spec, cfg.run)

    want = {(r.step, r.mfc): r for r in ref.records}
    assert sorted(want) == sorted((r.step, r.mfc) for r in dp.records)
    for r in dp.records:
        w = want[(r.step, r.mfc)]
        assert (r.n_seqs, r.n_tokens) == (w.n_seqs, w.n_tokens)
        assert r.stats.keys() == w.stats.keys()
        for k, v in r.stats.items():
            assert v == pytest.approx(w.stats[k], rel=1e-4, abs=1e-6), (r.step, k)
    a = hf_weights(dp.run_dir / "checkpoints" / "final" / role)
    b = hf_weights(ref.run_dir / "checkpoints" / "final" / role)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    # The weights did move: the comparison above is not between two initial models.
    assert ref.stats(spec.mfcs[0].name, "loss")[0] != ref.stats(spec.mfcs[0].name, "loss")[-1]


@pytest.mark.timeout(240)
def test_ppo_with_actor_and_critic_data_parallel_keeps_replicas_identical(tmp_path):
    # Stateful interfaces too: their batch statistics (KL, returns) must be the whole batch's on every replica.
    overrides = ["n_seqs=8", "generation.max_new_tokens=6", *("actor." + t for t in TINY), *DATA,
                 "shaping.adaptive_kl_target=0.01", "shaping.adaptive_kl_horizon=50",
                 "critic_args.value_norm=true", "critic_args.value_norm_beta=0.9",
                 "run.n_steps=2", f"run.fileroot={tmp_path}"]
    cfg, spec = load_experiment("ppo", overrides)
    allocation = {"actor": [0, 1], "ref": 0, "critic": [0, 1], "reward": 1}
    res = run_local(spec, cfg.run, LaunchConfig(n_workers=2, allocation=allocation, heartbeat=FAST_HB))
    steps = sorted({r.step for r in res.records})
    assert steps == [0, 1]
    by_mfc = {r.mfc: r for r in res.records if r.step == 1}
    assert all(r.n_seqs == 8 for r in by_mfc.values())
    for r in by_mfc.values():
        assert all(torch.isfinite(torch.tensor(v)) for v in r.stats.values()), r
    state = res.run_dir / "checkpoints" / "final" / WORKER_STATE
    s0, s1 = (torch.load(state / f"w{i}.pt", weights_only=False) for i in (0, 1))
    w0, w1 = s0["roles"], s1["roles"]
    for name in ("actor_train", "critic_train"):
        assert s0["interfaces"][name] == s1["interfaces"][name], name  # KL coefficient, value normaliser
    initial = cfg.shaping["kl_ctl"]
    assert s0["interfaces"]["actor_train"]["kl_controller"]["value"] != initial  # the controller did adapt
    assert s0["interfaces"]["critic_train"]["value_normalizer"]["debias"] > 0
    for role in ("actor", "critic"):
        m0, m1 = w0[role]["module"], w1[role]["module"]
        assert m0.keys() == m1.keys()
        for k in m0:
            assert torch.equal(m0[k], m1[k]), (role, k)
        assert w0[role]["engine"]["version"] == w1[role]["engine"]["version"] == 2
    trains = [m.name for m in spec.mfcs if m.kind.value == "train_step"]
    assert len(trains) == 2 and all(g > 0 for name in trains for g in res.stats(name, "grad_norm"))
