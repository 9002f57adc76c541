"""The torch.distributed rendezvous of a run's workers: a `TCPStore` the launcher
hosts on 127.0.0.1, which the workers join as clients.

`host_store()` (launcher) binds a listening socket to 127.0.0.1 port 0 itself and
hands it to the store's server (`master_listen_fd`), so
- the port is the socket's from the start: no other process can take it between
  being picked and being bound (the race of picking a "free" port first);
- the store listens on loopback only (a `TCPStore` given a host name and a port
  listens on every interface, whatever the host name says).
`join_group(address, rank, world_size)` (each worker) connects to that store and
initialises the gloo process group through it. The master process hosts the store
but is not a member of the group: it moves no tensors.

Not here: which workers form which data-parallel groups (worker.py, transfer.py).
"""
from __future__ import annotations

import datetime
import socket
from urllib.parse import urlsplit

import torch.distributed as dist

from realflow.api.errors import ConfigError

HOST = "127.0.0.1"
# Bounds the rendezvous and every gloo collective or transfer of the workers (a
# transfer whose peer died fails after this instead of hanging).
DIST_TIMEOUT = datetime.timedelta(seconds=60)


def host_store(timeout: datetime.timedelta) -> tuple[dist.TCPStore, str]:
    """A rendezvous store served from this process on 127.0.0.1; (store, address
    'tcp://127.0.0.1:<port>'). Keep the store referenced for the whole run: the
    server stops (and frees its port) when it is garbage collected."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((HOST, 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        # detach(): the store's server owns the descriptor from here and closes it.
        store = dist.TCPStore(HOST, port, is_master=True, wait_for_workers=False, timeout=timeout,
                              master_listen_fd=listener.detach())
    except BaseException:
        listener.close()  # a no-op once detached
        raise
    return store, f"tcp://{HOST}:{port}"


def parse_address(address: str) -> tuple[str, int]:
    """('127.0.0.1', port) of 'tcp://127.0.0.1:<port>'; ConfigError otherwise."""
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or port == 0:
        raise ConfigError(f"rendezvous address {address!r} is not tcp://<host>:<port>")
    return parts.hostname, port


def join_group(address: str, rank: int, world_size: int, timeout: datetime.timedelta) -> None:
    """Join the gloo process group whose store `host_store` serves at `address`."""
    host, port = parse_address(address)
    store = dist.TCPStore(host, port, world_size=None, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
