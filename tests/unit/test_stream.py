"""The control plane working as intended: secrets, codec, requests, heartbeats, busy vs idle."""
from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from realflow.api.errors import ConfigError, DeadlineError, WorkerError
from realflow.system import names
from realflow.system.auth import (
    SECRET_ENV,
    SECRET_FILE_ENV,
    AuthError,
    MessageCodec,
    load_secret,
    new_secret,
    read_secret_file,
    secret_env,
    write_secret_file,
)
from realflow.system.messages import Request, RequestKind, WorkerState
from realflow.system.name_resolve import MemoryNameResolver
from realflow.system.request_client import HeartbeatPolicy, RequestClient
from realflow.system.request_server import RequestServer
from realflow.system.stream import ServerAddress

SECRET = new_secret()


def _sleep(req: Request) -> str:
    time.sleep(req.payload)
    return "slept"


def _fail(req: Request) -> None:
    raise ValueError(f"bad payload {req.payload!r}")


HANDLERS = {
    RequestKind.RUN_MFC: _sleep,
    RequestKind.CONFIGURE: lambda r: {"echo": r.payload, "pid": os.getpid()},
    RequestKind.SAVE: _fail,
}


class Running:
    """A RequestServer served by a thread, stopped at the end of the test."""

    def __init__(self, name: str, **kwargs) -> None:
        self.server = RequestServer(name, SECRET, HANDLERS, **kwargs)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve(idle_timeout=30)
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self, client: RequestClient) -> None:
        if not self.server.exited:
            client.call(self.server.name, RequestKind.EXIT, timeout=5)
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server.close()


@pytest.fixture
def pair() -> Iterator[tuple[Running, RequestClient]]:
    running = Running("w0")
    client = RequestClient(SECRET, heartbeat=HeartbeatPolicy(0.05, 2.0))
    client.connect("w0", running.server.address)
    yield running, client
    running.stop(client)
    client.close()
    assert running.error is None


# ---------------------------------------------------------------- secrets

def test_secret_file_roundtrip_has_mode_0600(tmp_path: Path) -> None:
    secret = new_secret()
    path = write_secret_file(tmp_path / "secret", secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path) == secret
    assert load_secret({SECRET_FILE_ENV: str(path)}) == secret
    with pytest.raises(ConfigError, match="already exists"):
        write_secret_file(path, secret)


def test_secret_from_env() -> None:
    secret = new_secret()
    env = secret_env(secret)
    assert env == {SECRET_ENV: secret.hex()} and load_secret(env) == secret
    with pytest.raises(ConfigError, match="no run secret"):
        load_secret({})
    with pytest.raises(ConfigError, match="not a hex string"):
        load_secret({SECRET_ENV: "zz"})
    with pytest.raises(ConfigError, match="at least 32 bytes, got 4"):
        load_secret({SECRET_ENV: "00112233"})


def test_codec_roundtrip_and_tamper() -> None:
    codec = MessageCodec(SECRET)
    req = Request.new(RequestKind.CONFIGURE, "w0", timeout=5, payload={"a": [1, 2]})
    frames = codec.encode(req)
    assert codec.decode(frames) == req
    body = bytearray(frames[2])
    body[-2] ^= 1
    with pytest.raises(AuthError, match="HMAC check failed"):
        codec.decode([frames[0], frames[1], bytes(body)])
    with pytest.raises(AuthError, match="3 frames"):
        codec.decode(frames[1:])
    with pytest.raises(AuthError, match="wire version"):
        codec.decode([b"other/9", *frames[1:]])
    with pytest.raises(AuthError, match="HMAC"):
        MessageCodec(new_secret()).decode(frames)


# --------------------------------------------------------------- requests

def test_call_roundtrip_and_address_through_name_resolution(pair) -> None:
    running, _ = pair
    resolver = MemoryNameResolver()
    key = names.worker("exp", "trial", 0)
    running.server.publish(resolver, key)
    with RequestClient(SECRET, heartbeat=None) as client:
        address = client.connect_resolved("w0", resolver, key, timeout=1)
        assert address == running.server.address
        assert ServerAddress.from_json(address.to_json()) == address
        out = client.call("w0", RequestKind.CONFIGURE, {"x": 1}, timeout=5)
        assert out == {"echo": {"x": 1}, "pid": os.getpid()}


def test_many_requests_map_to_their_ids(pair) -> None:
    _, client = pair
    reqs = [client.send("w0", RequestKind.CONFIGURE, i, timeout=5) for i in range(20)]
    responses = client.wait(list(reversed(reqs)))
    assert [r.payload["echo"] for r in responses] == list(range(19, -1, -1))
    assert [r.request_id for r in responses] == [r.id for r in reversed(reqs)]


def test_handler_error_carries_remote_traceback(pair) -> None:
    _, client = pair
    with pytest.raises(WorkerError) as err:
        client.call("w0", RequestKind.SAVE, 42, timeout=5)
    text = str(err.value)
    assert "worker 'w0' failed SAVE request" in text and "ValueError: bad payload 42" in text
    assert "--- traceback in worker 'w0' ---" in text and "in _fail" in text
    # The worker keeps serving, and reports the error in its status.
    assert client.call("w0", RequestKind.CONFIGURE, 1, timeout=5)["echo"] == 1
    assert "ValueError" in client.heartbeat("w0", timeout=2).last_error


