"""Control-plane faults end to end: forged messages reach real workers and the real
master, and the torch.distributed rendezvous store owns a loopback port.

A forged message is proven never unpickled by its payload: loading it would create
a marker directory (`os.mkdir`, so it works in whichever process loads it).
"""
from __future__ import annotations

import datetime
import logging
import os
import pickle
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import zmq
from e2e_helpers import hf_weights, live_children

from realflow.apps.experiments import load_experiment
from realflow.system import names, rendezvous
from realflow.system.auth import WIRE_VERSION, MessageCodec, new_secret
from realflow.system.inprocess import run_inprocess
from realflow.system.launcher import LaunchConfig, LaunchError, run_local
from realflow.system.messages import Request, RequestKind, Response
from realflow.system.name_resolve import FileNameResolver
from realflow.system.request_client import HeartbeatPolicy
from realflow.system.stream import ServerAddress

TINY = ["arch.n_layers=2", "arch.hidden_dim=32", "arch.n_q_heads=4", "arch.n_kv_heads=2", "arch.intermediate_dim=64"]
SFT = ["n_seqs=8", *("model." + t for t in TINY), "dataset.arithmetic_n_train=64",
       "dataset.arithmetic_difficulty=easy"]
FAST_HB = HeartbeatPolicy(interval_s=0.5, timeout_s=3.0)


class Bomb:
    """Unpickling this creates the directory `marker`: proof that a message was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _forgeries(marker: Path, target: str) -> list[list[bytes]]:
    """Three ways to be refused: a forged tag, no tag, another run's secret."""
    bomb = pickle.dumps(Bomb(marker))
    foreign = MessageCodec(new_secret()).encode(Request.new(RequestKind.SAVE, target, 60, payload=Bomb(marker)))
    return [[WIRE_VERSION, b"\0" * 32, bomb], [WIRE_VERSION, bomb], foreign]


