"""Run an untrusted Python program in a sandboxed subprocess, for code rewards.

Each run gets:
- a fresh temporary directory as cwd and HOME (the program is `main.py` there),
  deleted afterwards; a minimal environment (PATH, HOME, TMPDIR, LANG);
- resource limits set before exec: address space (`memory_mb`, RLIMIT_AS), CPU
  seconds (RLIMIT_CPU), size of any file written, stdout included (RLIMIT_FSIZE),
  number of processes (RLIMIT_NPROC: the user's current count + `max_processes`);
- a wall-clock timeout, after which the whole process tree is killed;
- when this process is root: the program runs as `nobody` (uid 65534), so it cannot
  write outside its temp dir except into world-writable places such as /tmp;
- when `unshare` works here: new network and PID namespaces (`unshare --net --pid
  --fork --kill-child`, adding `--user --map-root-user` when not root). The network
  namespace has only a downed loopback, so every connect fails, even to this
  host's 127.0.0.1; the PID namespace lets the kernel kill every process the
  program started when its first process exits or the timeout fires.

Fallback, when `unshare` is missing or refused (e.g. a container without user
namespaces): the same limits and process-group kill, but **no network isolation**
and escaped daemons die only by their CPU limit. `isolation()` says which mode is
in force; `SandboxLimits(require_isolation=True)` makes the fallback an error.
For hostile workloads at scale, run the reward role in a locked-down container
(no network, read-only root) on top of this.
"""
from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from realflow.api.errors import ConfigError, InterfaceError

NOBODY = "nobody"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

# Runs inside the namespaces, before the program: limits, privilege drop, exec.
# If it is PID 1 of a new PID namespace it forks first and waits, so that the
# program is an ordinary process (PID 1 ignores signals it has no handler for).
_LAUNCHER = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
if os.getpid() == 1:
    pid = os.fork()
    if pid:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os._exit(code if code >= 0 else 128 - code)
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if cfg["drop"] is not None:
    uid, gid = cfg["drop"]
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
os.chdir(cfg["cwd"])
os.execve(cfg["python"], [cfg["python"], "-I", "main.py"], cfg["env"])
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run; `cpu_s=None` means the timeout rounded up, plus one second."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    cpu_s: int | None = None
    max_processes: int = 8
    max_file_mb: int = 16
    require_isolation: bool = False

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sandbox: {name} must be > 0, got {getattr(self, name)!r}")
        if self.memory_mb < 64:
            raise ConfigError(f"sandbox: memory_mb={self.memory_mb} is too small for a Python interpreter (>= 64)")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 1


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None when killed by the timeout
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _unshare_cmd(as_root: bool) -> list[str]:
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    return cmd if as_root else cmd[:1] + ["--user", "--map-root-user"] + cmd[1:]


@functools.cache
def isolation() -> str:
    """"namespaces" when runs get their own network and PID namespaces, else "none"."""
    if shutil.which("unshare") is None:
        return "none"
    try:
        done = subprocess.run(_unshare_cmd(os.geteuid() == 0) + ["true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return "namespaces" if done.returncode == 0 else "none"


def _drop_target() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when running as root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(NOBODY)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _world_executable(path: str) -> bool:
    """Whether any user may run `path`: o+x on every directory above it and o+rx on the file."""
    real = Path(os.path.realpath(path))
    try:
        if real.stat().st_mode & 0o005 != 0o005:
            return False
        return all(p.stat().st_mode & 0o001 for p in real.parents)
    except OSError:
        return False


def _default_python(dropping: bool) -> str:
    """This interpreter, or when it is private to root (e.g. under /root), a system python3."""
    if not dropping or _world_executable(sys.executable):
        return sys.executable
    system = shutil.which("python3", path=_ENV["PATH"])
    if system is None or not _world_executable(system):
        raise InterfaceError(f"sandbox: the program would run as '{NOBODY}', who cannot execute {sys.executable}, "
                             "and no world-executable python3 is on /usr/local/bin:/usr/bin:/bin; pass `python`")
    return system


def _count_processes(uid: int) -> int:
    """Processes of `uid` on this machine (RLIMIT_NPROC counts them all)."""
    n = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    n += int(line.split()[1]) == uid
                    break
        except OSError:
            continue
    return n


def run_python(code: str, stdin: str, limits: SandboxLimits, python: str | None = None) -> RunResult:
    """Run `code` as a program with `stdin` under `limits` (see the module docstring)."""
    mode = isolation()
    if mode == "none" and limits.require_isolation:
        raise InterfaceError("sandbox: require_isolation=True but `unshare --net --pid` is not available here")
    drop = _drop_target()
    python = python or _default_python(drop is not None)
    workdir = Path(tempfile.mkdtemp(prefix="realflow-sandbox-"))
    try:
        (workdir / "main.py").write_text(code)
        (workdir / "stdin.txt").write_text(stdin)
        if drop is not None:
            os.chown(workdir, *drop)
        mb = 1024 * 1024
        cfg = {
            "limits": {
                "RLIMIT_AS": limits.memory_mb * mb,
                "RLIMIT_CPU": limits.cpu_seconds,
                "RLIMIT_FSIZE": limits.max_file_mb * mb,
                "RLIMIT_NPROC": _count_processes(drop[0] if drop else os.getuid()) + limits.max_processes,
                "RLIMIT_CORE": 0,
            },
            "drop": drop,
            "cwd": str(workdir),
            "python": python,
            "env": {**_ENV, "HOME": str(workdir), "TMPDIR": str(workdir)},
        }
        prefix = _unshare_cmd(os.geteuid() == 0) if mode == "namespaces" else []
        cmd = prefix + [python, "-I", "-c", _LAUNCHER, json.dumps(cfg)]
        out_path, err_path = workdir / ".stdout", workdir / ".stderr"
        with open(workdir / "stdin.txt", "rb") as fin, open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=workdir, env=cfg["env"],
                                    start_new_session=True)
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, and the program on timeout
                except ProcessLookupError:
                    pass
                proc.wait()
        cap = limits.max_file_mb * mb
        return RunResult(returncode, _read(out_path, cap), _read(err_path, 64 * 1024), timed_out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", errors="replace")
