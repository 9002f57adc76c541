"""Pieces shared by the built-in datasets (and handy for custom ones).

`TokenizedDataset` is the torch map dataset they all derive from: it holds this
rank's items as token lists and builds a fresh one-sample `SequenceSample` on every
`__getitem__` (so callers may mutate what they get). `prepare` runs the common
pipeline: check the tokenizer, drop over-long records with a logged count, then
shuffle and shard by the utility's seed and rank. Dropping happens *before*
sharding, so shard sizes still differ by at most one.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Generic, Hashable, Iterable, Sequence, TypeVar

from torch.utils.data import Dataset

from realflow.api.data import SequenceSample
from realflow.api.dataset.loaders import shard_records
from realflow.api.dataset.registry import DatasetUtility, check_arg
from realflow.api.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TokenizedDataset", "encode", "prepare", "require_tokenizer"]

logger = logging.getLogger("realflow.api.dataset")

Item = TypeVar("Item")


def require_tokenizer(dataset: str, util: DatasetUtility, *, eos: bool = False) -> PreTrainedTokenizerBase:
    """The utility's tokenizer, or ConfigError naming the dataset."""
    tok = util.tokenizer
    if tok is None:
        raise ConfigError(f"dataset '{dataset}': DatasetUtility.tokenizer is None; this dataset tokenizes")
    if eos and tok.eos_token_id is None:
        raise ConfigError(f"dataset '{dataset}': the tokenizer has no eos_token, which this dataset appends")
    return tok


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens added (batched)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def prepare(
    dataset: str,
    util: DatasetUtility,
    source_label: str,
    items: Sequence[Item],
    lengths: Sequence[int],
    max_length: int | None,
) -> list[Item]:
    """Drop items longer than `max_length` (logged), then shuffle and shard.

    `lengths[i]` is what `max_length` bounds for `items[i]` (each dataset says
    which length that is). Raises DatasetError if every item is too long.
    """
    check_arg(dataset, "max_length", max_length, int, minimum=1, optional=True)
    assert len(items) == len(lengths)
    kept = list(items)
    if max_length is not None:
        kept = [it for it, n in zip(items, lengths) if n <= max_length]
        dropped = len(items) - len(kept)
        if not kept:
            raise DatasetError(
                f"dataset '{dataset}': all {len(items)} records are longer than max_length="
                f"{max_length} tokens (the shortest has {min(lengths)})",
                path=source_label,
            )
        if dropped:
            logger.warning(
                "dataset '%s' (%s): dropped %d of %d records longer than max_length=%d tokens",
                dataset, source_label, dropped, len(items), max_length,
            )
    return shard_records(kept, seed=util.seed, dp_rank=util.dp_rank, world_size=util.world_size)


class TokenizedDataset(Dataset, Generic[Item]):
    """A map dataset over prepared items; subclasses define `_id` and `_sample`."""

    def __init__(self, util: DatasetUtility, items: list[Item]) -> None:
        self.util = util
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> SequenceSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: index {i} out of range for {len(self)} samples")
        return self._sample(self._items[i])

    @property
    def ids(self) -> list[Hashable]:
        """Ids of this rank's samples, in `__getitem__` order."""
        return [self._id(it) for it in self._items]

    def drop_ids(self, ids: Iterable[Hashable]) -> int:
        """Remove the samples with these ids (e.g. a curriculum filter); returns how many went."""
        gone = set(ids)
        before = len(self._items)
        self._items = [it for it in self._items if self._id(it) not in gone]
        return before - len(self._items)

    def _id(self, item: Item) -> Hashable:
        raise NotImplementedError

    def _sample(self, item: Item) -> SequenceSample:
        raise NotImplementedError


def union_metadata(records_fields: Sequence[dict[str, Any]], exclude: set[str]) -> list[str]:
    """Sorted field names over all records, so that every sample has the same metadata keys."""
    keys: set[str] = set()
    for f in records_fields:
        keys.update(f)
    return sorted(keys - exclude)
