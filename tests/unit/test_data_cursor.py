"""The data cursor: every sample once per epoch, deterministic, exact resume."""
from __future__ import annotations

import pytest
import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import ConfigError
from realflow.system.data_cursor import DataCursor

DATA = [SequenceSample.from_default([f"s{i}"], [2], {"x": torch.tensor([i, i])}) for i in range(10)]


def _ids(cursor: DataCursor, n: int) -> list[list[str]]:
    return [cursor.next_batch().ids for _ in range(n)]


def test_each_epoch_covers_full_batches_once():
    batches = _ids(DataCursor(DATA, batch_size=3, seed=1), 6)  # 3 batches an epoch, 1 left over
    for epoch in (batches[:3], batches[3:]):
        flat = [i for b in epoch for i in b]
        assert len(set(flat)) == 9
    assert batches[:3] != batches[3:]  # reshuffled


def test_resume_gives_the_same_batches():
    straight = _ids(DataCursor(DATA, 4, seed=2), 7)
    first = DataCursor(DATA, 4, seed=2)
    head = _ids(first, 3)
    second = DataCursor(DATA, 4, seed=2)
    second.load_state_dict(first.state_dict())
    assert head + _ids(second, 4) == straight


def test_resume_refuses_other_data():
    state = DataCursor(DATA, 2, seed=1).state_dict()
    with pytest.raises(ConfigError, match="saved for 10 samples with seed 1"):
        DataCursor(DATA[:5], 2, seed=1).load_state_dict(state)


def test_batch_bigger_than_data():
    with pytest.raises(ConfigError, match="10 samples, fewer than one batch of 11"):
        DataCursor(DATA, 11, seed=1)
