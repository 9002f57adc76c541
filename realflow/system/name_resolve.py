"""Name resolution: how the processes of a trial find each other.

A worker binds its sockets to random ports and publishes `key -> value` (values are
strings, usually JSON); the master waits for the keys it needs. One small
interface, `NameResolver`, with two backends:

- `MemoryNameResolver`: a dict behind a condition variable; thread-safe, one process
  (tests, in-process runs).
- `FileNameResolver` (the default): a directory tree, one directory per key segment
  and the value in its `.value` file. Writes go to a temporary file that is renamed
  (or hard-linked, for add-if-absent) into place, so readers never see half a value
  and two processes racing to add the same key cannot both win. Works across the
  processes of one machine, or across machines on a shared filesystem.

Entries may carry a time to live: an expired entry reads as absent (a publisher
refreshes it by adding it again with `replace=True`). Keys are validated by
`realflow.system.names`, which also spells the keys of a trial; `reset(experiment,
trial)` clears what an earlier run of the same trial left behind.

Adding a Ray backend (the Ray launcher issue): subclass `NameResolver` over Ray's
internal KV store (`ray.experimental.internal_kv`: put with overwrite, get, list
by prefix, delete by prefix), store `{"value", "expires_at"}` JSON as the file
backend does, implement `add`, `_read`, `get_subtree`, `delete`, `clear_subtree`,
and return it from `make_name_resolver` for `backend="ray"`.

What this module deliberately does not do: hold secrets (the HMAC secret is handed
over out of band, see realflow.system.auth) or keep entries alive from a thread.
"""
from __future__ import annotations

import abc
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from realflow.api.errors import ConfigError, DeadlineError, RealflowError
from realflow.system import names

_VALUE_FILE = ".value"
_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.05


class NameExistsError(RealflowError, KeyError):
    """`add(..., replace=False)` found the key already present."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class NameResolver(abc.ABC):
    """Keys to string values, with waits that have deadlines."""

    @abc.abstractmethod
    def add(self, key: str, value: str, *, replace: bool = False, ttl: float | None = None) -> None:
        """Publish `key`. Raises NameExistsError if it is present (and live) unless `replace`.

        `ttl` (seconds): the entry reads as absent once that time has passed.
        """

    @abc.abstractmethod
    def _read(self, key: str) -> str | None:
        """The live value of `key`, or None."""

    @abc.abstractmethod
    def get_subtree(self, prefix: str) -> dict[str, str]:
        """Every live entry at or below `prefix`, by key, sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove `key`; False if it was not there."""

    @abc.abstractmethod
    def clear_subtree(self, prefix: str) -> int:
        """Remove every entry at or below `prefix`; returns how many there were."""

    def _pause(self, key: str, seconds: float) -> None:
        """Wait up to `seconds` for `key` to change (backends may wake up early)."""
        time.sleep(seconds)

    def get(self, key: str, timeout: float = 0.0) -> str:
        """The value of `key`, waiting up to `timeout` seconds for it to appear.

        Raises DeadlineError naming the key and the seconds waited.
        """
        names.check_key(key)
        start = time.monotonic()
        deadline = start + max(0.0, timeout)
        pause = _POLL_MIN_S
        while True:
            value = self._read(key)
            if value is not None:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - start
                raise DeadlineError(
                    f"name '{key}' was not published within {waited:.2f} s "
                    f"(timeout {timeout:g} s; {type(self).__name__})"
                )
            self._pause(key, min(pause, left))
            pause = min(pause * 2, _POLL_MAX_S)

    def wait(self, key: str, timeout: float) -> None:
        """Return once `key` is published; DeadlineError after `timeout` seconds."""
        self.get(key, timeout)

    def reset(self, experiment: str, trial: str) -> int:
        """Clear the entries of an earlier run of this trial; returns how many there were."""
        return self.clear_subtree(names.trial_root(experiment, trial))


def _expired(expires_at: float | None, now: float) -> bool:
    return expires_at is not None and expires_at <= now


def _expiry(ttl: float | None) -> float | None:
    if ttl is None:
        return None
    if ttl <= 0:
        raise ConfigError(f"name-resolution ttl must be > 0 seconds, got {ttl}")
    return time.time() + ttl


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + "/")


class MemoryNameResolver(NameResolver):
    """In one process; thread-safe. Waits wake up as soon as a key is added."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, float | None]] = {}
        self._cond = threading.Condition()

    def add(self, key: str, value: str, *, replace: bool = False, ttl: float | None = None) -> None:
        names.check_key(key)
        _check_value(key, value)
        expires_at = _expiry(ttl)
        with self._cond:
            if not replace and self._live(key) is not None:
                raise NameExistsError(f"name '{key}' is already published (pass replace=True to overwrite)")
            self._entries[key] = (value, expires_at)
            self._cond.notify_all()

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None or _expired(entry[1], time.time()):
            return None
        return entry[0]

    def _read(self, key: str) -> str | None:
        with self._cond:
            return self._live(key)

    def _pause(self, key: str, seconds: float) -> None:
        with self._cond:
            if self._live(key) is None:
                self._cond.wait(seconds)

    def get_subtree(self, prefix: str) -> dict[str, str]:
        names.check_key(prefix)
        with self._cond:
            found = {k: self._live(k) for k in self._entries if _under(k, prefix)}
        return {k: v for k, v in sorted(found.items()) if v is not None}

    def delete(self, key: str) -> bool:
        names.check_key(key)
        with self._cond:
            return self._entries.pop(key, None) is not None

    def clear_subtree(self, prefix: str) -> int:
        names.check_key(prefix)
        with self._cond:
            doomed = [k for k in self._entries if _under(k, prefix)]
            for k in doomed:
                del self._entries[k]
        return len(doomed)


