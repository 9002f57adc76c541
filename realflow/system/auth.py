"""The per-run secret and the authenticated encoding of control messages.

The launcher makes one secret per run (`new_secret`, 32 random bytes) and hands it
to its workers out of band: in the environment as hex (`REALFLOW_SECRET`) or in a
file created with mode 0600 whose path is in `REALFLOW_SECRET_FILE`. A secret file
that group or others may read is refused, naming the file and its mode. The secret
never goes through name resolution, logs, or sockets.

`MessageCodec` turns a message into three frames `[version, tag, body]`: `body` is
the pickle of the message, `tag` the HMAC-SHA256 of version + body under the
secret. `decode` checks the tag over the exact received bytes with
`hmac.compare_digest` *before* anything is unpickled, so a peer without the secret
cannot make this process run code. (Pickle is only acceptable because of that
check; it is the authentication, not the format, that makes it safe.)

What this module does not do: encrypt (traffic stays readable on the wire, and
sockets bind 127.0.0.1 unless configured otherwise), or detect replays and expired
messages; that needs the message's id and deadline, see realflow.system.stream.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
import stat
from pathlib import Path
from typing import Any, Mapping, Sequence

from realflow.api.errors import ConfigError, RealflowError

SECRET_ENV = "REALFLOW_SECRET"
SECRET_FILE_ENV = "REALFLOW_SECRET_FILE"
SECRET_BYTES = 32
WIRE_VERSION = b"realflow/1"
_TAG_BYTES = hashlib.sha256().digest_size


class AuthError(RealflowError):
    """A message failed authentication (wrong secret, forged, truncated or malformed)."""


def new_secret() -> bytes:
    """A fresh per-run secret."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_env(secret: bytes) -> dict[str, str]:
    """The environment entries that hand `secret` to a child process."""
    return {SECRET_ENV: _check_secret(secret, "the secret").hex()}


def write_secret_file(path: str | os.PathLike, secret: bytes) -> Path:
    """Create `path` with mode 0600 holding `secret` as hex; refuses to overwrite."""
    path = Path(path)
    text = _check_secret(secret, "the secret").hex().encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"secret file {path} already exists; a run writes a fresh one") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask did
        os.write(fd, text)
    finally:
        os.close(fd)
    return path


def read_secret_file(path: str | os.PathLike) -> bytes:
    """The secret in `path`; ConfigError if group or others may access the file."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} does not exist") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"secret file {path} has mode {mode:04o}: group or others may access it; "
            f"refusing to use it (chmod 600 {path})"
        )
    if st.st_uid != os.getuid():
        raise ConfigError(f"secret file {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    return _parse_hex(path.read_text().strip(), f"secret file {path}")


def load_secret(environ: Mapping[str, str] | None = None) -> bytes:
    """The run's secret from `REALFLOW_SECRET` (hex) or the file named by `REALFLOW_SECRET_FILE`."""
    env = os.environ if environ is None else environ
    if SECRET_ENV in env:
        return _parse_hex(env[SECRET_ENV], f"${SECRET_ENV}")
    if SECRET_FILE_ENV in env:
        return read_secret_file(env[SECRET_FILE_ENV])
    raise ConfigError(
        f"no run secret: set {SECRET_ENV} (hex) or {SECRET_FILE_ENV} (a mode-0600 file); "
        "the launcher does this for the processes it starts"
    )


def _parse_hex(text: str, where: str) -> bytes:
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{where} is not a hex string") from None
    return _check_secret(secret, where)


def _check_secret(secret: bytes, where: str) -> bytes:
    if not isinstance(secret, bytes) or len(secret) < SECRET_BYTES:
        n = len(secret) if isinstance(secret, bytes) else type(secret).__name__
        raise ConfigError(f"{where} must be at least {SECRET_BYTES} bytes, got {n}")
    return secret


class MessageCodec:
    """Signs and pickles messages; verifies, then unpickles them."""

    def __init__(self, secret: bytes) -> None:
        # Keyed once; each tag starts from a copy. Copies only read it, so threads
        # (a server's main and heartbeat threads) may share one codec.
        self._keyed = hmac.new(_check_secret(secret, "the secret"), WIRE_VERSION, hashlib.sha256)

    def _tag(self, body: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(body)
        return mac.digest()

    def encode(self, message: Any) -> list[bytes]:
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        return [WIRE_VERSION, self._tag(body), body]

    def decode(self, frames: Sequence[bytes | memoryview]) -> Any:
        """The message in `frames`; AuthError, without unpickling, if the tag does not match."""
        if len(frames) != 3:
            raise AuthError(f"expected 3 frames (version, tag, body), got {len(frames)}")
        version, tag, body = frames
        if bytes(version) != WIRE_VERSION:
            raise AuthError(f"unknown wire version {bytes(version)[:32]!r} (expected {WIRE_VERSION!r})")
        if len(tag) != _TAG_BYTES or not hmac.compare_digest(self._tag(body), bytes(tag)):
            raise AuthError("HMAC check failed (forged message, or a peer with another secret)")
        return pickle.loads(body)
