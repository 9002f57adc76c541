"""The control messages between the master and model workers.

An explicit RPC surface: an enum of request kinds, one `Request` and one `Response`
dataclass, and the `WorkerStatus` a heartbeat returns. Payloads are plain Python
objects (dataclasses of the master/worker modules, `SequenceSample.meta()`s, plans);
bulk tensors never travel here, they go over torch.distributed.

Times: `Request.deadline` is absolute wall-clock time (`time.time()`), because it
is compared in another process (on one machine, or machines with synchronised
clocks). Durations inside a process use `time.monotonic()`.

What this module does not do: encode, sign or send (realflow.system.auth and
realflow.system.stream).
"""
from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from realflow.api.errors import WorkerError


class RequestKind(enum.Enum):
    """What the master asks a worker to do."""

    CONFIGURE = "configure"  # build models, engines and data: before the first step
    RUN_MFC = "run_mfc"  # pre-hooks (data transfer, realloc), the interface call, store outputs
    FETCH_DATA = "fetch_data"  # load the next batch of the data set and report its metadata
    TRANSFER = "transfer"  # take part in a data-transfer plan as a source (the consumer gets it in RUN_MFC)
    FREE_DATA = "free_data"  # drop the stored tensors of finished samples
    SAVE = "save"  # write checkpoints
    EVALUATE = "evaluate"  # run the evaluate of some train MFCs over the held-out set
    HEARTBEAT = "heartbeat"  # answered by the server's heartbeat thread, never by a handler
    EXIT = "exit"  # reply, then leave the serve loop


@dataclass(frozen=True)
class Request:
    """One request to one worker (`target`); `deadline` is absolute `time.time()` seconds."""

    kind: RequestKind
    target: str
    deadline: float
    payload: Any = None
    sender: str = "master"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def new(
        cls, kind: RequestKind, target: str, timeout: float, payload: Any = None, sender: str = "master"
    ) -> Request:
        return cls(kind=kind, target=target, deadline=time.time() + timeout, payload=payload, sender=sender)

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - (time.time() if now is None else now)

    def describe(self) -> str:
        return f"{self.kind.name} request {self.id[:8]} to worker '{self.target}'"


@dataclass(frozen=True)
class Response:
    """The answer to request `request_id`: a payload, or the error and remote traceback."""

    request_id: str
    kind: RequestKind
    worker: str
    ok: bool
    payload: Any = None
    error: str | None = None
    traceback: str | None = None

    def unwrap(self) -> Any:
        """The payload; WorkerError naming the worker, the request and the remote traceback if it failed."""
        if self.ok:
            return self.payload
        raise WorkerError(
            f"worker '{self.worker}' failed {self.kind.name} request {self.request_id[:8]}: {self.error}\n"
            f"--- traceback in worker '{self.worker}' ---\n{self.traceback or '(none)'}"
        )


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"


@dataclass(frozen=True)
class WorkerStatus:
    """What a heartbeat reports: alive, and idle or busy with which request for how long."""

    worker: str
    host: str
    pid: int
    state: WorkerState
    request_id: str | None = None
    kind: RequestKind | None = None
    busy_for_s: float = 0.0
    served: int = 0
    last_error: str | None = None

    def describe(self) -> str:
        if self.state is WorkerState.BUSY:
            kind = self.kind.name if self.kind else "?"
            what = f"busy with {kind} request {(self.request_id or '?')[:8]} for {self.busy_for_s:.1f} s"
        else:
            what = "idle"
        where = f"pid {self.pid} on {self.host}"
        err = f"; last error: {self.last_error}" if self.last_error else ""
        return f"{what} ({where}, {self.served} requests served{err})"
