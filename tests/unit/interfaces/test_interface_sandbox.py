"""The code sandbox against hostile programs."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from realflow.interfaces.sandbox import SandboxLimits, isolation, run_python

LIMITS = SandboxLimits(timeout_s=1.5, memory_mb=256)
needs_namespaces = pytest.mark.skipif(isolation() != "namespaces", reason="unshare is not available here")


def _processes_with_home(home: str) -> list[int]:
    """Pids of live processes whose environment has HOME=`home` (the sandbox's temp dir)."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"HOME={home}".encode() in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except (OSError, ValueError):
            continue
    return pids


PRINT_HOME = "import os, sys\nprint(os.environ['HOME'], flush=True)\n"


def test_a_normal_program_reads_stdin_in_a_fresh_temp_dir():
    code = "import os, sys\nprint(sys.stdin.read().upper(), end='')\nprint(os.getcwd()); print(sorted(os.environ))"
    r = run_python(code, "abc", LIMITS)
    assert r.ok and r.stdout.startswith("ABC")
    cwd = r.stdout.splitlines()[0][3:]
    assert "realflow-sandbox-" in cwd and not Path(cwd).exists()  # removed afterwards
    assert r.stdout.splitlines()[1] == str(["HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"])


def test_infinite_loop_is_killed_at_the_timeout():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass", "", LIMITS)
    assert r.timed_out and not r.ok and time.monotonic() - t0 < LIMITS.timeout_s + 2


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    code = PRINT_HOME + "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_python(code, "", LIMITS)
    assert not r.ok
    home = r.stdout.splitlines()[0]
    time.sleep(0.2)
    assert "realflow-sandbox-" in home and _processes_with_home(home) == []


def test_daemon_child_does_not_outlive_the_run():
    code = PRINT_HOME + "import time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    r = run_python(code, "", LIMITS)
    assert r.ok and r.stdout.splitlines()[1] == "parent done"
    time.sleep(0.2)
    if isolation() == "namespaces":  # without a PID namespace the daemon dies only by its CPU limit
        assert _processes_with_home(r.stdout.splitlines()[0]) == []


def test_huge_allocation_fails_with_memory_error():
    r = run_python("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", "", LIMITS)
    assert not r.ok and "MemoryError" in r.stderr and "allocated" not in r.stdout


def test_endless_output_is_capped():
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "",
                   SandboxLimits(timeout_s=3, max_file_mb=1))
    assert not r.ok and len(r.stdout) <= 1024 * 1024


def test_reading_system_files_is_allowed():
    r = run_python("print(open('/etc/passwd').read().split(':')[0])", "", LIMITS)
    assert r.ok and r.stdout.strip() == "root"


@needs_namespaces
def test_network_connect_fails_even_to_this_hosts_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "    print('connected')\nexcept OSError as e:\n    print('blocked', e.errno)")
        r = run_python(code, "", LIMITS)
        assert r.ok and r.stdout.startswith("blocked"), r
        ext = run_python("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", "", LIMITS)
        assert not ext.ok and "OSError" in ext.stderr
    finally:
        server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="outside-writes are blocked by running as nobody, which needs root")
def test_writing_outside_the_temp_dir_fails(tmp_path):
    target = tmp_path / "pwned.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')", "", LIMITS)
    assert not r.ok and "PermissionError" in r.stderr and not target.exists()
    r = run_python("open('inside.txt', 'w').write('ok'); print(open('inside.txt').read())", "", LIMITS)
    assert r.ok and r.stdout == "ok\n"
