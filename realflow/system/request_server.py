"""The worker's end of the control plane: receive a request, dispatch it, reply.

`RequestServer` binds two ROUTER sockets (127.0.0.1 by default; ports picked by the
kernel unless given):

- the *request* socket, served by the thread that calls `serve()` / `serve_once()`
  (the worker's main thread, where the models live). Requests are handled one at a
  time through a handler table `{RequestKind: callable(Request) -> payload}`; a
  handler that raises produces an error `Response` carrying the remote traceback.
- the *heartbeat* socket, served by a daemon thread that answers HEARTBEAT with a
  `WorkerStatus` at once, even while a long request runs on the main thread.

Busy versus dead: a worker whose heartbeats are answered is alive; the status says
whether it is idle or busy, with which request and for how long, so the master
waits for a busy worker until the request's own deadline. A worker whose
heartbeats go unanswered is dead (process gone) or hung so badly that it cannot
run a Python thread (stuck holding the GIL). A worker that answers heartbeats but
never finishes its request (a deadlocked collective, an endless loop) is caught by
the request's deadline, and the error shows for how long it has been busy.

Incoming requests pass three checks before a handler sees them: the HMAC (forged or
foreign messages are dropped and logged, never unpickled), the target name (a
request for another worker is dropped), and the deadline/replay guard. Dropped
requests get no reply; the client reports them when their deadline passes.

Deliberately not here: what the handlers do (the model worker), process
lifecycle (the launcher).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
from typing import Any, Callable, Mapping

import zmq

from realflow.api.errors import ConfigError, DeadlineError
from realflow.system.auth import MessageCodec
from realflow.system.messages import Request, RequestKind, Response, WorkerState, WorkerStatus
from realflow.system.name_resolve import NameResolver
from realflow.system.stream import (
    DEFAULT_HOST,
    DEFAULT_MAX_MESSAGE_BYTES,
    ReplayGuard,
    ServerAddress,
    bind,
    configure_socket,
    recv_message,
)

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Any]
_HEARTBEAT_POLL_MS = 100  # how quickly the heartbeat thread notices close()


class _Status:
    """What the main thread is doing, read by the heartbeat thread."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self.name = name
        self.host = socket.gethostname()
        self._request: Request | None = None
        self._started = 0.0
        self._served = 0
        self._last_error: str | None = None
        self._last_contact = time.monotonic()

    def begin(self, request: Request) -> None:
        with self._lock:
            self._request, self._started = request, time.monotonic()

    def end(self, error: str | None) -> None:
        with self._lock:
            self._request = None
            self._served += 1
            if error is not None:
                self._last_error = error

    def contact(self) -> None:
        with self._lock:
            self._last_contact = time.monotonic()

    def silent_for(self) -> float:
        with self._lock:
            return time.monotonic() - self._last_contact

    def snapshot(self) -> WorkerStatus:
        with self._lock:
            req = self._request
            return WorkerStatus(
                worker=self.name,
                host=self.host,
                pid=os.getpid(),
                state=WorkerState.IDLE if req is None else WorkerState.BUSY,
                request_id=None if req is None else req.id,
                kind=None if req is None else req.kind,
                busy_for_s=0.0 if req is None else time.monotonic() - self._started,
                served=self._served,
                last_error=self._last_error,
            )


