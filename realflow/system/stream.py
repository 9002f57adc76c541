"""What both ends of the ZeroMQ control plane share: addresses, binding, and the
authenticated receive path that drops forged, expired and replayed messages.

The master holds a `RequestClient` (realflow.system.request_client), each worker a
`RequestServer` (realflow.system.request_server). A server binds two ROUTER sockets,
one for requests and one for heartbeats, to random ports (`bind`, port 0) and
publishes them as a `ServerAddress` through name resolution; the client connects a
DEALER to each. Every message is `MessageCodec`-signed (realflow.system.auth);
`recv_message` verifies the HMAC over the received bytes before unpickling and
drops (with a log line naming the peer) anything that fails. `ReplayGuard` then
rejects requests whose deadline has passed or whose id was already seen.

What this module does not do: decide what a request means (the server's handler
table does) or retry (a lost request is reported by its deadline, never resent).
"""
from __future__ import annotations

import errno
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from realflow.api.errors import ConfigError
from realflow.system.auth import AuthError, MessageCodec
from realflow.system.messages import Request

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Bounds what an unauthenticated peer can make us buffer; control messages are small.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ServerAddress:
    """Where a worker's `RequestServer` listens; published as JSON by name resolution."""

    host: str
    port: int
    heartbeat_port: int
    pid: int

    @property
    def request_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def heartbeat_endpoint(self) -> str:
        return f"tcp://{self.host}:{self.heartbeat_port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServerAddress:
        try:
            fields = json.loads(text)
            return cls(host=str(fields["host"]), port=int(fields["port"]),
                       heartbeat_port=int(fields["heartbeat_port"]), pid=int(fields["pid"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"malformed server address {text[:200]!r}: {e}") from None


def configure_socket(sock: zmq.Socket, max_message_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)  # close never blocks on unsent messages
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)


def bind(sock: zmq.Socket, host: str, port: int) -> int:
    """Bind `sock` to host:port (port 0: a free port the kernel picks); the bound port.

    An explicit port that is taken raises ConfigError naming host:port.
    """
    if port == 0:
        sock.bind(f"tcp://{host}:*")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return int(endpoint.rsplit(":", 1)[1])
    try:
        sock.bind(f"tcp://{host}:{port}")
    except zmq.ZMQError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot bind {host}:{port}: address already in use (another process holds the port; "
                "choose another one, or 0 for a free one)"
            ) from None
        raise ConfigError(f"cannot bind {host}:{port}: {e}") from None
    return port


def _peer_of(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address")  # the remote IP, where libzmq knows it
    except (zmq.ZMQError, AttributeError, TypeError, UnicodeDecodeError):
        return "an unknown peer"


def recv_message(
    sock: zmq.Socket, codec: MessageCodec, *, router: bool, where: str, flags: int = 0
) -> tuple[bytes | None, Any, str] | None:
    """One message from `sock`: (identity, message, peer), or None if dropped.

    On a ROUTER socket the first frame is the sender's identity; the rest must
    authenticate. A message that does not is logged with its peer and never unpickled.
    With `flags=zmq.NOBLOCK`, zmq.Again when no message is waiting (a reader drains
    a socket this way: one call per message, no poll before each).
    """
    frames = sock.recv_multipart(flags, copy=False)
    peer = _peer_of(frames[-1])
    identity = frames[0].bytes if router else None
    body = frames[1:] if router else frames
    try:
        message = codec.decode([f.buffer for f in body])
    except AuthError as e:
        logger.warning("%s: dropped a message from %s that failed authentication: %s", where, peer, e)
        return None
    return identity, message, peer


class ReplayGuard:
    """Admits a request once, before its deadline.

    Remembers the ids it admitted until their deadlines pass (after which the
    deadline check alone rejects them), so memory is bounded by the requests alive
    at one time. Not thread-safe: one guard per receiving thread.
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._prune_at = 1024

    def reject_reason(self, request: Request, now: float) -> str | None:
        """Why `request` must be dropped, or None (and it is now remembered)."""
        if request.deadline <= now:
            return f"its deadline passed {now - request.deadline:.3f} s ago"
        if request.id in self._seen:
            return "replayed (its id was already received)"
        self._seen[request.id] = request.deadline
        if len(self._seen) > self._prune_at:
            self._seen = {i: d for i, d in self._seen.items() if d > now}
            self._prune_at = max(1024, 2 * len(self._seen))
        return None
