"""Runs a `TransferPlan` over torch.distributed (gloo on CPU, NCCL on GPU).

Each `Transfer` moves one key's packed tensor from its source to its destinations:
a `broadcast` over a process group of exactly its ranks when the `GroupCache` holds
one, otherwise point-to-point `send`/`recv` on the default group (one send per
destination). The result is the same; broadcasts save the source bandwidth when
several consumers need the same data (model-parallel ranks of one dp shard).

Why groups are made up front (`GroupCache.create`, called by every rank of the
world with the same list, e.g. when the workers are configured) and not on first
use: `new_group` must be entered by every rank of the world, in the same order,
even by non-members; and `use_local_synchronization=True` does not lift that in
torch 2.x, because the group's name hashes the number of groups each process has
made, so members with different histories never meet. Point-to-point needs no
group and covers any rank set.

The contract, for every rank that appears in the plan:
- call `run_transfer_plan` with the same plan (and the same metadata), at the
  same point of its stream of plans; ranks outside the plan need not call it.
  Transfers run in plan order, so the lowest unfinished transfer always has all
  its ranks waiting on it: no deadlock, whatever the rank sets overlap.
- receive buffers are allocated from the metadata (`SequenceSample.meta()` of the
  batch: seqlens, trailing shapes, dtypes) before the first byte moves, and every
  shape is checked against it first, so a mismatch raises DataError instead of a
  hung or corrupt collective. A rank that fails after communication started leaves
  its peers waiting until the process-group timeout: keep it short.

After the plan, every receiver's `SampleStore` holds the received (id, key) rows
as views of one buffer per transfer, plus the per-sample metadata from `meta`.

Not here: deciding what moves (realflow.system.transfer_plan), or parameters
(reallocation is realflow.parallel's).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import torch
import torch.distributed as dist

from realflow.api.data import SequenceSample
from realflow.api.errors import ConfigError, DataError
from realflow.system.sample_store import SampleStore
from realflow.system.transfer_plan import DataKey, Transfer, TransferPlan

DEFAULT_GROUP_TIMEOUT = datetime.timedelta(seconds=120)


class GroupCache:
    """Process groups by their sorted member ranks, made once, collectively.

    `create` must be called by every rank of the world with the same rank sets in
    the same order (it wraps `dist.new_group`). The whole world maps to the default
    group. Everything in the trial that needs a group over an arbitrary rank set
    should share one cache, so that no set is made twice.
    """

    def __init__(self, backend: str | None = None, timeout: datetime.timedelta = DEFAULT_GROUP_TIMEOUT) -> None:
        self.backend = backend
        self.timeout = timeout
        self._groups: dict[tuple[int, ...], dist.ProcessGroup | None] = {}  # None: this rank is not a member

    def create(self, rank_sets: Iterable[Sequence[int]]) -> None:
        """Make the groups not made yet (collective over the whole world; same list everywhere)."""
        world = dist.get_world_size()
        for ranks in rank_sets:
            key = tuple(sorted(set(ranks)))
            if len(key) < 2 or key[0] < 0 or key[-1] >= world:
                raise ConfigError(f"GroupCache: cannot make a group of ranks {list(ranks)} in a world of {world}")
            if key in self._groups:
                continue
            if len(key) == world:
                group = dist.group.WORLD
            else:
                group = dist.new_group(list(key), timeout=self.timeout, backend=self.backend)
            self._groups[key] = group if dist.get_rank() in key else None

    def get(self, ranks: Sequence[int]) -> dist.ProcessGroup | None:
        """The group of exactly `ranks` if it was made (and this rank is in it), else None."""
        return self._groups.get(tuple(sorted(set(ranks))))

    def __len__(self) -> int:
        return len(self._groups)


@dataclass(frozen=True)
class _Layout:
    """Where each id's rows sit in a transfer's packed tensor."""

    rows: tuple[int, ...]  # per id
    shape: tuple[int, ...]  # (total rows, *trailing)
    dtype: torch.dtype


def _layout(t: Transfer, meta: SequenceSample, index: dict[Hashable, int]) -> _Layout:
    if t.key not in meta.keys:
        raise DataError(
            f"transfer of key '{t.key}' from rank {t.src}: the metadata has no such key ({sorted(meta.keys)})"
        )
    rows = []
    for sid in t.ids:
        if sid not in index:
            raise DataError(f"transfer of key '{t.key}' from rank {t.src}: sample {sid!r} is not in the metadata")
        rows.append(sum(meta.seqlens[t.key][index[sid]]))
    return _Layout(tuple(rows), (sum(rows), *meta.trailing_shapes[t.key]), meta.dtypes[t.key])


def _pack(t: Transfer, layout: _Layout, store: SampleStore, device: torch.device) -> torch.Tensor:
    parts = [store.tensor(sid, t.key) for sid in t.ids]
    for sid, n, part in zip(t.ids, layout.rows, parts):
        want = (n, *layout.shape[1:])
        if tuple(part.shape) != want or part.dtype != layout.dtype:
            raise DataError(
                f"rank {t.src} holds key '{t.key}' of sample {sid!r} as {tuple(part.shape)} {part.dtype}, "
                f"but the metadata says {want} {layout.dtype}"
            )
    packed = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return packed.to(device).contiguous()


def run_transfer_plan(
    plan: TransferPlan,
    meta: SequenceSample,
    store: SampleStore,
    groups: GroupCache,
    device: torch.device | str = "cpu",
) -> list[DataKey]:
    """Run this rank's part of `plan`; returns the (id, key) pairs it received, in plan order.

    `meta` must describe every (id, key) of the plan; `store` must hold what this
    rank sends. For NCCL pass the rank's CUDA device.
    """
    rank = dist.get_rank()
    device = torch.device(device)
    mine = plan.for_rank(rank)
    index = {sid: i for i, sid in enumerate(meta.ids)}
    # Check and allocate everything before any communication (see the module docstring).
    layouts = [_layout(t, meta, index) for t in mine]
    buffers = [
        _pack(t, lay, store, device) if t.src == rank else torch.empty(lay.shape, dtype=lay.dtype, device=device)
        for t, lay in zip(mine, layouts)
    ]
    for t, buf in zip(mine, buffers):
        if buf.numel() > 0:  # every member knows the size from the metadata, so all skip together
            _move(t, buf, rank, groups.get(t.ranks))
    received: list[DataKey] = []
    for t, lay, buf in zip(mine, layouts, buffers):
        if t.src != rank:
            _store_received(t, lay, buf, meta, index, store)
            received.extend((sid, t.key) for sid in t.ids)
    return received


def _move(t: Transfer, buf: torch.Tensor, rank: int, group: dist.ProcessGroup | None) -> None:
    if group is not None:
        dist.broadcast(buf, src=t.src, group=group)
    elif rank == t.src:
        for dst in t.dsts:  # one after another; each destination posts its one recv
            dist.send(buf, dst=dst)
    else:
        dist.recv(buf, src=t.src)


def _store_received(
    t: Transfer, lay: _Layout, buf: torch.Tensor, meta: SequenceSample, index: dict[Hashable, int], store: SampleStore
) -> None:
    """Put the packed rows of `t` into `store` as a batch of its ids (views of `buf`)."""
    positions = [index[sid] for sid in t.ids]
    batch = SequenceSample.unchecked(
        keys={t.key},
        ids=list(t.ids),
        seqlens={t.key: [list(meta.seqlens[t.key][i]) for i in positions]},
        trailing_shapes={t.key: lay.shape[1:]},
        dtypes={t.key: lay.dtype},
        data={t.key: buf},
        metadata={mk: [values[i] for i in positions] for mk, values in meta.metadata.items()},
    )
    store.put(batch)
