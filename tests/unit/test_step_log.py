"""The end of a step: console line, stats JSONL, TensorBoard scalars, and when to save."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from realflow.api.errors import ConfigError
from realflow.api.experiment import RunConfig
from realflow.system.step_log import MFCRecord, SaveTrigger, StepLogger

STEP0 = [MFCRecord(0, "gen", 0.5, 4, 100, {"reward": 1.5}),
         MFCRecord(0, "train", 0.25, 4, 100, {"loss": 2.0, "n_tokens": 7.0, "seconds": 9.0})]
STEP1 = [MFCRecord(1, "gen", 2.0, 4, 100, {"reward": 2.5}), MFCRecord(1, "train", 0.5, 4, 100, {"loss": 1.0})]


def _log_two_steps(run_dir: Path, log: logging.Logger, **kw) -> None:
    with StepLogger(run_dir, 10, log, **kw) as steps:
        steps.log_step(0, 0, STEP0)
        steps.log_step(1, 0, STEP1)


def test_console_line_goes_to_the_callers_logger(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="realflow.system.master"):
        _log_two_steps(tmp_path, logging.getLogger("realflow.system.master"), jsonl=False, tensorboard=False)
    assert [r.name for r in caplog.records] == ["realflow.system.master"] * 2
    assert caplog.records[0].getMessage() == (
        "step 1/10 epoch 1 | gen 500ms 200tok/s reward=1.5 | train 250ms 400tok/s loss=2 n_tokens=7 seconds=9"
    )
    assert not (tmp_path / "stats.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_console_every_n_steps_keeps_the_first_last_and_forced_lines(tmp_path: Path, caplog) -> None:
    log = logging.getLogger("test.every")
    with caplog.at_level(logging.INFO, logger="test.every"), \
            StepLogger(tmp_path, 10, log, tensorboard=False, console_every=4) as steps:
        for step in range(10):
            steps.log_step(step, 0, [MFCRecord(step, "train", 0.1, 4, 100, {"loss": 1.0})])
        steps.log_step(5, 0, [MFCRecord(5, "train:eval", 0.1, 4, 100, {"loss": 1.0})], console=True)
    shown = [r.getMessage().split(" |")[0] for r in caplog.records]
    assert shown == ["step 1/10 epoch 1", "step 4/10 epoch 1", "step 8/10 epoch 1", "step 10/10 epoch 1",
                     "step 6/10 epoch 1"]
    assert len((tmp_path / "stats.jsonl").read_text().splitlines()) == 11  # every step, whatever is shown


def test_jsonl_has_one_line_per_record_with_interface_stats_nested(tmp_path: Path) -> None:
    _log_two_steps(tmp_path, logging.getLogger("test"), tensorboard=False)
    _log_two_steps(tmp_path, logging.getLogger("test"), tensorboard=False)  # a resumed run appends
    lines = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    assert lines[1] == {"step": 0, "mfc": "train", "seconds": 0.25, "n_seqs": 4, "n_tokens": 100,
                        "stats": {"loss": 2.0, "n_tokens": 7.0, "seconds": 9.0}}
    assert [(r["step"], r["mfc"]) for r in lines[:4]] == [(0, "gen"), (0, "train"), (1, "gen"), (1, "train")]


def test_tensorboard_scalars_per_mfc_at_the_global_step(tmp_path: Path) -> None:
    _log_two_steps(tmp_path, logging.getLogger("test"), jsonl=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted([
        "gen/seconds", "gen/tokens_per_s", "gen/reward",
        "train/seconds", "train/tokens_per_s", "train/loss", "train/n_tokens",
        "train/stats/seconds",  # an interface statistic named like a runner scalar does not mix with it
    ])

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert series("gen/seconds") == [(1, 0.5), (2, 2.0)]
    assert series("gen/tokens_per_s") == [(1, 200.0), (2, 50.0)]
    assert series("gen/reward") == [(1, 1.5), (2, 2.5)]
    assert series("train/loss") == [(1, 2.0), (2, 1.0)]
    assert series("train/seconds") == [(1, 0.25), (2, 0.5)]
    assert series("train/stats/seconds") == [(1, 9.0)]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _saves(trigger: SaveTrigger, n_steps: int, clock: Clock | None = None, step_s: float = 0.0) -> list[int]:
    out = []
    for k in range(1, n_steps + 1):
        if clock is not None:
            clock.t += step_s
        if trigger.should_save(k):
            out.append(k)
            trigger.saved()
    return out


@pytest.mark.parametrize("kw,expected", [
    ({}, []),
    ({"every_steps": 3}, [3, 6, 9]),
    ({"every_epochs": 1, "steps_per_epoch": 4}, [4, 8]),
    ({"every_epochs": 2, "steps_per_epoch": 3}, [6]),
    ({"every_steps": 2, "every_epochs": 1, "steps_per_epoch": 3}, [2, 3, 4, 6, 8, 9, 10]),
])
def test_save_by_steps_and_epochs(kw, expected) -> None:
    assert _saves(SaveTrigger(**kw), 10) == expected


def test_save_by_seconds_counts_from_the_last_save() -> None:
    clock = Clock()
    trigger = SaveTrigger(every_secs=10.0, clock=clock)
    assert _saves(trigger, 10, clock, step_s=4.0) == [3, 6, 9]  # 12 s, then 12 s after each save

    clock = Clock()
    trigger = SaveTrigger(every_secs=10.0, clock=clock)
    clock.t += 9.9
    assert not trigger.should_save(1)
    clock.t += 0.1
    assert trigger.should_save(2) and trigger.should_save(2)  # a decision changes nothing by itself
    clock.t += 30.0  # the save took 30 s: not counted
    trigger.saved()
    clock.t += 5.0
    assert not trigger.should_save(3)


def test_save_trigger_from_run_config() -> None:
    run = RunConfig(save_freq_steps=5, save_freq_epochs=2, save_freq_secs=60)
    trigger = SaveTrigger.for_run(run, steps_per_epoch=7)
    assert (trigger.every_steps, trigger.every_epochs, trigger.every_secs, trigger.steps_per_epoch) == (5, 2, 60, 7)
    run = RunConfig(eval_freq_steps=3, eval_freq_secs=1.5)
    trigger = SaveTrigger.for_eval(run, steps_per_epoch=4)
    assert (trigger.every_steps, trigger.every_epochs, trigger.every_secs) == (3, 0, 1.5) and run.evaluates
    assert not RunConfig().evaluates


@pytest.mark.parametrize("field,value,words", [
    ("save_freq_steps", -1, "run.save_freq_steps must be an int >= 0 (0: off), got -1"),
    ("save_freq_epochs", -2, "run.save_freq_epochs must be an int >= 0 (0: off), got -2"),
    ("save_freq_epochs", 1.5, "run.save_freq_epochs must be an int >= 0 (0: off), got 1.5"),
    ("save_freq_secs", -0.5, "run.save_freq_secs must be a finite number >= 0 (0: off), got -0.5"),
    ("save_freq_secs", float("inf"), "run.save_freq_secs must be a finite number >= 0 (0: off), got inf"),
    ("eval_freq_epochs", -1, "run.eval_freq_epochs must be an int >= 0 (0: off), got -1"),
    ("eval_freq_secs", -1.0, "run.eval_freq_secs must be a finite number >= 0 (0: off), got -1.0"),
    ("log_freq_steps", 0, "run.log_freq_steps must be an int >= 1, got 0"),
])
def test_bad_save_frequency_names_the_field(field, value, words) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(**{field: value})
    assert str(err.value) == words


@pytest.mark.parametrize("kw,words", [
    ({"every_steps": -1}, "every_steps must be an int >= 0"),
    ({"every_secs": float("nan")}, "every_secs must be a finite number >= 0"),
    ({"steps_per_epoch": 0}, "steps_per_epoch must be an int >= 1, got 0"),
])
def test_bad_save_trigger_is_a_config_error(kw, words) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        SaveTrigger(**kw)
    assert words in str(err.value)
