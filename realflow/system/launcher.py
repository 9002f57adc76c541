"""The local launcher: a master (this process) plus N model-worker subprocesses.

`run_local(spec, run, n_workers)`:

1. makes the run directory, a fresh HMAC secret in a mode-0600 file there
   (handed to workers as `REALFLOW_SECRET_FILE`), and a `FileNameResolver` under
   `<run dir>/name_resolve`, clearing what an earlier run of the same trial left;
2. starts `python -m realflow.system.worker --index i ...` per worker, each in its
   own process group, with one CPU thread, logging to `<run dir>/logs/w<i>.log`
   (a thread copies new lines of those files to this console, prefixed `[w<i>]`,
   unless `LaunchConfig.merge_worker_logs` is off);
3. connects to each worker as it publishes its address (failing early, with the
   worker's exit code and log tail, if one dies while starting), hosts the
   torch.distributed (gloo) rendezvous store of the workers on a 127.0.0.1 port
   bound once and kept (rendezvous.py: no other process can take it, nothing
   outside the machine can reach it; the master is not part of that world: it moves
   no tensors), and runs the `Master` here;
4. on every exit path (success, error, Ctrl-C, SIGTERM): EXIT to the workers that
   still answer, then SIGTERM to each worker's process group, then SIGKILL after a
   grace period, and waits for every child.

A failure raises `LaunchError` naming the failed worker (the master's error names
it, with the last request and the remote traceback where there is one) plus each
worker's exit code and the tail of its log. `realflow run <exp> --workers N` maps a
non-zero exit onto it.

Not here: other machines (the Ray launcher), restarting failed workers.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Callable

from realflow.api.errors import ConfigError, RealflowError
from realflow.api.experiment import ExperimentSpec, RunConfig
from realflow.system import names
from realflow.system.auth import SECRET_FILE_ENV, load_secret, new_secret, write_secret_file
from realflow.system.step_log import OnStep, RunRecords
from realflow.system.master import Master, MasterTimeouts
from realflow.system.messages import RequestKind
from realflow.system.name_resolve import FileNameResolver
from realflow.system.request_client import HeartbeatPolicy, RequestClient
from realflow.system.stream import ServerAddress
from realflow.system.protocol import worker_name
from realflow.system.rendezvous import DIST_TIMEOUT, host_store

logger = logging.getLogger(__name__)


class LaunchError(RealflowError):
    """The distributed run failed; the message names the worker and carries its log tail."""


@dataclass(frozen=True)
class LaunchConfig:
    n_workers: int = 2
    # role -> a worker index, or several (data parallel over them); None: round-robin, one each
    allocation: dict[str, int | tuple[int, ...] | list[int]] | None = None
    heartbeat: HeartbeatPolicy = HeartbeatPolicy(interval_s=1.0, timeout_s=5.0)
    timeouts: MasterTimeouts = MasterTimeouts()
    start_timeout_s: float = 120.0
    worker_idle_timeout_s: float = 60.0
    grace_s: float = 5.0
    user_files: tuple[str, ...] = ()  # Python files every worker imports first (the CLI's --file)
    resume_from: Path | None = None  # a checkpoint directory written by Master.save (e.g. checkpoints/step2)
    stop_after_steps: int | None = None  # stop after this many steps with a resumable checkpoint
    pipeline: bool = True  # queue an MFC on a worker behind its producer there (Master._queue_behind)
    merge_worker_logs: bool = True  # copy the workers' log lines to this console (stderr), prefixed [w<i>]


DistributedResult = RunRecords  # what run_local returns: records and the run directory


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (another process could take it before it is bound; runs
    use `rendezvous.host_store`, which cannot lose its port; tests use this)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Workers:
    """The worker subprocesses: start, watch, and reap."""

    def __init__(self, run_dir: Path, n: int) -> None:
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen] = []
        self.logs = [run_dir / "logs" / f"{worker_name(i)}.log" for i in range(n)]

    def start(self, argv: Callable[[int], list[str]], env: dict[str, str]) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for i, log in enumerate(self.logs):
            with log.open("w") as out:
                self.procs.append(subprocess.Popen(argv(i), env=env, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True))

    def dead(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is not None]

    def died(self) -> str:
        """'worker 'w1' (pid 123) died: killed by SIGKILL', for each worker that exited abnormally."""
        out = []
        for i, p in enumerate(self.procs):
            code = p.poll()
            if code is None or code == 0:
                continue
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            out.append(f"worker '{worker_name(i)}' (pid {p.pid}) died: {how}")
        return "; ".join(out)

    def describe(self) -> str:
        lines = []
        for i, p in enumerate(self.procs):
            code = p.poll()
            state = "running" if code is None else f"exited with code {code}"
            tail = self.tail(i) if code not in (None, 0) else ""
            lines.append(f"worker '{worker_name(i)}' (pid {p.pid}) {state}; log {self.logs[i]}{tail}")
        return "\n".join(lines)

    def tail(self, i: int, n: int = 15) -> str:
        try:
            text = self.logs[i].read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n    " + "\n    ".join(text) if text else ""

    def reap(self, grace_s: float) -> None:
        """Wait `grace_s` for clean exits, then SIGTERM each process group, then SIGKILL."""
        deadline = time.monotonic() + grace_s
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            for p in self.procs:
                if sig is not None and p.poll() is None:
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        pass
            for p in self.procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if all(p.poll() is not None for p in self.procs):
                return
            deadline = time.monotonic() + grace_s


class _LogMerger:
    """The merged console view: a thread that copies every new line of each worker's
    log file to the console, prefixed with the worker's name (`[w1] ...`).

    Lines go to `out` (default: `sys.stderr` at the time of writing, where the
    master's own log lines go). A partial last line waits for its newline. `stop()`
    ends the thread, then drains every file to its end (partial lines included), so
    nothing a worker wrote before it exited is lost; call it after reaping them.
    """

    def __init__(self, logs: list[Path], names: list[str], out: IO[str] | None = None, poll_s: float = 0.2) -> None:
        self.logs, self.names, self.out, self.poll_s = logs, names, out, poll_s
        self._files: dict[int, BinaryIO] = {}
        self._partial = [b""] * len(logs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="realflow-log-merge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pump(final=True)  # after the join: one thread reads the files at a time
        for f in self._files.values():
            f.close()
        self._files.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._pump(final=False)

    def _pump(self, final: bool) -> None:
        lines = []
        for i, path in enumerate(self.logs):
            if i not in self._files:
                try:
                    self._files[i] = path.open("rb")
                except OSError:
                    continue  # not created yet (the launcher failed before starting this worker)
            *complete, rest = (self._partial[i] + self._files[i].read()).split(b"\n")
            if final and rest:
                complete, rest = [*complete, rest], b""
            self._partial[i] = rest
            lines += [f"[{self.names[i]}] {line.decode(errors='replace')}\n" for line in complete]
        if lines:
            out = self.out or sys.stderr
            try:
                out.write("".join(lines))
                out.flush()
            except (OSError, ValueError):  # a closed console must not stop the run
                pass


def run_local(
    spec: ExperimentSpec,
    run: RunConfig,
    launch: LaunchConfig = LaunchConfig(),
    on_step: OnStep = None,
) -> DistributedResult:
    """Run `spec` as this master plus `launch.n_workers` worker processes; see the module docstring."""
    if launch.n_workers < 1:
        raise ConfigError(f"n_workers must be >= 1, got {launch.n_workers}")
    run_dir = run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    secret_path = run_dir / "secret"
    secret_path.unlink(missing_ok=True)  # a fresh secret per run
    write_secret_file(secret_path, new_secret())
    env = {**os.environ, SECRET_FILE_ENV: str(secret_path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    secret = load_secret(env)
    name_root = run_dir / "name_resolve"
    resolver = FileNameResolver(name_root)
    resolver.reset(run.experiment_name, run.trial_name)
    workers = _Workers(run_dir, launch.n_workers)
    merger = _LogMerger(workers.logs, [worker_name(i) for i in range(launch.n_workers)]) \
        if launch.merge_worker_logs else None
    client = RequestClient(secret, heartbeat=launch.heartbeat)
    store = None  # the workers' rendezvous store, served from here for the whole run
    restore = _raise_on_sigterm()
    try:
        workers.start(lambda i: [
            sys.executable, "-m", "realflow.system.worker", "--index", str(i),
            "--experiment", run.experiment_name, "--trial", run.trial_name, "--name-root", str(name_root),
            "--idle-timeout", str(launch.worker_idle_timeout_s),
        ], env)
        if merger is not None:
            merger.start()
        _connect(client, resolver, run, workers, launch.start_timeout_s)
        store, dist_init = host_store(DIST_TIMEOUT)
        master = Master(spec, run, client, launch.n_workers, dist_init, launch.allocation, launch.timeouts,
                        user_files=tuple(str(Path(f).resolve()) for f in launch.user_files),
                        resume_from=None if launch.resume_from is None else Path(launch.resume_from).resolve(),
                        pipeline=launch.pipeline)
        master.configure()
        records = master.run_all(on_step, stop_after_steps=launch.stop_after_steps)
        return DistributedResult(records, run_dir)
    except (Exception, KeyboardInterrupt) as e:
        time.sleep(0.2)  # let a dying worker's exit code show
        died = workers.died()
        head = f"{died}; " if died else ""
        raise LaunchError(
            f"distributed run failed: {head}{type(e).__name__}: {e}\nworkers:\n{workers.describe()}"
        ) from e
    finally:
        _exit_workers(client, workers)
        client.close()
        workers.reap(launch.grace_s)
        if merger is not None:
            merger.stop()  # after the reap: drains what the workers wrote last
        restore()
        del store  # stops the rendezvous server, once the workers are gone
        secret_path.unlink(missing_ok=True)


def _connect(client: RequestClient, resolver: FileNameResolver, run: RunConfig, workers: _Workers,
             timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(range(len(workers.procs)))
    while pending:
        for i in sorted(pending):
            key = names.worker(run.experiment_name, run.trial_name, i)
            entries = resolver.get_subtree(key)
            if key in entries:
                client.connect(worker_name(i), ServerAddress.from_json(entries[key]))
                pending.discard(i)
        dead = [i for i in workers.dead() if i in pending]
        if dead:
            raise LaunchError(f"worker '{worker_name(dead[0])}' exited while starting")
        if pending and time.monotonic() > deadline:
            raise LaunchError(f"workers {[worker_name(i) for i in sorted(pending)]} did not publish their "
                              f"address within {timeout:g} s")
        time.sleep(0.05)


def _exit_workers(client: RequestClient, workers: _Workers) -> None:
    """Ask every live, connected worker to EXIT (best effort, short deadline)."""
    live = [worker_name(i) for i, p in enumerate(workers.procs) if p.poll() is None and worker_name(i) in client.workers]
    requests = []
    for w in live:
        try:
            requests.append(client.send(w, RequestKind.EXIT, timeout=2.0))
        except RealflowError:
            pass
    if requests:
        try:
            client.wait(requests)
        except RealflowError as e:
            logger.warning("launcher: not every worker acknowledged EXIT: %s", str(e).splitlines()[0])


def _raise_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into KeyboardInterrupt (like Ctrl-C) so the reaping path runs; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)