def test_kind_without_handler_is_an_error_reply(pair) -> None:
    _, client = pair
    handled = r"\(it handles \['CONFIGURE', 'RUN_MFC', 'SAVE'\]\)"
    with pytest.raises(WorkerError, match=r"no handler for FREE_DATA " + handled):
        client.call("w0", RequestKind.FREE_DATA, timeout=5)


def test_call_all_names_failed_workers() -> None:
    servers = [Running(f"w{i}") for i in range(3)]
    client = RequestClient(SECRET, heartbeat=None)
    try:
        for s in servers:
            client.connect(s.server.name, s.server.address)
        out = client.call_all(RequestKind.CONFIGURE, {"w0": 0, "w1": 1, "w2": 2}, timeout=5)
        assert {w: v["echo"] for w, v in out.items()} == {"w0": 0, "w1": 1, "w2": 2}
        # Both fail at once; the first failure in comes with its traceback, the other is named.
        with pytest.raises(WorkerError, match=r"SAVE failed on [12] of 2 workers.*worker 'w[12]' failed SAVE"):
            client.call_all(RequestKind.SAVE, {"w1": None, "w2": None}, timeout=5)
    finally:
        for s in servers:
            s.stop(client)
        client.close()


def test_call_all_fails_fast_without_waiting_for_busy_workers() -> None:
    """A failure is reported at once, not when the others finish (they may never: a
    collective CONFIGURE whose peer failed waits for it)."""
    servers = [Running(f"w{i}") for i in range(2)]
    client = RequestClient(SECRET, heartbeat=None)
    try:
        for s in servers:
            client.connect(s.server.name, s.server.address)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=r"RUN_MFC failed on 1 of 2 workers; abandoned: \['w0'\]: "
                                              r"worker 'w1' failed RUN_MFC .*TypeError"):
            client.call_all(RequestKind.RUN_MFC, {"w0": 2.0, "w1": "not seconds"}, timeout=10)
        assert time.monotonic() - t0 < 1.5
    finally:
        for s in servers:
            s.stop(client)
        client.close()


def test_exit_stops_serve(pair) -> None:
    running, client = pair
    assert client.call("w0", RequestKind.EXIT, timeout=5) is None
    running.thread.join(5)
    assert running.server.exited and not running.thread.is_alive()


def test_usage_errors() -> None:
    with pytest.raises(ConfigError, match="HEARTBEAT is answered by the server itself"):
        RequestServer("w", SECRET, {RequestKind.HEARTBEAT: lambda r: None})
    with RequestClient(SECRET, heartbeat=None) as client:
        with pytest.raises(ConfigError, match=r"no worker named 'w9'; connected: \[\]"):
            client.send("w9", RequestKind.SAVE, timeout=1)
        with pytest.raises(ConfigError, match="RequestClient.heartbeat"):
            client.send("w9", RequestKind.HEARTBEAT, timeout=1)
    with pytest.raises(ConfigError, match="interval_s < timeout_s"):
        HeartbeatPolicy(interval_s=2, timeout_s=1)


# ------------------------------------------------------------- heartbeats

def test_heartbeat_tells_busy_from_idle(pair) -> None:
    _, client = pair
    idle = client.heartbeat("w0", timeout=2)
    assert idle.state is WorkerState.IDLE and idle.worker == "w0" and idle.pid == os.getpid()
    req = client.send("w0", RequestKind.RUN_MFC, 1.0, timeout=5)
    time.sleep(0.1)
    busy = client.heartbeat("w0", timeout=0.5)  # answered at once while the handler runs
    assert busy.state is WorkerState.BUSY and busy.kind is RequestKind.RUN_MFC and busy.request_id == req.id
    assert 0.05 < busy.busy_for_s < 1.0
    assert client.wait([req])[0].payload == "slept"
    assert client.heartbeat("w0", timeout=2).state is WorkerState.IDLE


def test_waiting_on_a_busy_worker_sends_heartbeats(pair) -> None:
    _, client = pair
    req = client.send("w0", RequestKind.RUN_MFC, 0.3, timeout=5)
    client.wait([req])
    assert client.status("w0") is not None  # filled by the pings sent while waiting


def test_worker_leaves_when_the_master_falls_silent() -> None:
    server = RequestServer("w0", SECRET, HANDLERS)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeadlineError, match=r"worker 'w0': no request or heartbeat from the master for 0\.2"):
            server.serve(idle_timeout=0.2)
        assert time.monotonic() - t0 < 3.0
    finally:
        server.close()


def test_unpicklable_reply_becomes_an_error_reply() -> None:
    server = RequestServer("w0", SECRET, {RequestKind.CONFIGURE: lambda r: (lambda: None)})
    thread = threading.Thread(target=server.serve_once, args=(5,), daemon=True)
    thread.start()
    try:
        with RequestClient(SECRET, heartbeat=None) as client:
            client.connect("w0", server.address)
            with pytest.raises(WorkerError, match="reply payload could not be pickled"):
                client.call("w0", RequestKind.CONFIGURE, timeout=5)
    finally:
        thread.join(5)
        server.close()