class FileNameResolver(NameResolver):
    """A directory tree under `root` (created with mode 0700); works across processes."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.root.stat().st_uid
        if owner != os.getuid():
            raise ConfigError(
                f"name-resolution root {self.root} belongs to uid {owner}, not to this user ({os.getuid()}); "
                "another user could redirect this run's connections: choose another root"
            )

    def _dir(self, key: str) -> Path:
        return self.root.joinpath(*names.check_key(key).split("/"))

    def add(self, key: str, value: str, *, replace: bool = False, ttl: float | None = None) -> None:
        _check_value(key, value)
        folder = self._dir(key)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = folder / _VALUE_FILE
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"value": value, "expires_at": _expiry(ttl)}))
        try:
            if replace:
                os.replace(tmp, target)
                return
            for _ in range(2):
                try:
                    os.link(tmp, target)  # atomic create-if-absent, even across processes
                    return
                except FileExistsError:
                    if self._load(target) is not None:
                        raise NameExistsError(
                            f"name '{key}' is already published in {self.root} (pass replace=True to overwrite)"
                        ) from None
                    _unlink(target)  # an expired entry: take its place
            raise NameExistsError(f"name '{key}' is being published concurrently by another process")
        finally:
            _unlink(tmp)

    @staticmethod
    def _load(path: Path) -> str | None:
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        if _expired(entry["expires_at"], time.time()):
            return None
        return entry["value"]

    def _read(self, key: str) -> str | None:
        return self._load(self._dir(key) / _VALUE_FILE)

    def get_subtree(self, prefix: str) -> dict[str, str]:
        top = self._dir(prefix)
        found = {}
        for path in top.rglob(_VALUE_FILE):
            value = self._load(path)
            if value is not None:
                found["/".join(path.parent.relative_to(self.root).parts)] = value
        return dict(sorted(found.items()))

    def delete(self, key: str) -> bool:
        return _unlink(self._dir(key) / _VALUE_FILE)

    def clear_subtree(self, prefix: str) -> int:
        top = self._dir(prefix)
        # Move the tree out of sight first: readers see all of it or none of it.
        trash = self.root / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(top, trash)
        except FileNotFoundError:
            return 0
        n = sum(1 for _ in trash.rglob(_VALUE_FILE))
        shutil.rmtree(trash, ignore_errors=True)
        return n


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _check_value(key: str, value: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"name '{key}': values are strings (JSON-encode others), got {type(value).__name__}")


def default_root() -> Path:
    """`<tmp>/realflow-<uid>/name_resolve`: private to the user, shared by their processes."""
    return Path(tempfile.gettempdir()) / f"realflow-{os.getuid()}" / "name_resolve"


@dataclass
class NameResolveConfig:
    """Which name-resolution backend a run uses.

    backend: "file" (default; one machine or a shared filesystem) or "memory" (one
    process). root: the directory of the file backend (default: `default_root()`).
    """

    backend: str = "file"
    root: str | None = None


def make_name_resolver(cfg: NameResolveConfig) -> NameResolver:
    if cfg.backend == "file":
        return FileNameResolver(cfg.root if cfg.root is not None else default_root())
    if cfg.backend == "memory":
        return MemoryNameResolver()
    if cfg.backend == "ray":
        raise ConfigError("name_resolve.backend='ray' is not available yet (it comes with the Ray launcher)")
    raise ConfigError(f"unknown name_resolve.backend {cfg.backend!r}; choose 'file' or 'memory'")
