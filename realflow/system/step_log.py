"""The end of a step, for both runners: what gets logged, and whether to checkpoint.

`StepLogger` takes the `MFCRecord`s of a finished step and writes

- one console line through the logger its caller passes (the in-process runner's,
  or the master's: a line names the process that wrote it);
- one JSONL line per record to `<run dir>/stats.jsonl` (`run.log_jsonl`), the
  interface's statistics nested under "stats" so that none of their names shadows
  the runner's fields;
- TensorBoard scalars to `<run dir>/tensorboard` (`run.tensorboard`):
  `<mfc>/seconds`, `<mfc>/tokens_per_s` and `<mfc>/<stat>` per record, at the
  global step k (1-based: the k-th step, as in the log line and `checkpoints/step<k>`).
  A step is one TensorBoard event holding all its scalars (`add_scalar` per
  value costs ~65 us each, a few ms a step for PPO; one summary of 40 values ~0.2 ms).

`SaveTrigger` decides after each step whether to write `checkpoints/step<k>`: every
`run.save_freq_steps` steps, every `run.save_freq_epochs` epochs, every
`run.save_freq_secs` seconds (0 turns each off; any that fires saves). It is pure
apart from an injectable clock.

`StepEnd` strings these together at the end of each step for both runners.

Not here: writing checkpoints and evaluating (the runners: the in-process one does
both itself, the master asks the workers).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.writer import FileWriter

from realflow.api.errors import ConfigError
from realflow.api.experiment import RunConfig

JSONL_FILE = "stats.jsonl"
TENSORBOARD_DIR = "tensorboard"
RUNNER_SCALARS = ("seconds", "tokens_per_s")  # an interface statistic of these names goes to <mfc>/stats/<name>


@dataclass
class MFCRecord:
    """What one MFC call of one step did."""

    step: int  # 0-based
    mfc: str
    seconds: float
    n_seqs: int
    n_tokens: int
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunRecords:
    """What a finished run returns: its records and where its files are."""

    records: list[MFCRecord]
    run_dir: Path

    def stats(self, mfc: str, key: str) -> list[float]:
        """The statistic `key` of `mfc`, step after step."""
        return [r.stats[key] for r in self.records if r.mfc == mfc and key in r.stats]


class StepLogger:
    """Console line, JSONL and TensorBoard scalars of each finished step; close() when done."""

    def __init__(
        self, run_dir: Path, n_steps: int | None, log: logging.Logger, *, jsonl: bool = True, tensorboard: bool = True,
        console_every: int = 1,
    ) -> None:
        self.n_steps = n_steps
        self.log = log
        self.console_every = console_every
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl: IO[str] | None = (run_dir / JSONL_FILE).open("a") if jsonl else None
        # flush_secs bounds what a crashed run loses; close() flushes the rest.
        self._tb = FileWriter(str(run_dir / TENSORBOARD_DIR), flush_secs=10) if tensorboard else None

    @classmethod
    def for_run(cls, run: RunConfig, run_dir: Path, log: logging.Logger) -> StepLogger:
        return cls(run_dir, run.n_steps, log, jsonl=run.log_jsonl, tensorboard=run.tensorboard,
                   console_every=run.log_freq_steps)

    def log_step(self, step: int, epoch: int, records: list[MFCRecord], console: bool | None = None) -> bool:
        """Everything about 0-based `step` (in 0-based `epoch`); the console line
        every `console_every` steps, the first and the last (`console` forces it
        either way). Whether the line was shown."""
        if console is None:
            console = (step + 1) % self.console_every == 0 or step == 0 or step + 1 == self.n_steps
        if console:
            self.show(step, epoch, records)
        if self._jsonl is not None:
            for r in records:
                self._jsonl.write(json.dumps({"step": r.step, "mfc": r.mfc, "seconds": r.seconds,
                                              "n_seqs": r.n_seqs, "n_tokens": r.n_tokens, "stats": r.stats}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            values = []
            for r in records:
                scalars = {f"{r.mfc}/seconds": r.seconds, f"{r.mfc}/tokens_per_s": r.tokens_per_s}
                for k, v in r.stats.items():
                    scalars[f"{r.mfc}/stats/{k}" if k in RUNNER_SCALARS else f"{r.mfc}/{k}"] = v
                values.extend(Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items())
            self._tb.add_summary(Summary(value=values), step + 1)
        return console

    def show(self, step: int, epoch: int, records: list[MFCRecord]) -> None:
        """The console line of a step."""
        self.log.info(self.line(step, epoch, records))

    def line(self, step: int, epoch: int, records: list[MFCRecord]) -> str:
        """'step 3/10 epoch 1 | train 52ms 8123tok/s loss=2.31 | ...'."""
        parts = [f"step {step + 1}/{self.n_steps} epoch {epoch + 1}"]
        for r in records:
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(r.stats.items()))
            parts.append(f"{r.mfc} {r.seconds * 1e3:.0f}ms {r.tokens_per_s:.0f}tok/s {shown}".rstrip())
        return " | ".join(parts)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> StepLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SaveTrigger:
    """Whether to checkpoint after a step; see the module docstring.

    An epoch is `steps_per_epoch` steps (`DataCursor.batches_per_epoch`: the cursor
    drops incomplete batches, so every epoch has exactly that many), so epoch e ends
    after step (e + 1) * steps_per_epoch, counted from the start of the data, resumed
    runs included. Seconds count from the trigger's creation or the last `saved()`
    (after the save, so that the time spent saving is not counted as work).
    """

    every_steps: int = 0
    every_epochs: int = 0
    every_secs: float = 0.0
    steps_per_epoch: int = 1
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        for name in ("every_steps", "every_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"save trigger: {name} must be an int >= 0 (0: off), got {value!r}")
        if not (isinstance(self.every_secs, (int, float)) and math.isfinite(self.every_secs) and self.every_secs >= 0):
            raise ConfigError(f"save trigger: every_secs must be a finite number >= 0 (0: off), got {self.every_secs!r}")
        if isinstance(self.steps_per_epoch, bool) or not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1:
            raise ConfigError(f"save trigger: steps_per_epoch must be an int >= 1, got {self.steps_per_epoch!r}")
        self._since = self.clock()

    @classmethod
    def for_run(cls, run: RunConfig, steps_per_epoch: int, clock: Callable[[], float] = time.monotonic) -> SaveTrigger:
        return cls(run.save_freq_steps, run.save_freq_epochs, run.save_freq_secs, steps_per_epoch, clock)

    @classmethod
    def for_eval(cls, run: RunConfig, steps_per_epoch: int, clock: Callable[[], float] = time.monotonic) -> SaveTrigger:
        """The same rule with the run's evaluation frequencies (`run.eval_freq_*`)."""
        return cls(run.eval_freq_steps, run.eval_freq_epochs, run.eval_freq_secs, steps_per_epoch, clock)

    def should_save(self, steps_done: int) -> bool:
        """After the `steps_done`-th step (1-based), is a checkpoint due?"""
        if self.every_steps and steps_done % self.every_steps == 0:
            return True
        if self.every_epochs and steps_done % (self.every_epochs * self.steps_per_epoch) == 0:
            return True
        return bool(self.every_secs) and self.clock() - self._since >= self.every_secs

    def saved(self) -> None:
        """A checkpoint was just written: the seconds count restarts."""
        self._since = self.clock()


