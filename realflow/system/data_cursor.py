"""Where the run is in its data set: epochs, shuffling, and the next batch.

The cursor is deterministic by seed and checkpointable: `state_dict()` after k
batches and `load_state_dict()` into a new cursor give the same batches from k on.
Incomplete last batches of an epoch are dropped (a batch must hold `batch_size`
distinct samples); the count is logged once per epoch.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import ConfigError

logger = logging.getLogger(__name__)


class DataCursor:
    """Batches of `batch_size` samples from a map dataset, epoch after epoch."""

    def __init__(self, dataset: Sequence[SequenceSample], batch_size: int, seed: int) -> None:
        if len(dataset) < batch_size:
            raise ConfigError(
                f"the data set has {len(dataset)} samples, fewer than one batch of {batch_size}; "
                "lower the batch size (n_seqs) or add data"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0  # index into this epoch's order
        self._order = self._epoch_order(0)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def next_batch(self) -> SequenceSample:
        return SequenceSample.gather([self.dataset[i] for i in self.next_indices()])

    def next_indices(self) -> list[int]:
        """The data-set indices of the next batch (advances the cursor like `next_batch`).

        Only `len(dataset)` is used, so a holder of metadata alone (the distributed
        master) can drive the cursor over `range(n)` and ship the indices.
        """
        if self.position + self.batch_size > len(self._order):
            dropped = len(self._order) - self.position
            if dropped:
                logger.info("epoch %d: %d samples left over after full batches were skipped", self.epoch, dropped)
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_order(self.epoch)
        idx = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != len(self.dataset) or state["seed"] != self.seed:
            raise ConfigError(
                f"cannot resume the data cursor: it was saved for {state['n']} samples with seed {state['seed']}, "
                f"this run has {len(self.dataset)} samples with seed {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._epoch_order(self.epoch)
