"""The master's end of the control plane: requests to named workers, replies by id.

`RequestClient` connects two DEALER sockets to each worker's `RequestServer`
(requests, heartbeats). `send` returns the `Request` (its id is the handle);
`wait` collects the replies of several requests, each bounded by its own absolute
deadline; `call` / `call_all` are send + wait + unwrap. Errors name the worker:

- a request whose deadline passes -> DeadlineError naming each late worker, the
  request kind and id, the deadline, and the worker's last heartbeat status
  (busy with what for how long, idle, or never answered);
- a worker that stops answering heartbeats -> WorkerError naming it, its address,
  its last request and last known status, after `HeartbeatPolicy.timeout_s`,
  however long the request's own deadline is;
- a worker whose handler raised -> WorkerError with the remote traceback
  (`Response.unwrap`).

Heartbeats are sent to every connected worker every `interval_s` while the client
waits (`wait`, `call*`) and whenever the master calls `tick()`; the master must call
`tick()` from its loop when it is not waiting, so that it notices dead workers and
so that workers (whose `serve(idle_timeout)` leaves when the master falls silent)
know it is alive. Liveness is judged on heartbeats the client actually sent: time
the master spends elsewhere is never counted against a worker.

Not thread-safe: one thread (the master's loop) owns a client.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import zmq

from realflow.api.errors import ConfigError, DeadlineError, WorkerError
from realflow.system.auth import MessageCodec
from realflow.system.messages import Request, RequestKind, Response, WorkerStatus
from realflow.system.name_resolve import NameResolver
from realflow.system.stream import DEFAULT_MAX_MESSAGE_BYTES, ServerAddress, configure_socket, recv_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeartbeatPolicy:
    """Ping every `interval_s`; a worker silent for `timeout_s` after a ping is dead."""

    interval_s: float = 1.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.interval_s < self.timeout_s:
            raise ConfigError(
                f"HeartbeatPolicy: need 0 < interval_s < timeout_s, got interval_s={self.interval_s}, "
                f"timeout_s={self.timeout_s}"
            )


@dataclass
class _Peer:
    name: str
    address: ServerAddress
    requests: zmq.Socket
    heartbeats: zmq.Socket
    next_heartbeat: float = 0.0  # monotonic
    unanswered_since: float | None = None  # monotonic time of the first ping not yet answered
    heartbeat_ids: dict[str, float] = field(default_factory=dict)
    status: WorkerStatus | None = None
    status_at: float | None = None  # monotonic
    last_request: Request | None = None


class RequestClient:
    """Sends requests to workers by name; see the module docstring."""

    def __init__(
        self,
        secret: bytes,
        *,
        name: str = "master",
        heartbeat: HeartbeatPolicy | None = HeartbeatPolicy(),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.name = name
        self.heartbeat_policy = heartbeat
        self._codec = MessageCodec(secret)
        self._max_message_bytes = max_message_bytes
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._peers: dict[str, _Peer] = {}
        self._sockets: dict[zmq.Socket, _Peer] = {}
        self._pending: dict[str, tuple[Request, float]] = {}  # id -> (request, sent at time.time())
        self._done: dict[str, Response] = {}

    # ------------------------------------------------------------- connections

    @property
    def workers(self) -> list[str]:
        return list(self._peers)

    def connect(self, worker: str, address: ServerAddress) -> None:
        if worker in self._peers:
            raise ConfigError(f"{self.name}: worker '{worker}' is already connected ({self._peers[worker].address})")
        socks = []
        for endpoint in (address.request_endpoint, address.heartbeat_endpoint):
            s = self._ctx.socket(zmq.DEALER)
            configure_socket(s, self._max_message_bytes)
            s.connect(endpoint)
            self._poller.register(s, zmq.POLLIN)
            socks.append(s)
        peer = _Peer(worker, address, socks[0], socks[1])
        self._peers[worker] = peer
        self._sockets.update({socks[0]: peer, socks[1]: peer})

    def connect_resolved(self, worker: str, resolver: NameResolver, key: str, timeout: float) -> ServerAddress:
        """Wait up to `timeout` s for `key` to be published, then connect to that address."""
        address = ServerAddress.from_json(resolver.get(key, timeout))
        self.connect(worker, address)
        return address

    def status(self, worker: str) -> WorkerStatus | None:
        """The last status `worker` reported in a heartbeat (None before the first)."""
        return self._peer(worker).status

    # ----------------------------------------------------------------- requests

    def send(self, worker: str, kind: RequestKind, payload: Any = None, *, timeout: float) -> Request:
        """Queue a request to `worker` with a deadline `timeout` s from now; returns it."""
        if kind is RequestKind.HEARTBEAT:
            raise ConfigError("send HEARTBEAT with RequestClient.heartbeat(), not send()")
        peer = self._peer(worker)
        request = Request.new(kind, worker, timeout, payload, sender=self.name)
        self._send(peer.requests, peer, request)
        self._pending[request.id] = (request, time.time())
        peer.last_request = request
        return request

    def wait(self, requests: Sequence[Request]) -> list[Response]:
        """The responses to `requests`, in their order; each bounded by its own deadline.

        Raises DeadlineError naming every late worker at the first deadline that
        passes, or WorkerError if a worker stops answering heartbeats. Either way the
        remaining requests are abandoned (their late replies are dropped).
        """
        requests = list(requests)
        self._pump_until(requests, lambda: all(r.id in self._done for r in requests))
        return [self._done.pop(r.id) for r in requests]

    def wait_any(self, requests: Sequence[Request]) -> list[Response]:
        """The responses among `requests` that have arrived: at least one, as soon as one is in.

        Deadlines and heartbeats are checked as in `wait`; on an error every request
        of `requests` is abandoned. The others stay pending for a later `wait_any`.
        """
        requests = list(requests)
        if not requests:
            raise ConfigError(f"{self.name}: wait_any() needs at least one request")
        self._pump_until(requests, lambda: any(r.id in self._done for r in requests))
        return [self._done.pop(r.id) for r in requests if r.id in self._done]

    def _pump_until(self, requests: list[Request], ready: Callable[[], bool]) -> None:
        """Receive replies until `ready()`, checking the deadlines of the requests
        still out and the heartbeats meanwhile; on an error, abandon `requests`."""
        try:
            while not ready():
                now = time.time()
                out = [r for r in requests if r.id not in self._done]
                late = [r for r in out if r.deadline <= now]
                if late:
                    raise DeadlineError(self._describe_late(late, now))
                wake = min(r.deadline for r in out) - now
                if self.heartbeat_policy is not None:
                    wake = min(wake, self._heartbeat_tick())
                self._pump(wake)
        except BaseException:
            self._abandon(requests)
            raise

    def call(self, worker: str, kind: RequestKind, payload: Any = None, *, timeout: float) -> Any:
        """Send one request and return its payload (WorkerError if the handler raised)."""
        return self.wait([self.send(worker, kind, payload, timeout=timeout)])[0].unwrap()

    def call_all(self, kind: RequestKind, payloads: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send `kind` with `payloads[worker]` to each worker; their payloads by worker.

        Fails fast: as soon as a handler has raised, WorkerError carries that
        failure's traceback and names every worker failed so far and those still
        working (whose requests are abandoned). Waiting for them could take until
        their deadline: in a collective request (CONFIGURE joins the gloo group)
        the others wait for the failed peer until their own timeout.
        """
        requests = [self.send(w, kind, p, timeout=timeout) for w, p in payloads.items()]
        got: dict[str, Response] = {}
        while len(got) < len(requests):
            for r in self.wait_any([r for r in requests if r.id not in got]):
                got[r.request_id] = r
            failed = [got[r.id] for r in requests if r.id in got and not got[r.id].ok]
            if failed:
                outstanding = [r for r in requests if r.id not in got]
                self._abandon(outstanding)
                try:
                    failed[0].unwrap()
                except WorkerError as e:
                    others = [r.worker for r in failed[1:]]
                    extra = f" (also failed: {others})" if others else ""
                    still = f"; abandoned: {[r.target for r in outstanding]}" if outstanding else ""
                    raise WorkerError(
                        f"{kind.name} failed on {len(failed)} of {len(requests)} workers{extra}{still}: {e}"
                    ) from None
        return {r.target: got[r.id].payload for r in requests}

    # --------------------------------------------------------------- heartbeats

    def heartbeat(self, worker: str, timeout: float) -> WorkerStatus:
        """Ping `worker` now and wait up to `timeout` s for its status."""
        peer = self._peer(worker)
        request = self._ping(peer, timeout)
        deadline = time.time() + timeout
        while request.id in peer.heartbeat_ids:
            left = deadline - time.time()
            if left <= 0:
                peer.heartbeat_ids.pop(request.id, None)
                raise DeadlineError(
                    f"worker '{worker}' ({peer.address.heartbeat_endpoint}, pid {peer.address.pid}) did not answer "
                    f"a heartbeat within {timeout:g} s: the process died or is hung"
                )
            self._pump(left)
        assert peer.status is not None
        return peer.status

    def tick(self) -> None:
        """Send due heartbeats, read what arrived, and raise WorkerError for a dead worker."""
        if self.heartbeat_policy is not None:
            self._heartbeat_tick()
        self._pump(0.0)

    def _ping(self, peer: _Peer, timeout: float) -> Request:
        request = Request.new(RequestKind.HEARTBEAT, peer.name, timeout, sender=self.name)
        now = time.monotonic()
        self._send(peer.heartbeats, peer, request, heartbeat=True)
        peer.heartbeat_ids[request.id] = now
        if peer.unanswered_since is None:
            peer.unanswered_since = now
        return request

    def _heartbeat_tick(self) -> float:
        """Ping the workers that are due; raise for dead ones. Seconds until the next duty."""
        policy = self.heartbeat_policy
        assert policy is not None
        now = time.monotonic()
        for peer in self._peers.values():
            if peer.unanswered_since is not None and now - peer.unanswered_since > policy.timeout_s:
                raise WorkerError(self._describe_dead(peer, now))
            if now >= peer.next_heartbeat:
                for hid, sent in list(peer.heartbeat_ids.items()):
                    if now - sent > policy.timeout_s:
                        del peer.heartbeat_ids[hid]
                self._ping(peer, policy.timeout_s)
                peer.next_heartbeat = now + policy.interval_s
        duties = [p.next_heartbeat - now for p in self._peers.values()]
        duties += [
            p.unanswered_since + policy.timeout_s - now for p in self._peers.values() if p.unanswered_since is not None
        ]
        return max(0.0, min(duties, default=policy.interval_s))

    # ---------------------------------------------------------------- internals

    def _abandon(self, requests: Sequence[Request]) -> None:
        """Forget `requests`: their late replies are dropped."""
        for r in requests:
            self._pending.pop(r.id, None)
            self._done.pop(r.id, None)

    def _peer(self, worker: str) -> _Peer:
        try:
            return self._peers[worker]
        except KeyError:
            raise ConfigError(f"{self.name}: no worker named '{worker}'; connected: {sorted(self._peers)}") from None

    def _send(self, sock: zmq.Socket, peer: _Peer, request: Request, heartbeat: bool = False) -> None:
        try:
            sock.send_multipart(self._codec.encode(request), flags=zmq.NOBLOCK)
        except zmq.Again:
            if heartbeat:  # an unsendable ping counts as unanswered; the liveness check reports it
                return
            raise WorkerError(
                f"cannot queue {request.describe()} at {peer.address.request_endpoint}: its send queue is full "
                "(the worker has not been reading requests)"
            ) from None

    def _pump(self, timeout: float) -> None:
        """Wait up to `timeout` s for replies and file every one that arrived."""
        events = self._poller.poll(max(0, math.ceil(timeout * 1000)))  # ceil: never spin near a deadline
        for sock, _ in events:
            peer = self._sockets[sock]
            kind = "heartbeat" if sock is peer.heartbeats else "request"
            where = f"{self.name}: {kind} socket of worker '{peer.name}' ({peer.address.host})"
            while True:
                try:
                    got = recv_message(sock, self._codec, router=False, where=where, flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                if got is not None:
                    self._file(peer, got[1], where)

    def _file(self, peer: _Peer, message: Any, where: str) -> None:
        if not isinstance(message, Response) or message.worker != peer.name:
            what = type(message).__name__ if not isinstance(message, Response) else f"reply from '{message.worker}'"
            logger.warning("%s: dropped a %s (expected a Response from '%s')", where, what, peer.name)
            return
        now = time.monotonic()
        peer.unanswered_since = None  # any authentic reply shows the process is alive
        if message.request_id in self._pending:
            del self._pending[message.request_id]
            self._done[message.request_id] = message
        elif peer.heartbeat_ids.pop(message.request_id, None) is not None:
            peer.status, peer.status_at = message.payload, now
        else:
            logger.debug("%s: dropped a late reply to %s request %s", where, message.kind.name, message.request_id[:8])

    def _describe_late(self, late: list[Request], now: float) -> str:
        lines = []
        for r in late:
            sent = self._pending.get(r.id, (r, r.deadline))[1]
            peer = self._peers[r.target]
            if peer.status is None:
                last = "it never answered a heartbeat"
            else:
                age = time.monotonic() - (peer.status_at or 0.0)
                last = f"its last heartbeat ({age:.1f} s ago) said: {peer.status.describe()}"
            lines.append(
                f"worker '{r.target}' ({peer.address.request_endpoint}, pid {peer.address.pid}) did not answer "
                f"{r.kind.name} request {r.id[:8]} within its deadline of {r.deadline - sent:.2f} s; {last}"
            )
        return "\n".join(lines)

    def _describe_dead(self, peer: _Peer, now: float) -> str:
        silent = now - (peer.unanswered_since or now)
        last = peer.last_request.describe() if peer.last_request else "none"
        status = peer.status.describe() if peer.status else "never answered a heartbeat"
        return (
            f"worker '{peer.name}' ({peer.address.heartbeat_endpoint}, pid {peer.address.pid}) has not answered "
            f"heartbeats for {silent:.1f} s: the process died or is hung. Last request: {last}; "
            f"last status: {status}"
        )

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._peers.clear()
        self._ctx.term()

    def __enter__(self) -> RequestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
