"""The control plane under attack and failure: each fault is dropped or reported, by name."""
from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from realflow.api.errors import ConfigError, DeadlineError, WorkerError
from realflow.system.auth import WIRE_VERSION, MessageCodec, new_secret, read_secret_file, write_secret_file
from realflow.system.messages import Request, RequestKind, Response
from realflow.system.name_resolve import FileNameResolver
from realflow.system.request_client import HeartbeatPolicy, RequestClient
from realflow.system.request_server import RequestServer
from realflow.system.stream import ServerAddress

SECRET = new_secret()
DETONATED: list[str] = []


def _detonate(tag: str) -> str:
    DETONATED.append(tag)
    return tag


class Bomb:
    """Unpickling this runs `_detonate`: proof that a message was deserialised."""

    def __reduce__(self):
        return (_detonate, ("boom",))


@pytest.fixture
def server() -> Iterator[RequestServer]:
    srv = RequestServer("w0", SECRET, {RequestKind.CONFIGURE: lambda r: r.payload})
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            srv.serve_once(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield srv
    stop.set()
    thread.join(5)
    srv.close()


@pytest.fixture
def raw(server: RequestServer) -> Iterator[zmq.Socket]:
    """A bare DEALER connected to the server's request socket: an arbitrary peer."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address.request_endpoint)
    yield sock
    sock.close()
    ctx.term()


def _reply(sock: zmq.Socket, timeout: float = 0.3) -> Response | None:
    if not sock.poll(int(timeout * 1000)):
        return None
    return MessageCodec(SECRET).decode(sock.recv_multipart())


def _drop_logged(caplog, what: str, timeout: float = 2.0) -> logging.LogRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in caplog.records:
            if what in rec.getMessage():
                return rec
        time.sleep(0.01)
    raise AssertionError(f"no log line containing {what!r}; got {[r.getMessage() for r in caplog.records]}")


def test_forged_message_is_dropped_logged_and_never_unpickled(server, raw, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="realflow.system.stream")
    DETONATED.clear()
    bomb = pickle.dumps(Bomb())
    raw.send_multipart([WIRE_VERSION, b"\0" * 32, bomb])  # forged tag
    raw.send_multipart([WIRE_VERSION, bomb])  # unsigned
    rec = _drop_logged(caplog, "failed authentication: HMAC check failed")
    assert "worker 'w0' request socket: dropped a message from 127.0.0.1" in rec.getMessage()
    _drop_logged(caplog, "failed authentication: expected 3 frames")
    assert _reply(raw) is None
    assert DETONATED == []
    # The server is unharmed and still answers genuine requests.
    good = Request.new(RequestKind.CONFIGURE, "w0", 5, payload="ok")
    raw.send_multipart(MessageCodec(SECRET).encode(good))
    assert _reply(raw, 5).payload == "ok"


def test_wrong_secret_is_dropped_and_the_client_reports_the_deadline(server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="realflow.system.stream")
    DETONATED.clear()
    with RequestClient(new_secret(), heartbeat=None) as client:
        client.connect("w0", server.address)
        with pytest.raises(DeadlineError, match="worker 'w0'.*did not answer CONFIGURE request"):
            client.call("w0", RequestKind.CONFIGURE, Bomb(), timeout=0.3)
    _drop_logged(caplog, "failed authentication")
    assert DETONATED == []  # the server never unpickled the payload


def test_expired_request_is_dropped_with_a_log_line(server, raw, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="realflow.system.request_server")
    stale = Request(RequestKind.CONFIGURE, "w0", deadline=time.time() - 1, payload="late")
    raw.send_multipart(MessageCodec(SECRET).encode(stale))
    rec = _drop_logged(caplog, "deadline passed")
    assert f"dropped CONFIGURE request {stale.id[:8]}" in rec.getMessage()
    assert _reply(raw) is None


def test_replayed_request_is_dropped(server, raw, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="realflow.system.request_server")
    frames = MessageCodec(SECRET).encode(Request.new(RequestKind.CONFIGURE, "w0", 5, payload=1))
    raw.send_multipart(frames)
    assert _reply(raw, 5).payload == 1
    raw.send_multipart(frames)
    _drop_logged(caplog, "replayed (its id was already received)")
    assert _reply(raw) is None


def test_request_for_another_worker_is_dropped(server, raw, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="realflow.system.request_server")
    raw.send_multipart(MessageCodec(SECRET).encode(Request.new(RequestKind.CONFIGURE, "w1", 5)))
    _drop_logged(caplog, "it is addressed to 'w1'")
    assert _reply(raw) is None


def test_forged_reply_is_dropped_by_the_client(caplog) -> None:
    """A fake worker answering with the wrong secret: the client logs it and reports the deadline."""
    caplog.set_level(logging.WARNING, logger="realflow.system.stream")
    DETONATED.clear()
    ctx = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    try:
        with RequestClient(SECRET, heartbeat=None) as client:
            client.connect("w0", ServerAddress("127.0.0.1", port, port, pid=0))
            req = client.send("w0", RequestKind.CONFIGURE, timeout=0.5)
            assert fake.poll(2000)
            identity = fake.recv_multipart()[0]
            forged = Response(req.id, req.kind, "w0", True, Bomb())
            fake.send_multipart([identity, *MessageCodec(new_secret()).encode(forged)])
            with pytest.raises(DeadlineError):
                client.wait([req])
        _drop_logged(caplog, "master: request socket of worker 'w0' (127.0.0.1): dropped a message")
        assert DETONATED == []
    finally:
        fake.close()
        ctx.term()


def test_port_already_in_use_names_host_and_port(server) -> None:
    port = server.address.port
    with pytest.raises(ConfigError, match=f"cannot bind 127.0.0.1:{port}: address already in use"):
        RequestServer("w1", SECRET, {}, port=port)
    with pytest.raises(ConfigError, match=f"cannot bind 127.0.0.1:{server.address.heartbeat_port}"):
        RequestServer("w1", SECRET, {}, heartbeat_port=server.address.heartbeat_port)


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = write_secret_file(tmp_path / "secret", new_secret())
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=rf"secret file {path} has mode 0644: group or others may access it"):
        read_secret_file(path)


@pytest.fixture
def silent() -> Iterator[ServerAddress]:
    """Sockets that accept connections and never answer (a hung process)."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.ROUTER) for _ in range(2)]
    ports = []
    for s in socks:
        s.setsockopt(zmq.LINGER, 0)
        ports.append(s.bind_to_random_port("tcp://127.0.0.1"))
    yield ServerAddress("127.0.0.1", ports[0], ports[1], pid=12345)
    for s in socks:
        s.close()
    ctx.term()


def test_unanswered_request_raises_at_its_deadline_naming_worker_and_kind(silent) -> None:
    with RequestClient(SECRET, heartbeat=HeartbeatPolicy(0.1, 5.0)) as client:
        client.connect("w3", silent)
        t0 = time.monotonic()
        with pytest.raises(DeadlineError) as err:
            client.call("w3", RequestKind.RUN_MFC, timeout=0.4)
        elapsed = time.monotonic() - t0
    assert 0.35 < elapsed < 2.0
    text = str(err.value)
    assert "worker 'w3'" in text and "pid 12345" in text and "RUN_MFC request" in text
    assert "deadline of 0.40 s" in text and "it never answered a heartbeat" in text


def test_busy_worker_past_its_deadline_says_what_it_is_busy_with() -> None:
    srv = RequestServer("slow", SECRET, {RequestKind.RUN_MFC: lambda r: time.sleep(1.0)})
    thread = threading.Thread(target=srv.serve_once, args=(5,), daemon=True)
    thread.start()
    try:
        with RequestClient(SECRET, heartbeat=HeartbeatPolicy(0.05, 5.0)) as client:
            client.connect("slow", srv.address)
            busy = r"within its deadline of 0\.40 s; its last heartbeat .* said: busy with RUN_MFC"
            with pytest.raises(DeadlineError, match=busy):
                client.call("slow", RequestKind.RUN_MFC, timeout=0.4)
    finally:
        thread.join(5)
        srv.close()


def test_silent_heartbeats_name_the_worker_long_before_the_request_deadline(silent) -> None:
    with RequestClient(SECRET, heartbeat=HeartbeatPolicy(0.05, 0.3)) as client:
        client.connect("w7", silent)
        t0 = time.monotonic()
        with pytest.raises(WorkerError) as err:
            client.call("w7", RequestKind.RUN_MFC, timeout=30)
        assert time.monotonic() - t0 < 3.0
    text = str(err.value)
    assert "worker 'w7'" in text and "has not answered heartbeats for 0.3" in text
    assert "died or is hung" in text and "Last request: RUN_MFC request" in text


_WORKER = """
import sys, time
from realflow.system.auth import load_secret
from realflow.system.messages import RequestKind
from realflow.system.name_resolve import FileNameResolver
from realflow.system.request_server import RequestServer
server = RequestServer("w0", load_secret(), {RequestKind.RUN_MFC: lambda r: time.sleep(60)})
server.publish(FileNameResolver(sys.argv[1]), "exp/trial/worker/0")
server.serve(idle_timeout=20)
"""


def test_worker_killed_mid_request_is_named_within_the_heartbeat_timeout(tmp_path: Path) -> None:
    secret_file = write_secret_file(tmp_path / "secret", SECRET)
    env = {**os.environ, "REALFLOW_SECRET_FILE": str(secret_file)}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "nr")], env=env)
    try:
        with RequestClient(SECRET, heartbeat=HeartbeatPolicy(0.1, 1.0)) as client:
            client.connect_resolved("w0", FileNameResolver(tmp_path / "nr"), "exp/trial/worker/0", timeout=20)
            req = client.send("w0", RequestKind.RUN_MFC, timeout=60)
            while client.status("w0") is None or client.status("w0").state.name != "BUSY":
                client.tick()
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(WorkerError) as err:
                client.wait([req])
            assert time.monotonic() - t0 < 4.0
        text = str(err.value)
        assert f"pid {proc.pid}" in text and "died or is hung" in text
        assert f"Last request: RUN_MFC request {req.id[:8]}" in text and "last status: busy with RUN_MFC" in text
    finally:
        proc.kill()
        proc.wait(10)