class RequestServer:
    """Serves requests addressed to worker `name`; see the module docstring."""

    def __init__(
        self,
        name: str,
        secret: bytes,
        handlers: Mapping[RequestKind, Handler],
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        heartbeat_port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if RequestKind.HEARTBEAT in handlers:
            raise ConfigError(f"worker '{name}': HEARTBEAT is answered by the server itself; remove its handler")
        for kind, fn in handlers.items():
            if not isinstance(kind, RequestKind) or not callable(fn):
                raise ConfigError(
                    f"worker '{name}': handler table entry {kind!r} -> {fn!r} is not RequestKind -> callable"
                )
        self.name = name
        self._codec = MessageCodec(secret)
        self._handlers = dict(handlers)
        self._status = _Status(name)
        self._guard = ReplayGuard()
        self._exited = False
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._poller = zmq.Poller()  # one for the life of the socket: Socket.poll makes one per call
        self._poller.register(self._sock, zmq.POLLIN)
        hb_sock = self._ctx.socket(zmq.ROUTER)
        try:
            for s in (self._sock, hb_sock):
                configure_socket(s, max_message_bytes)
            bound = bind(self._sock, host, port)
            hb_bound = bind(hb_sock, host, heartbeat_port)
        except BaseException:
            self._sock.close()
            hb_sock.close()
            self._ctx.term()
            raise
        self.address = ServerAddress(host=host, port=bound, heartbeat_port=hb_bound, pid=os.getpid())
        self._stop = threading.Event()
        # The heartbeat socket is used only by this thread from here on.
        self._hb_thread = threading.Thread(
            target=self._heartbeat_loop, args=(hb_sock,), name=f"heartbeat-{name}", daemon=True
        )
        self._hb_thread.start()

    # ------------------------------------------------------------------ public

    @property
    def exited(self) -> bool:
        """True once an EXIT request has been answered."""
        return self._exited

    def status(self) -> WorkerStatus:
        return self._status.snapshot()

    def publish(self, resolver: NameResolver, key: str) -> None:
        """Publish this server's address under `key` (replacing a stale entry)."""
        resolver.add(key, self.address.to_json(), replace=True)

    def serve_once(self, timeout: float) -> Request | None:
        """Wait up to `timeout` s for one message; handle it. The request served, or None."""
        if not self._poller.poll(max(0, math.ceil(timeout * 1000))):
            return None
        request, identity = self._admit(self._sock, where=f"worker '{self.name}' request socket")
        if request is None:
            return None
        if request.kind is RequestKind.HEARTBEAT:  # answered here too: it shows the main loop is free
            response = Response(request.id, request.kind, self.name, True, self._status.snapshot())
        else:
            response = self._dispatch(request)
        self._sock.send_multipart([identity, *self._encode(response)])
        if request.kind is RequestKind.EXIT:
            self._exited = True
        return request

    def serve(self, idle_timeout: float) -> None:
        """Serve until an EXIT request has been answered.

        Raises DeadlineError if neither a request nor a heartbeat arrives for
        `idle_timeout` seconds: the master is gone, and the worker must not linger.
        """
        while not self._exited:
            silent = self._status.silent_for()
            if silent > idle_timeout:
                raise DeadlineError(
                    f"worker '{self.name}': no request or heartbeat from the master for {silent:.1f} s "
                    f"(idle_timeout {idle_timeout:g} s); assuming the master is gone"
                )
            self.serve_once(min(1.0, idle_timeout - silent))

    def close(self) -> None:
        self._stop.set()
        self._hb_thread.join(timeout=5 * _HEARTBEAT_POLL_MS / 1000)
        self._sock.close()
        if not self._hb_thread.is_alive():
            self._ctx.term()

    def __enter__(self) -> RequestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _admit(self, sock: zmq.Socket, where: str, guard: ReplayGuard | None = None) -> tuple[Request | None, bytes]:
        """The next request on `sock` if it authenticates, is for us and is fresh."""
        got = recv_message(sock, self._codec, router=True, where=where)
        if got is None:
            return None, b""
        identity, message, peer = got
        if not isinstance(message, Request):
            logger.warning("%s: dropped a %s from %s (expected a Request)", where, type(message).__name__, peer)
            return None, b""
        if message.target != self.name:
            logger.warning(
                "%s: dropped %s from %s: it is addressed to '%s'", where, message.describe(), peer, message.target
            )
            return None, b""
        reason = (guard or self._guard).reject_reason(message, time.time())
        if reason is not None:
            logger.warning("%s: dropped %s from %s: %s", where, message.describe(), peer, reason)
            return None, b""
        self._status.contact()
        return message, identity  # type: ignore[return-value]

    def _dispatch(self, request: Request) -> Response:
        handler = self._handlers.get(request.kind)
        if handler is None:
            if request.kind is RequestKind.EXIT:
                return Response(request.id, request.kind, self.name, True)
            handled = sorted(k.name for k in self._handlers)
            return Response(request.id, request.kind, self.name, False,
                            error=f"worker '{self.name}' has no handler for {request.kind.name} (it handles {handled})")
        self._status.begin(request)
        error = None
        try:
            response = Response(request.id, request.kind, self.name, True, handler(request))
        except Exception as e:  # the master gets the error and the traceback; the worker keeps serving
            error = f"{type(e).__name__}: {e}"
            logger.error("worker '%s': %s failed: %s", self.name, request.describe(), error, exc_info=True)
            response = Response(request.id, request.kind, self.name, False,
                                error=error, traceback=traceback.format_exc())
        finally:
            self._status.end(error)
        late = -request.remaining()
        if late > 0:
            logger.warning("worker '%s': %s finished %.2f s after its deadline", self.name, request.describe(), late)
        return response

    def _encode(self, response: Response) -> list[bytes]:
        try:
            return self._codec.encode(response)
        except Exception as e:  # an unpicklable payload must not take the worker down
            logger.error("worker '%s': cannot encode the reply to %s request %s: %s",
                         self.name, response.kind.name, response.request_id[:8], e)
            return self._codec.encode(Response(
                response.request_id, response.kind, self.name, False,
                error=f"the reply payload could not be pickled: {type(e).__name__}: {e}",
            ))

    def _heartbeat_loop(self, sock: zmq.Socket) -> None:
        guard = ReplayGuard()
        where = f"worker '{self.name}' heartbeat socket"
        try:
            while not self._stop.is_set():
                if not sock.poll(_HEARTBEAT_POLL_MS):
                    continue
                request, identity = self._admit(sock, where, guard)
                if request is None:
                    continue
                if request.kind is not RequestKind.HEARTBEAT:
                    logger.warning("%s: dropped %s (only HEARTBEAT is served here)", where, request.describe())
                    continue
                response = Response(request.id, request.kind, self.name, True, self._status.snapshot())
                sock.send_multipart([identity, *self._codec.encode(response)])
        except zmq.ZMQError as e:  # the context went away under us: nothing left to answer
            if not self._stop.is_set():
                logger.error("%s: heartbeat thread stopped: %s", where, e)
        finally:
            sock.close()
