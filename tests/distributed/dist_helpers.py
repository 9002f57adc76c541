"""Helpers shared by the multi-process tests: ports, running ranks under a deadline."""
from __future__ import annotations

import socket
import time
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn: Callable[..., None], args: tuple[Any, ...], nprocs: int, deadline_s: float, what: str) -> None:
    """Run fn(rank, *args) in `nprocs` spawned processes; fail (and kill them) past the deadline."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not finish within {deadline_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