@pytest.fixture(autouse=True)
def new_children():
    """One thread (the workers' setting: reductions match bit for bit); yields a function
    that lists this process's children started since the test began."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    before = set(live_children())
    yield lambda: [p for p in live_children() if p not in before]
    torch.set_num_threads(old)


def _address(cfg, tmp_path: Path, index: int) -> ServerAddress:
    resolver = FileNameResolver(tmp_path / cfg.run.experiment_name / cfg.run.trial_name / "name_resolve")
    return ServerAddress.from_json(resolver.get(names.worker(cfg.run.experiment_name, cfg.run.trial_name, index)))


@pytest.mark.timeout(180)
def test_forged_messages_to_running_workers_are_dropped_and_the_run_finishes(tmp_path, new_children):
    marker = tmp_path / "unpickled"
    cfg, spec = load_experiment("sft", [*SFT, "run.n_steps=3", f"run.fileroot={tmp_path}", "run.trial_name=dist"])
    sent = []

    def attack(step, records):
        """Between steps 1 and 2: forgeries at both sockets of both workers, from a stranger."""
        if step != 0:
            return
        ctx = zmq.Context()
        try:
            for i in range(2):
                address = _address(cfg, tmp_path, i)
                for endpoint in (address.request_endpoint, address.heartbeat_endpoint):
                    sock = ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 2000)  # deliver before close
                    sock.connect(endpoint)
                    for frames in _forgeries(marker, f"w{i}"):
                        sock.send_multipart(frames)
                        sent.append(endpoint)
                    sock.close()
        finally:
            ctx.term()

    dist = run_local(spec, cfg.run, LaunchConfig(n_workers=2, heartbeat=FAST_HB), on_step=attack)
    assert len(sent) == 12
    assert not marker.exists()  # no worker unpickled a forgery
    for w in ("w0", "w1"):
        log = (dist.run_dir / "logs" / f"{w}.log").read_text()
        for sock in ("request", "heartbeat"):
            dropped = f"worker '{w}' {sock} socket: dropped a message from 127.0.0.1 that failed authentication"
            drops = log.count(dropped)
            assert drops == 3, (w, sock, log[-3000:])
        assert "expected 3 frames" in log and "HMAC check failed" in log

    # ... and the run is the run it would have been.
    cfg, spec = load_experiment("sft", [*SFT, "run.n_steps=3", f"run.fileroot={tmp_path}", "run.trial_name=ref"])
    ref = run_inprocess(spec, cfg.run)
    assert [(r.step, r.mfc, r.stats) for r in dist.records] == [(r.step, r.mfc, r.stats) for r in ref.records]
    a, b = (hf_weights(r.run_dir / "checkpoints" / "final" / "default") for r in (dist, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not new_children()


@pytest.mark.timeout(120)
def test_an_impostor_on_a_dead_workers_ports_cannot_make_the_master_unpickle(tmp_path, caplog, new_children):
    """The master binds no socket: a forged reply reaches it only from a process on a
    worker's address. Kill w1, take its ports, answer every ping with forgeries: the
    master drops and logs them, never loads them, and names w1 as dead."""
    caplog.set_level(logging.WARNING, logger="realflow.system.stream")
    marker = tmp_path / "unpickled"
    cfg, spec = load_experiment("sft", [*SFT, "run.n_steps=50", f"run.fileroot={tmp_path}"])
    stop, answered = threading.Event(), []
    impostor: list[threading.Thread] = []

    def serve(address: ServerAddress) -> None:
        ctx = zmq.Context()
        socks = []
        for port in (address.port, address.heartbeat_port):
            s = ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            for _ in range(100):  # the dead worker's threads may still hold its sockets for a moment
                try:
                    s.bind(f"tcp://127.0.0.1:{port}")
                    break
                except zmq.ZMQError:
                    time.sleep(0.02)
            else:
                raise AssertionError(f"port {port} of the dead worker stayed taken")
            socks.append(s)
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        try:
            while not stop.is_set():
                for s, _ in poller.poll(50):
                    identity, *frames = s.recv_multipart()
                    # Signed, not encrypted: the impostor reads the ping and answers its very id.
                    request_id = pickle.loads(frames[2]).id
                    reply = Response(request_id, RequestKind.HEARTBEAT, "w1", True, Bomb(marker))
                    s.send_multipart([identity, WIRE_VERSION, b"\0" * 32, pickle.dumps(reply)])
                    s.send_multipart([identity, *MessageCodec(new_secret()).encode(reply)])
                    answered.append(1)
        finally:
            for s in socks:
                s.close()
            ctx.term()

    def kill_and_impersonate_w1(step, records):
        if step == 0:
            address = _address(cfg, tmp_path, 1)
            os.kill(address.pid, signal.SIGKILL)
            while Path(f"/proc/{address.pid}").exists() and \
                    Path(f"/proc/{address.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                time.sleep(0.01)
            impostor.append(threading.Thread(target=serve, args=(address,), daemon=True))
            impostor[0].start()

    try:
        with pytest.raises(LaunchError) as err:
            run_local(spec, cfg.run, LaunchConfig(n_workers=2, heartbeat=FAST_HB), on_step=kill_and_impersonate_w1)
    finally:
        stop.set()
        if impostor:
            impostor[0].join(5)
    text = str(err.value)
    assert "worker 'w1'" in text.splitlines()[0] and "killed by SIGKILL" in text.splitlines()[0], text
    assert "has not answered heartbeats" in text, text  # forged answers do not count as answers
    assert answered, "the master never reached the impostor"
    assert not marker.exists()  # the master unpickled none of them
    drops = [r.getMessage() for r in caplog.records if "worker 'w1' (127.0.0.1): dropped a message" in r.getMessage()]
    assert any("HMAC check failed" in m for m in drops), [r.getMessage() for r in caplog.records]
    assert not new_children()


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.append(local.rsplit(":", 1)[0])
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket tables")
def test_rendezvous_store_owns_its_port_and_listens_on_loopback_only():
    """The only fixed port of a run was torch.distributed's rendezvous: picked free by
    the launcher, then bound by worker 0 (another process could take it in between,
    and a TCPStore listens on every interface). The launcher now hosts the store on
    a socket it bound to 127.0.0.1 itself."""
    store, address = rendezvous.host_store(datetime.timedelta(seconds=10))
    port = rendezvous.parse_address(address)[1]
    assert address == f"tcp://127.0.0.1:{port}"
    assert _listening(port) == ["0100007F"]  # 127.0.0.1 only, no 0.0.0.0 or [::]
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))  # the port is not free for anyone else
    client = torch.distributed.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=10))
    client.set("k", "v")
    assert store.get("k") == b"v"
    del client, store
    assert _listening(port) == []  # the server is gone with the store