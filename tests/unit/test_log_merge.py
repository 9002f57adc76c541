"""The launcher's merged console view of the worker log files."""
from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

from realflow.system.launcher import _LogMerger, _Workers

# w0 writes one line, waits for the test to see it, then one more; w1 ends on a partial line.
W0 = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)\n"
W1 = "import sys\nprint('a', flush=True)\nprint('b ü', flush=True)\nsys.stdout.write('no newline')\n"


def _merger_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "realflow-log-merge"]


def test_merged_view_prints_worker_lines_live_and_drains_at_stop(tmp_path: Path) -> None:
    workers = _Workers(tmp_path, 2)
    out = io.StringIO()
    merger = _LogMerger(workers.logs, ["w0", "w1"], out=out, poll_s=0.05)
    workers.start(lambda i: [sys.executable, "-c", W0 if i == 0 else W1], dict(os.environ))
    merger.start()
    try:
        deadline = time.monotonic() + 20
        while "[w0] first\n" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "[w0] first\n" in out.getvalue()  # printed while the worker still runs
        assert "second" not in out.getvalue()
        for p in workers.procs:
            p.wait(timeout=20)
    finally:
        workers.reap(grace_s=0.5)
        merger.stop()
    lines = out.getvalue().splitlines()
    assert [x for x in lines if x.startswith("[w0]")] == ["[w0] first", "[w0] second"]
    assert [x for x in lines if x.startswith("[w1]")] == ["[w1] a", "[w1] b ü", "[w1] no newline"]
    assert len(lines) == 5  # nothing twice
    assert not _merger_threads()


def test_stop_without_start_drains_and_a_missing_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "w0.log").write_text("only line\n")
    out = io.StringIO()
    merger = _LogMerger([tmp_path / "w0.log", tmp_path / "w1.log"], ["w0", "w1"], out=out)
    merger.stop()
    assert out.getvalue() == "[w0] only line\n"
    assert not _merger_threads()
