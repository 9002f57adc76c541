"""The tensors a worker keeps between MFCs, by sample id.

Outputs of an MFC stay on the worker that produced them; the master only keeps
their metadata and later tells workers to send them (realflow.system.transfer) or
to free them. `SampleStore` holds one single-sample `SequenceSample` per id, to
which keys are added as they are produced or received.

Not here: deciding what to keep or move (the master's plan does that).
"""
from __future__ import annotations

from typing import Hashable, Iterable

import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import DataError


class SampleStore:
    def __init__(self) -> None:
        self._samples: dict[Hashable, SequenceSample] = {}

    def __len__(self) -> int:
        return len(self._samples)

    def put(self, batch: SequenceSample) -> None:
        """Add the keys of every sample of `batch` (views of its tensors, no copy)."""
        if batch.data is None:
            raise DataError(f"SampleStore.put: {batch!r} carries no tensors")
        for sample in batch.unpack():
            sid = sample.ids[0]
            if sid in self._samples:
                self._samples[sid].update_(sample)
            else:
                self._samples[sid] = sample

    def has(self, sid: Hashable, key: str) -> bool:
        sample = self._samples.get(sid)
        return sample is not None and key in sample.keys

    def holdings(self) -> dict[Hashable, set[str]]:
        """The keys held for each id (what a worker reports to the master)."""
        return {sid: set(s.keys) for sid, s in self._samples.items()}

    def tensor(self, sid: Hashable, key: str) -> torch.Tensor:
        """The rows of `key` for sample `sid`."""
        if not self.has(sid, key):
            have = sorted(self._samples[sid].keys) if sid in self._samples else None
            raise DataError(f"SampleStore: no key '{key}' for sample {sid!r} here (keys held for it: {have})")
        t = self._samples[sid].data[key]  # type: ignore[index]
        assert t is not None
        return t

    def get(self, ids: Iterable[Hashable], keys: Iterable[str]) -> SequenceSample:
        """A batch of `ids` (in that order) with `keys`."""
        ids, keys = list(ids), sorted(set(keys))
        for sid in ids:
            for k in keys:
                self.tensor(sid, k)  # raises, naming what is missing
        return SequenceSample.gather([self._samples[sid] for sid in ids], keys=keys)

    def free(self, ids: Iterable[Hashable]) -> int:
        """Drop every key of `ids`; returns how many samples were held."""
        return sum(self._samples.pop(sid, None) is not None for sid in ids)