# Called after each step with its records; returning True ends the run after the
# steps already begun (early stopping); None or False goes on.
OnStep = Callable[[int, list[MFCRecord]], "bool | None"] | None


class StepEnd:
    """The end of a step, as both runners do it: the step's records are kept and
    logged; then, when due, an evaluation (`evaluate(step)` returns its records,
    kept and logged too) and a checkpoint (`save(<run dir>/checkpoints/step<k>)`);
    then `on_step(step, records)`; when that returns True, `stop()` (the runner's
    scheduler begins no new step) and the step's console line, if the log frequency
    had skipped it. Use as a context manager (closes the logger)."""

    def __init__(
        self,
        run: RunConfig,
        run_dir: Path,
        log: logging.Logger,
        steps_per_epoch: int,
        keep: list[MFCRecord],
        save: Callable[[Path], None],
        stop: Callable[[], None],
        evaluate: Callable[[int], list[MFCRecord]] | None = None,
        on_step: OnStep = None,
    ) -> None:
        self.run_dir, self.keep, self.save, self.evaluate, self.on_step = run_dir, keep, save, evaluate, on_step
        self.stop = stop
        self.log = StepLogger.for_run(run, run_dir, log)
        self.save_trigger = SaveTrigger.for_run(run, steps_per_epoch)
        self.eval_trigger = SaveTrigger.for_eval(run, steps_per_epoch)

    def __call__(self, step: int, epoch: int, records: list[MFCRecord]) -> None:
        self.keep.extend(records)
        shown = self.log.log_step(step, epoch, records)
        if self.evaluate is not None and self.eval_trigger.should_save(step + 1):
            evals = self.evaluate(step)
            self.keep.extend(evals)
            self.log.log_step(step, epoch, evals, console=True)
            self.eval_trigger.saved()
        if self.save_trigger.should_save(step + 1):
            self.save(self.run_dir / "checkpoints" / f"step{step + 1}")
            self.save_trigger.saved()
        if self.on_step is not None and self.on_step(step, records) is True:
            self.stop()
            if not shown:  # an early end: its last step is shown like a planned one's
                self.log.show(step, epoch, records)

    def __enter__(self) -> StepEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.close()
