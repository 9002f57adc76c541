"""The tensors a worker keeps between MFCs, by sample id.

Outputs of an MFC stay on the worker that produced them; the master only keeps
their metadata and later tells workers to send them (realflow.system.transfer) or
to free them.

The store keeps every batch as it arrived (a fetched batch, an MFC's outputs, the
rows of one transfer), without copying or splitting it, and an index
(sample id, key) -> (batch, position). `get` hands out a key of a batch whole when
the request asks for exactly that batch's ids in its order (the common case: the
MFCs of a step run on the same ids), and gathers rows otherwise. A batch is dropped
when no (id, key) refers to it any more (`free`, or a newer value of the same key).

Not here: deciding what to keep or move (the master's plan does that).
"""
from __future__ import annotations

from collections import Counter
from itertools import accumulate
from typing import Hashable, Iterable

import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import DataError

_Slot = tuple[int, int]  # (batch handle, position of the sample in it)


class SampleStore:
    def __init__(self) -> None:
        self._batches: dict[int, SequenceSample] = {}
        self._refs: Counter[int] = Counter()  # batch handle -> (id, key) entries pointing at it
        self._where: dict[Hashable, dict[str, _Slot]] = {}  # sample id -> key -> slot
        self._offsets: dict[tuple[int, str], list[int]] = {}  # (handle, key) -> row offsets, computed once
        self._next = 0

    def __len__(self) -> int:
        return len(self._where)

    def put(self, batch: SequenceSample) -> None:
        """Keep every key of every sample of `batch` (the batch itself, no copy);
        a key a sample already has here is replaced."""
        if batch.data is None:
            raise DataError(f"SampleStore.put: {batch!r} carries no tensors")
        handle, self._next = self._next, self._next + 1
        self._batches[handle] = batch
        for i, sid in enumerate(batch.ids):
            slots = self._where.setdefault(sid, {})
            for key in batch.keys:
                old = slots.get(key)
                slots[key] = (handle, i)
                self._refs[handle] += 1
                if old is not None:
                    self._release(old[0])

    def has(self, sid: Hashable, key: str) -> bool:
        return key in self._where.get(sid, ())

    def holdings(self) -> dict[Hashable, set[str]]:
        """The keys held for each id (what a worker reports to the master)."""
        return {sid: set(slots) for sid, slots in self._where.items()}

    def tensor(self, sid: Hashable, key: str) -> torch.Tensor:
        """The rows of `key` for sample `sid` (a view)."""
        handle, i = self._slot(sid, key)
        off = self._rows(handle, key)
        t = self._batches[handle].data[key]  # type: ignore[index]
        assert t is not None
        return t[off[i] : off[i + 1]]

    def get(self, ids: Iterable[Hashable], keys: Iterable[str]) -> SequenceSample:
        """A batch of `ids` (in that order) with `keys`."""
        ids, keys = list(ids), sorted(set(keys))
        slots = {k: [self._slot(sid, k) for sid in ids] for k in keys}  # raises, naming what is missing
        out: SequenceSample | None = None
        for k in keys:
            part = self._whole(slots[k], k) or SequenceSample.gather([self._single(h, i, k) for h, i in slots[k]])
            if out is None:
                out = part
            else:
                out.update_(part)
        if out is None:
            raise DataError("SampleStore.get: no keys asked for")
        return out

    def free(self, ids: Iterable[Hashable]) -> int:
        """Drop every key of `ids`; returns how many samples were held."""
        n = 0
        for sid in ids:
            slots = self._where.pop(sid, None)
            if slots is None:
                continue
            n += 1
            for handle, _ in slots.values():
                self._release(handle)
        return n

    # ----------------------------------------------------------------- helpers

    def _slot(self, sid: Hashable, key: str) -> _Slot:
        slots = self._where.get(sid)
        if slots is None or key not in slots:
            have = sorted(slots) if slots is not None else None
            raise DataError(f"SampleStore: no key '{key}' for sample {sid!r} here (keys held for it: {have})")
        return slots[key]

    def _release(self, handle: int) -> None:
        self._refs[handle] -= 1
        if self._refs[handle] <= 0:
            del self._refs[handle], self._batches[handle]
            for k in [k for k in self._offsets if k[0] == handle]:
                del self._offsets[k]

    def _rows(self, handle: int, key: str) -> list[int]:
        off = self._offsets.get((handle, key))
        if off is None:
            seqlens = self._batches[handle].seqlens[key]
            off = self._offsets[(handle, key)] = [0, *accumulate(sum(lens) for lens in seqlens)]
        return off

    def _whole(self, slots: list[_Slot], key: str) -> SequenceSample | None:
        """Key `key` of one stored batch, if `slots` are exactly its samples in its order."""
        handle = slots[0][0]
        batch = self._batches[handle]
        if batch.bs != len(slots) or any(s != (handle, i) for i, s in enumerate(slots)):
            return None
        return batch.select([key])

    def _single(self, handle: int, i: int, key: str) -> SequenceSample:
        batch = self._batches[handle]
        off = self._rows(handle, key)
        t = batch.data[key]  # type: ignore[index]
        return SequenceSample.unchecked(
            keys={key},
            ids=[batch.ids[i]],
            seqlens={key: [list(batch.seqlens[key][i])]},
            trailing_shapes={key: batch.trailing_shapes[key]},
            dtypes={key: batch.dtypes[key]},
            data={key: t[off[i] : off[i + 1]]},  # type: ignore[index]
            metadata={mk: [v[i]] for mk, v in batch.metadata.items()},
        )
