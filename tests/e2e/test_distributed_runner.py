"""The distributed runtime end to end: a master (this process) plus worker processes.

Same seed, CPU, one thread: the statistics and final weights equal the in-process
runner's. Faults: a worker killed with SIGKILL mid-run and an interface that raises
each end the run with an error naming the worker, and leave no child process.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from e2e_helpers import hf_weights, live_children

from realflow.apps.experiments import load_experiment
from realflow.system import names
from realflow.system.inprocess import run_inprocess
from realflow.system.launcher import LaunchConfig, LaunchError, run_local
from realflow.system.master import MasterTimeouts
from realflow.system.name_resolve import FileNameResolver
from realflow.system.request_client import HeartbeatPolicy
from realflow.system.stream import ServerAddress
from realflow.system.user_files import import_user_file

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
DATA = ["dataset.arithmetic_n_train=64", "dataset.arithmetic_difficulty=easy"]
SFT = ["n_seqs=8", *("model." + t for t in TINY), *DATA]
PPO = ["n_seqs=8", "generation.max_new_tokens=6", *("actor." + t for t in TINY), *DATA]
PPO_SPLIT = {"actor": 0, "ref": 0, "critic": 1, "reward": 1}  # actor and critic on different workers
FAST_HB = HeartbeatPolicy(interval_s=0.5, timeout_s=3.0)


_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting, so that reductions match bit for bit
    _BEFORE.clear()
    _BEFORE.update(live_children())  # children that other tests left (e.g. a resource tracker) do not count
    yield
    torch.set_num_threads(old)


def _children() -> list[int]:
    """Live children of this process started since the test began."""
    return [pid for pid in live_children() if pid not in _BEFORE]


def _compare(name: str, overrides: list[str], tmp_path: Path, allocation: dict[str, int] | None) -> None:
    common = [*overrides, "run.n_steps=2", f"run.fileroot={tmp_path}"]
    cfg, spec = load_experiment(name, [*common, "run.trial_name=dist"])
    dist = run_local(spec, cfg.run, LaunchConfig(n_workers=2, allocation=allocation, heartbeat=FAST_HB))
    cfg, spec = load_experiment(name, [*common, "run.trial_name=inproc"])
    ref = run_inprocess(spec, cfg.run)

    by_task = {(r.step, r.mfc): r for r in ref.records}
    assert sorted(by_task) == sorted((r.step, r.mfc) for r in dist.records)
    for r in dist.records:
        want = by_task[(r.step, r.mfc)]
        assert (r.n_seqs, r.n_tokens) == (want.n_seqs, want.n_tokens), r.mfc
        assert r.stats.keys() == want.stats.keys(), r.mfc
        for k, v in r.stats.items():
            assert v == pytest.approx(want.stats[k], abs=1e-6, rel=0), (r.step, r.mfc, k)
    trained = sorted(p.name for p in (ref.run_dir / "checkpoints" / "final").iterdir())
    assert trained
    for role in trained:
        a = hf_weights(dist.run_dir / "checkpoints" / "final" / role)
        b = hf_weights(ref.run_dir / "checkpoints" / "final" / role)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (role, k)
    assert (dist.run_dir / "stats.jsonl").read_text().count("\n") == len(dist.records)
    assert sorted(p.name for p in (dist.run_dir / "logs").iterdir()) == ["w0.log", "w1.log"]
    assert not _children()


@pytest.mark.timeout(120)
def test_sft_on_two_workers_matches_inprocess(tmp_path):
    _compare("sft", SFT, tmp_path, allocation=None)


@pytest.mark.timeout(120)
def test_ppo_actor_and_critic_on_different_workers_match_inprocess(tmp_path):
    _compare("ppo", PPO, tmp_path, allocation=PPO_SPLIT)


@pytest.mark.timeout(120)
def test_worker_killed_mid_run_is_named_and_everything_stops(tmp_path):
    cfg, spec = load_experiment("ppo", [*PPO, "run.n_steps=50", f"run.fileroot={tmp_path}"])
    resolver = FileNameResolver(tmp_path / cfg.run.experiment_name / cfg.run.trial_name / "name_resolve")
    killed = {}

    def kill_critic_worker(step, records):
        if step == 0:
            key = names.worker(cfg.run.experiment_name, cfg.run.trial_name, 1)
            pid = ServerAddress.from_json(resolver.get(key)).pid
            os.kill(pid, signal.SIGKILL)
            killed["at"] = time.monotonic()

    with pytest.raises(LaunchError) as err:
        run_local(spec, cfg.run, LaunchConfig(n_workers=2, allocation=PPO_SPLIT, heartbeat=FAST_HB),
                  on_step=kill_critic_worker)
    assert time.monotonic() - killed["at"] < 10
    text = str(err.value)
    # The first line names the dead worker; what the master saw first (its heartbeats
    # going unanswered, or w0's transfer to it failing) follows.
    assert "worker 'w1'" in text.splitlines()[0] and "died: killed by SIGKILL" in text.splitlines()[0], text
    assert "exited with code -9" in text, text
    assert not _children()


RAISING = '''
from realflow.api.interface import ModelInterface, register_interface

@register_interface("raising_for_test", overwrite=True)
class Raising(ModelInterface):
    def train_step(self, model, data, mb_spec):
        raise ValueError("boom inside the interface")
'''


def _sft_with_plugin(tmp_path: Path, name: str, source: str, interface: str):
    """SFT (2 steps) whose train MFC runs `interface`, registered by the user file `name`."""
    plugin = tmp_path / name
    plugin.write_text(textwrap.dedent(source))
    import_user_file(str(plugin))
    cfg, spec = load_experiment("sft", [*SFT, "run.n_steps=2", f"run.fileroot={tmp_path}"])
    object.__setattr__(spec.mfcs[0], "interface_type", interface)
    object.__setattr__(spec.mfcs[0], "interface_args", {})
    return cfg, spec, plugin


@pytest.mark.timeout(120)
def test_interface_that_raises_reports_the_remote_traceback(tmp_path):
    cfg, spec, plugin = _sft_with_plugin(tmp_path, "raising_plugin.py", RAISING, "raising_for_test")
    with pytest.raises(LaunchError) as err:
        run_local(spec, cfg.run, LaunchConfig(n_workers=2, heartbeat=FAST_HB, user_files=(str(plugin),)))
    text = str(err.value)
    assert "worker 'w0' failed RUN_MFC" in text, text
    assert "ValueError: boom inside the interface" in text and "traceback in worker 'w0'" in text, text
    assert "raising_plugin.py" in text, text  # the remote frame
    assert not _children()


# Interface state that resume must carry: an adaptive KL coefficient (a short horizon
# so that it moves visibly) and the critic's value normaliser.
PPO_STATEFUL = [*PPO, "shaping.adaptive_kl_target=0.01", "shaping.adaptive_kl_horizon=50",
                "critic_args.value_norm=true", "critic_args.value_norm_beta=0.9"]


@pytest.mark.timeout(180)
def test_stop_and_resume_gives_the_same_weights_as_one_run(tmp_path):
    """4 steps in one go == 2 steps, stop, resume, 2 steps (PPO: optimizer, LR, sampler, cursor,
    and interface state: adaptive KL controller, value normaliser), bit for bit."""
    common = [*PPO_STATEFUL, "run.n_steps=4", f"run.fileroot={tmp_path}"]
    cfg, spec = load_experiment("ppo", [*common, "run.trial_name=once"])
    once = run_inprocess(spec, cfg.run)  # equal to a distributed run (tests above)

    cfg, spec = load_experiment("ppo", [*common, "run.trial_name=halves"])
    launch = LaunchConfig(n_workers=2, allocation=PPO_SPLIT, heartbeat=FAST_HB)
    first = run_local(spec, cfg.run, dataclasses.replace(launch, stop_after_steps=2))
    assert sorted({r.step for r in first.records}) == [0, 1]
    ckpt = first.run_dir / "checkpoints" / "step2"
    assert (ckpt / "master_state.json").is_file() and not (first.run_dir / "checkpoints" / "final").exists()
    second = run_local(spec, cfg.run, dataclasses.replace(launch, resume_from=ckpt))
    assert sorted({r.step for r in second.records}) == [2, 3]

    kl_coefs = [r.stats["kl_coef"] for r in once.records if r.mfc == "actor_train"]
    assert len(set(kl_coefs)) == 4, kl_coefs  # the controller moved every step: its state matters
    want = {(r.step, r.mfc): r.stats for r in once.records}
    for r in second.records:
        assert r.stats == want[(r.step, r.mfc)], (r.step, r.mfc)
    for role in ("actor", "critic"):
        a = hf_weights(second.run_dir / "checkpoints" / "final" / role)
        b = hf_weights(once.run_dir / "checkpoints" / "final" / role)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role
    assert not _children()


HANGING = '''
import time
from realflow.api.interface import ModelInterface, register_interface

@register_interface("hanging_for_test", overwrite=True)
class Hanging(ModelInterface):
    def train_step(self, model, data, mb_spec):
        time.sleep(600)
'''


@pytest.mark.timeout(120)
def test_hung_worker_is_named_at_the_request_deadline(tmp_path):
    cfg, spec, plugin = _sft_with_plugin(tmp_path, "hanging_plugin.py", HANGING, "hanging_for_test")
    launch = LaunchConfig(n_workers=1, heartbeat=FAST_HB, user_files=(str(plugin),),
                          timeouts=MasterTimeouts(mfc_s=3.0), grace_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as err:
        run_local(spec, cfg.run, launch)
    text = str(err.value)
    assert "DeadlineError" in text and "worker 'w0'" in text and "RUN_MFC" in text, text
    assert "busy with RUN_MFC" in text, text  # alive (heartbeats answered) but stuck in the request
    assert time.monotonic() - t0 < 60
    assert not _children()


@pytest.mark.timeout(120)
def test_sigterm_to_the_launcher_stops_and_reaps_every_worker(tmp_path):
    """`realflow run ... --workers 2` in a subprocess; SIGTERM mid-run ends it with exit 2, no workers left.

    (SIGINT takes the same path: Python raises KeyboardInterrupt, which the launcher's
    SIGTERM handler imitates; checked by hand, 40 s a run is too slow to test both.)"""
    cmd = [sys.executable, "-m", "realflow.apps.cli", "run", "sft", *SFT, "run.n_steps=100000",
           f"run.fileroot={tmp_path}", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    run_dir = tmp_path / "realflow" / "trial0"
    try:
        deadline = time.monotonic() + 90
        stats = run_dir / "stats.jsonl"
        while not (stats.is_file() and stats.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        entries = FileNameResolver(run_dir / "name_resolve").get_subtree(names.workers("realflow", "trial0"))
        pids = [ServerAddress.from_json(v).pid for v in entries.values()]
        assert len(pids) == 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    assert "KeyboardInterrupt" in err, err
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" == (Path(f"/proc/{pid}/stat").read_text()
                                                             .rsplit(")", 1)[1].split()[0]), pid
