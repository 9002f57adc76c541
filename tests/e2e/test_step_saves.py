"""Save frequency, TensorBoard and console logs of whole runs (tiny SFT, 4 steps per epoch).

The in-process runner and the master both save `checkpoints/step<k>` at epoch ends
with `run.save_freq_epochs`; the master's step lines come from its own logger; the
launcher copies every worker line to the console, the last ones included.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from realflow.apps.experiments import load_experiment, run_experiment
from realflow.system.inprocess import run_inprocess
from realflow.system.launcher import LaunchConfig, run_local
from realflow.system.request_client import HeartbeatPolicy

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
# 64 problems in batches of 16: 4 steps per epoch
SFT = ["n_seqs=16", *("model." + t for t in TINY), "dataset.arithmetic_n_train=64", "dataset.arithmetic_difficulty=easy"]


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _tb_steps(run_dir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.timeout(120)
def test_inprocess_saves_at_every_epoch_end(tmp_path: Path, caplog) -> None:
    cfg, spec = load_experiment("sft", [*SFT, "run.n_steps=9", "run.save_freq_epochs=1", f"run.fileroot={tmp_path}"])
    with caplog.at_level(logging.INFO, logger="realflow.system.inprocess"):
        result = run_inprocess(spec, cfg.run)
    assert _checkpoints(result.run_dir) == ["final", "step4", "step8"]
    assert (result.run_dir / "checkpoints" / "step4" / "default" / "config.json").is_file()
    assert _tb_steps(result.run_dir, "trainDefault/loss") == list(range(1, 10))
    lines = [r.getMessage() for r in caplog.records if r.name == "realflow.system.inprocess"]
    assert [x.split(" |")[0] for x in lines if x.startswith("step ")][3:5] == ["step 4/9 epoch 1", "step 5/9 epoch 2"]


@pytest.mark.timeout(180)
def test_distributed_saves_logs_and_merges_worker_lines(tmp_path: Path, caplog, capsys) -> None:
    cfg, spec = load_experiment("sft", [*SFT, "run.n_steps=5", "run.save_freq_epochs=1", f"run.fileroot={tmp_path}"])
    launch = LaunchConfig(n_workers=1, heartbeat=HeartbeatPolicy(interval_s=0.5, timeout_s=3.0))
    with caplog.at_level(logging.INFO, logger="realflow.system.master"):
        result = run_local(spec, cfg.run, launch)
    assert _checkpoints(result.run_dir) == ["final", "step4"]
    assert (result.run_dir / "checkpoints" / "step4" / "master_state.json").is_file()
    assert _tb_steps(result.run_dir, "trainDefault/seconds") == [1, 2, 3, 4, 5]
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(steps) == 5 and all(r.name == "realflow.system.master"
                                   for r in caplog.records if r.getMessage().startswith("step "))

    err = capsys.readouterr().err.splitlines()
    merged = [x for x in err if x.startswith("[w0] ")]
    log_file = (result.run_dir / "logs" / "w0.log").read_text().splitlines()
    assert merged == [f"[w0] {x}" for x in log_file]  # every line, once, in order
    assert any("worker 'w0' exits" in x for x in merged)  # written after the last request: the drain got it


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 1])
def test_on_step_returning_true_ends_the_run_after_that_step(tmp_path: Path, workers: int, caplog) -> None:
    """Early stopping: both runners finish the step, write the final checkpoint and
    start nothing more; the last step's console line is shown though the log
    frequency would skip it."""
    seen: list[int] = []

    def stop_after_third(step, records):
        seen.append(step)
        return step == 2

    with caplog.at_level(logging.INFO):
        result = run_experiment("sft", [*SFT, "run.n_steps=9", "run.log_freq_steps=5", f"run.fileroot={tmp_path}"],
                                workers=workers, on_step=stop_after_third)
    assert seen == [0, 1, 2]
    shown = [r.getMessage().split(" |")[0] for r in caplog.records if r.getMessage().startswith("step ")]
    assert shown == ["step 1/9 epoch 1", "step 3/9 epoch 1"]
    assert sorted({r.step for r in result.records}) == [0, 1, 2]
    assert _checkpoints(result.run_dir) == ["final"]
    assert _tb_steps(result.run_dir, "trainDefault/seconds") == [1, 2, 3]
