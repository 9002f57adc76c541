"""The local launcher's process handling: reaping, naming dead workers, free ports,
rendezvous addresses."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from realflow.api.errors import ConfigError
from realflow.apps.cli import build_parser
from realflow.system.launcher import _Workers, free_port
from realflow.system.rendezvous import parse_address

IGNORES_TERM = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_reap_kills_a_worker_that_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    workers = _Workers(tmp_path, 2)
    workers.start(lambda i: [sys.executable, "-c", IGNORES_TERM if i == 0 else "import time; time.sleep(60)"],
                  dict(os.environ))
    deadline = time.monotonic() + 20
    while not workers.logs[0].read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(workers.logs[0].read_text().split()[0])
    t0 = time.monotonic()
    workers.reap(grace_s=0.5)
    assert time.monotonic() - t0 < 5
    assert all(p.poll() is not None for p in workers.procs)
    assert workers.procs[0].returncode == -signal.SIGKILL and workers.procs[1].returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:  # killed with its process group
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_dead_worker_is_named_with_the_signal_and_log_tail(tmp_path: Path) -> None:
    workers = _Workers(tmp_path, 2)
    workers.start(lambda i: [sys.executable, "-c", "print('last words', flush=True); import os; os.abort()"
                             if i == 1 else "import time; time.sleep(60)"], dict(os.environ))
    try:
        deadline = time.monotonic() + 20
        while workers.procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers.dead() == [1]
        assert workers.died() == f"worker 'w1' (pid {workers.procs[1].pid}) died: killed by SIGABRT"
        text = workers.describe()
        assert "worker 'w0'" in text and "running" in text and "last words" in text
    finally:
        workers.reap(grace_s=0.5)


def test_free_port_can_be_bound_on_localhost() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_cli_run_takes_a_workers_flag() -> None:
    args = build_parser().parse_args(["run", "sft", "n_seqs=8", "run.n_steps=2", "--workers", "2"])
    assert args.workers == 2 and args.overrides == ["n_seqs=8", "run.n_steps=2"]
    assert build_parser().parse_args(["run", "sft"]).workers == 0


def test_rendezvous_addresses_are_checked() -> None:
    assert parse_address("tcp://127.0.0.1:29500") == ("127.0.0.1", 29500)
    for bad in ("127.0.0.1:29500", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://:29500", "env://", "tcp://h:x"):
        with pytest.raises(ConfigError, match="rendezvous address"):
            parse_address(bad)
