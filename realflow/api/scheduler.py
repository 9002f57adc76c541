"""The scheduler core: which MFC of which step may run next. No I/O.

A `Scheduler` is a state machine over an algorithm graph repeated for a number of
steps, in the spirit of `graphlib.TopologicalSorter`: the caller asks
`get_ready()`, calls `start(step, mfc)` for what it dispatches and `done(step, mfc)`
when it finishes. The in-process runner and the distributed master drive the same
class; neither the scheduler nor this module knows about data, models or sockets.

A task (step, mfc) moves BLOCKED -> READY -> RUNNING -> DONE. It is READY when its
step is open and every `realflow.api.dfg.dependencies` entry is done:
- data: the producers of its input keys at the same step;
- version: on a trained role R, step t's generate/inference run before R's
  train_step of step t, and step t+1's run after it;
- order: the same MFC at the previous step.
Steps ``completed_steps .. completed_steps + max_steps_in_flight - 1`` are open, so
with the default of 1 a step starts only when the previous one has finished; with
more, step t+1's calls start as soon as the rules above allow (pipelining).

`state_dict()` / `load_state_dict()` checkpoint the progress (finished steps and
finished tasks of unfinished steps); tasks running at save time are READY again
after a load.
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple

import networkx as nx

from realflow.api.dfg import dependencies, topological_order
from realflow.api.errors import GraphError, RealflowError

STATE_FORMAT = 1


class SchedulerError(RealflowError, ValueError):
    """The scheduler was driven out of order (e.g. done() of a task never started)."""


class TaskState(enum.Enum):
    BLOCKED = "blocked"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"


class Task(NamedTuple):
    step: int
    mfc: str


class Scheduler:
    """Steps an algorithm graph `n_steps` times (forever when None).

    >>> sched = Scheduler(graph, n_steps=2)           # doctest: +SKIP
    >>> while sched.is_active():                      # doctest: +SKIP
    ...     for task in sched.get_ready():
    ...         sched.start(*task); run(task); sched.done(*task)
    """

    def __init__(self, graph: nx.DiGraph, n_steps: int | None = None, *, max_steps_in_flight: int = 1) -> None:
        if n_steps is not None and (isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0):
            raise SchedulerError(f"n_steps must be an int >= 0 or None, got {n_steps!r}")
        if isinstance(max_steps_in_flight, bool) or not isinstance(max_steps_in_flight, int) \
                or max_steps_in_flight < 1:
            raise SchedulerError(f"max_steps_in_flight must be an int >= 1, got {max_steps_in_flight!r}")
        self._order = topological_order(graph)
        self._rank = {name: i for i, name in enumerate(self._order)}
        self._deps = {name: tuple((d.before, d.lag) for d in ds) for name, ds in dependencies(graph).items()}
        self._n_steps = n_steps
        self._window = max_steps_in_flight
        self._completed = 0  # every step below this is finished (and forgotten)
        self._running: dict[int, set[str]] = {}
        self._done: dict[int, set[str]] = {}

    # ------------------------------------------------------------------ queries

    @property
    def n_steps(self) -> int | None:
        return self._n_steps

    @property
    def max_steps_in_flight(self) -> int:
        return self._window

    @property
    def completed_steps(self) -> int:
        """How many steps have finished; also the index of the first unfinished step."""
        return self._completed

    @property
    def mfcs(self) -> list[str]:
        """MFC names in the order `get_ready` lists them within a step."""
        return list(self._order)

    def is_active(self) -> bool:
        """True while some step remains (always, when n_steps is None)."""
        return self._n_steps is None or self._completed < self._n_steps

    def open_steps(self) -> range:
        """Steps whose tasks may currently be READY."""
        end = self._completed + self._window
        if self._n_steps is not None:
            end = min(end, self._n_steps)
        return range(self._completed, max(end, self._completed))

    def get_ready(self) -> list[Task]:
        """READY tasks (not yet started), by step then topological order.

        A query: it changes nothing, so calling it twice lists the same tasks until
        they are started.
        """
        ready = []
        for step in self.open_steps():
            running = self._running.get(step, ())
            done = self._done.get(step, ())
            for name in self._order:
                if name not in running and name not in done and not self._unmet(step, name):
                    ready.append(Task(step, name))
        return ready

    def unmet(self, step: int, mfc: str) -> list[Task]:
        """The tasks (data and parameter-version dependencies) `mfc` of `step` still
        waits for; empty once it is READY, RUNNING or DONE. A query."""
        self._check(step, mfc)
        return [] if self.state(step, mfc) is not TaskState.BLOCKED else self._unmet(step, mfc)

    def running(self) -> list[Task]:
        """RUNNING tasks, by step then topological order."""
        return [Task(s, n) for s in sorted(self._running) for n in self._order if n in self._running[s]]

    def state(self, step: int, mfc: str) -> TaskState:
        self._check(step, mfc)
        if step < self._completed or mfc in self._done.get(step, ()):
            return TaskState.DONE
        if mfc in self._running.get(step, ()):
            return TaskState.RUNNING
        if step in self.open_steps() and not self._unmet(step, mfc):
            return TaskState.READY
        return TaskState.BLOCKED

    # ------------------------------------------------------------------ transitions

    def start(self, step: int, mfc: str) -> None:
        """Mark a READY task RUNNING."""
        state = self.state(step, mfc)
        if state is not TaskState.READY:
            why = {
                TaskState.RUNNING: "it is already running",
                TaskState.DONE: "it is already done",
                TaskState.BLOCKED: self._blocked_reason(step, mfc),
            }[state]
            raise SchedulerError(f"cannot start MFC '{mfc}' of step {step}: {why}")
        self._running.setdefault(step, set()).add(mfc)

    def done(self, step: int, mfc: str) -> bool:
        """Mark a RUNNING task DONE; True when this finished its step."""
        state = self.state(step, mfc)
        if state is not TaskState.RUNNING:
            why = "it is already done" if state is TaskState.DONE else f"it was never started (it is {state.value})"
            raise SchedulerError(f"cannot mark MFC '{mfc}' of step {step} done: {why}")
        running = self._running[step]
        running.remove(mfc)
        if not running:
            del self._running[step]
        self._done.setdefault(step, set()).add(mfc)
        # Order dependencies make steps finish in order, so at most one finishes here.
        return self._advance() > 0

    def stop_early(self) -> None:
        """Begin no new step: the run ends once the steps already begun (a task of
        theirs running or done) have finished; `n_steps` becomes their count."""
        begun = [step + 1 for step in (*self._running, *self._done)]
        self._n_steps = max([self._completed, *begun])

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Progress as plain JSON-serialisable data; running tasks are not recorded."""
        return {
            "format": STATE_FORMAT,
            "mfcs": list(self._order),
            "completed_steps": self._completed,
            "done": [[s, [n for n in self._order if n in self._done[s]]] for s in sorted(self._done)],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the progress with `state`; nothing is RUNNING afterwards."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SchedulerError(f"not a scheduler state (format {STATE_FORMAT}): {state!r:.200}")
        saved, ours = set(state["mfcs"]), set(self._order)
        if saved != ours:
            raise GraphError(f"scheduler state belongs to another graph: MFCs only in the state: "
                             f"{sorted(saved - ours) or '-'}; only in this graph: {sorted(ours - saved) or '-'}")
        completed = state["completed_steps"]
        if not isinstance(completed, int) or completed < 0 or (self._n_steps is not None and completed > self._n_steps):
            raise SchedulerError(f"scheduler state has completed_steps={completed!r}; "
                                 f"need an int in 0..n_steps={self._n_steps}")
        done: dict[int, set[str]] = {}
        for step, names in state["done"]:
            if not isinstance(step, int) or step < completed or step in done:
                raise SchedulerError(f"scheduler state lists step {step!r} (completed_steps={completed})")
            unknown = set(names) - saved
            if unknown:
                raise SchedulerError(f"scheduler state lists unknown MFCs {sorted(unknown)} at step {step}")
            done[step] = set(names)
        old = (self._completed, self._running, self._done)
        self._completed, self._running, self._done = completed, {}, done
        for step in sorted(done):
            for name in self._order:
                if name in done[step] and self._unmet(step, name):
                    self._completed, self._running, self._done = old
                    raise SchedulerError(f"scheduler state marks MFC '{name}' of step {step} done before its "
                                         f"dependencies: {self._unmet_text(step, name)}")
        self._advance()

    # ------------------------------------------------------------------ internals

    def _advance(self) -> int:
        """Forget fully done steps at the front; how many there were."""
        start = self._completed
        while len(self._done.get(self._completed, ())) == len(self._order):
            del self._done[self._completed]
            self._completed += 1
        return self._completed - start

    def _check(self, step: int, mfc: str) -> None:
        if mfc not in self._rank:
            raise SchedulerError(f"no MFC named '{mfc}'; MFCs: {', '.join(self._order)}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0 \
                or (self._n_steps is not None and step >= self._n_steps):
            limit = "an int >= 0" if self._n_steps is None else f"in range(0, {self._n_steps})"
            raise SchedulerError(f"MFC '{mfc}': step {step!r} is not {limit}")

    def _is_done(self, step: int, mfc: str) -> bool:
        return step < self._completed or mfc in self._done.get(step, ())

    def _unmet(self, step: int, mfc: str) -> list[Task]:
        unmet = [Task(step - lag, before) for before, lag in self._deps[mfc]
                 if step - lag >= 0 and not self._is_done(step - lag, before)]
        return list(dict.fromkeys(unmet))  # a data and a version edge may name the same task

    def _unmet_text(self, step: int, mfc: str) -> str:
        return ", ".join(f"'{t.mfc}' of step {t.step}" for t in self._unmet(step, mfc))

    def _blocked_reason(self, step: int, mfc: str) -> str:
        if step not in self.open_steps():
            return (f"step {step} is not open (completed_steps={self._completed}, "
                    f"max_steps_in_flight={self._window})")
        return f"it waits for {self._unmet_text(step, mfc)}"
