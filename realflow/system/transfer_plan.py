"""Which data moves between which workers: the data-transfer plan (pure).

Input: where each (sample id, key) lives (the ranks holding it), what each consumer
rank needs (`Need`: ids x keys), and optionally the size of each (id, key). Output:
a `TransferPlan`, a tuple of `Transfer`s, each one broadcast of one key's packed
tensor (the ids' rows concatenated in the listed order) from one source rank to
one or more destination ranks.

Rules, each checked by tests/unit/test_transfer_plan.py:
- a consumer that already holds an (id, key) uses its own copy: nothing is sent;
- every other need is delivered exactly once, and never to a rank that did not ask;
- one source per (id, key), shared by all its consumers, so consumers needing the
  same data are served by one broadcast;
- the source is the least-loaded holder (bytes assigned so far in this plan), ties
  to the lowest rank; items are taken in the order of the needs, so the same
  inputs always give the same plan;
- transfers with the same (source, destinations, key) are merged into one.

Executing a plan (realflow.system.transfer) is collective: every rank that appears
in it runs the transfers it takes part in, in plan order. That order is what
makes the execution deadlock-free, so it must not be changed by the executor.

Not here: sockets, devices, process groups; this module only computes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Hashable, Iterable, Mapping, Sequence

import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import DataError

DataKey = tuple[Hashable, str]  # (sample id, key)


@dataclass(frozen=True)
class Need:
    """Rank `rank` needs keys `keys` of samples `ids`."""

    rank: int
    ids: tuple[Hashable, ...]
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "keys", tuple(self.keys))
        _check_rank(self.rank, "Need.rank")

    def items(self) -> Iterable[DataKey]:
        return ((sid, k) for sid in self.ids for k in self.keys)


@dataclass(frozen=True)
class Transfer:
    """Broadcast key `key` of samples `ids` (packed in that order) from `src` to `dsts`."""

    src: int
    dsts: tuple[int, ...]  # sorted, without src
    key: str
    ids: tuple[Hashable, ...]
    sizes: tuple[int, ...]  # per id, in the unit of the plan's sizes (bytes from sizes_from_meta)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Every rank taking part, sorted: the process group of the broadcast."""
        return tuple(sorted((self.src, *self.dsts)))

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class TransferPlan:
    transfers: tuple[Transfer, ...]

    def for_rank(self, rank: int) -> tuple[Transfer, ...]:
        """The transfers `rank` takes part in, in plan order."""
        return tuple(t for t in self.transfers if t.src == rank or rank in t.dsts)

    def ranks(self) -> tuple[int, ...]:
        """Every rank that takes part in some transfer, sorted."""
        return tuple(sorted({r for t in self.transfers for r in t.ranks}))

    def received_by(self, rank: int) -> list[DataKey]:
        """The (id, key) pairs `rank` receives, in plan order."""
        return [(sid, t.key) for t in self.transfers if rank in t.dsts for sid in t.ids]

    def sent_by_rank(self) -> dict[int, int]:
        """Total size each source sends (a broadcast counts once)."""
        load: dict[int, int] = {}
        for t in self.transfers:
            load[t.src] = load.get(t.src, 0) + t.size
        return dict(sorted(load.items()))


def transfer_plan(
    holders: Mapping[DataKey, Collection[int]],
    needs: Sequence[Need],
    sizes: Mapping[DataKey, int] | None = None,
) -> TransferPlan:
    """The transfers that give every `Need` its data; see the module docstring.

    `holders[(id, key)]`: the ranks holding that data. `sizes[(id, key)]` (default 1
    each) balances the sources and is copied into the transfers. Raises DataError
    naming the rank, sample id and key for a need that no rank can satisfy.
    """
    dsts: dict[DataKey, set[int]] = {}  # insertion order: the order of the needs
    for need in needs:
        for item in need.items():
            held = holders.get(item)
            if not held:
                sid, key = item
                have = sorted(k for (i, k), rs in holders.items() if i == sid and rs)
                raise DataError(
                    f"transfer plan: rank {need.rank} needs key '{key}' of sample {sid!r}, but no rank holds it "
                    f"(keys held for that sample: {have})"
                )
            for r in held:
                _check_rank(r, f"holder of {item!r}")
            if need.rank not in held:
                dsts.setdefault(item, set()).add(need.rank)

    load: dict[int, int] = {}
    groups: dict[tuple[int, tuple[int, ...], str], list[tuple[Hashable, int]]] = {}
    for item, ranks in dsts.items():
        size = 1 if sizes is None else _size(sizes, item)
        src = min(holders[item], key=lambda r: (load.get(r, 0), r))
        load[src] = load.get(src, 0) + size
        sid, key = item
        groups.setdefault((src, tuple(sorted(ranks)), key), []).append((sid, size))

    transfers = [
        Transfer(src=src, dsts=d, key=key, ids=tuple(i for i, _ in entries), sizes=tuple(s for _, s in entries))
        for (src, d, key), entries in sorted(groups.items(), key=lambda kv: kv[0])
    ]
    return TransferPlan(tuple(transfers))


def sizes_from_meta(meta: SequenceSample) -> dict[DataKey, int]:
    """Bytes of every (id, key) of `meta` (rows x trailing elements x element size)."""
    out = {}
    for k in sorted(meta.keys):
        per_row = math.prod(meta.trailing_shapes[k]) * _itemsize(meta.dtypes[k])
        for sid, lens in zip(meta.ids, meta.seqlens[k]):
            out[(sid, k)] = sum(lens) * per_row
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _size(sizes: Mapping[DataKey, int], item: DataKey) -> int:
    try:
        size = sizes[item]
    except KeyError:
        raise DataError(f"transfer plan: no size given for sample {item[0]!r}, key '{item[1]}'") from None
    if not isinstance(size, int) or size < 0:
        raise DataError(f"transfer plan: size of sample {item[0]!r}, key '{item[1]}' must be an int >= 0, got {size!r}")
    return size


def _check_rank(rank: object, what: str) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise DataError(f"transfer plan: {what} must be a rank (int >= 0), got {rank!r}")
