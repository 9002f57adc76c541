"""The packed data plane: `SequenceSample` and how batches are split and regrouped.

A `SequenceSample` is a batch of variable-length sequences stored without padding:
per key, one tensor holding every sequence of every sample concatenated along dim 0,
plus the lengths needed to find them again. Each sample holds a *list* of lengths
per key, so one prompt can carry several responses (GRPO) or a chosen/rejected pair
(reward modelling, DPO). Every operation here (gather, split, micro-batch and
data-parallel partition) is a pure function of the sample: no process, socket or
device placement decision lives in this module.

What this module deliberately is not: a collator (no padding, no attention masks),
a dataset (see realflow.api.dataset), or a transport (the master ships `meta()`
copies and workers move tensors with torch.distributed). The partitioners that
decide *which* samples go together are plain-int functions in
realflow.api.partition, re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Hashable, Iterable, Sequence

import torch

from realflow.api.errors import DataError
from realflow.api.partition import (
    ffd_groups,
    partition_balanced,
    reorder,
    restore_order,
)

__all__ = [
    "MicroBatchSpec",
    "SequenceSample",
    "SplitSpec",
    "ffd_groups",
    "partition_balanced",
    "reorder",
    "restore_order",
]

_SHOW = 8  # how many ids / lengths an error message lists before eliding


def _short(items: Sequence[Any]) -> str:
    """`[a, b, c]`, or the first few and the count for long lists."""
    shown = ", ".join(repr(x) for x in items[:_SHOW])
    if len(items) > _SHOW:
        return f"[{shown}, ...] ({len(items)} in all)"
    return f"[{shown}]"


def _is_len(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@dataclass(frozen=True)
class SplitSpec:
    """Contiguous ranges [start, end) over the samples of a batch, in order.

    The ranges must be non-empty and tile 0..bs exactly: the first starts at 0 and
    each starts where the previous ended (`SequenceSample.split` checks the last
    ends at its bs).
    """

    partitions: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        parts = tuple(tuple(p) for p in self.partitions)
        object.__setattr__(self, "partitions", parts)
        expected_start = 0
        for j, p in enumerate(parts):
            if len(p) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in p):
                raise DataError(f"SplitSpec: partition {j} must be a pair of ints, got {p!r}")
            start, end = p
            if start != expected_start:
                raise DataError(
                    f"SplitSpec: partition {j} starts at {start} but must start at "
                    f"{expected_start} (ranges must be contiguous from 0)"
                )
            if end <= start:
                raise DataError(f"SplitSpec: partition {j} = [{start}, {end}) is empty or reversed")
            expected_start = end

    @classmethod
    def from_sizes(cls, sizes: Iterable[int]) -> SplitSpec:
        """Consecutive ranges holding `sizes[0]`, `sizes[1]`, ... samples."""
        sizes = list(sizes)
        for j, s in enumerate(sizes):
            if not isinstance(s, int) or isinstance(s, bool) or s < 1:
                raise DataError(f"SplitSpec.from_sizes: size {j} must be an int >= 1, got {s!r}")
        ends = list(accumulate(sizes))
        return cls(tuple(zip([0, *ends[:-1]], ends)))

    @property
    def total(self) -> int:
        """Number of samples covered (the end of the last range)."""
        return self.partitions[-1][1] if self.partitions else 0

    @property
    def sizes(self) -> list[int]:
        return [end - start for start, end in self.partitions]


@dataclass(frozen=True)
class MicroBatchSpec:
    """How to cut a batch into micro-batches.

    The split produces at least `n_mbs` groups, each holding at most
    `max_tokens_per_mb` tokens (`None`: no budget, exactly `n_mbs` groups). A single
    sample larger than the budget goes alone in its own group: samples are never
    cut, so that group exceeds the budget. Groups need not be contiguous; see
    `SequenceSample.split_mbs` for how to restore the original order of outputs.
    """

    n_mbs: int = 1
    max_tokens_per_mb: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n_mbs, int) or isinstance(self.n_mbs, bool) or self.n_mbs < 1:
            raise DataError(f"MicroBatchSpec: n_mbs must be an int >= 1, got {self.n_mbs!r}")
        m = self.max_tokens_per_mb
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise DataError(
                f"MicroBatchSpec: max_tokens_per_mb must be an int >= 1 or None, got {m!r}"
            )


@dataclass(eq=False)
class SequenceSample:
    """A packed batch of variable-length sequences; see docs/data.md.

    Per key, `data[key]` has shape (sum of all lengths, *trailing_shapes[key]): the
    sequences of sample 0 first (in the order of `seqlens[key][0]`), then sample 1,
    and so on. `data=None` (or a `None` entry) means metadata only. `metadata` holds
    per-sample Python values (one list entry per sample) that travel with the batch.

    Construction validates everything; `SequenceSample.unchecked(...)` skips it for
    hot paths whose inputs are correct by construction. Operations that return a new
    sample share tensor storage where they can (split slices are views).
    `==` is identity; compare fields explicitly.
    """

    keys: set[str]
    ids: list[Hashable]
    seqlens: dict[str, list[list[int]]]
    trailing_shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    data: dict[str, torch.Tensor | None] | None = None
    metadata: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = set(self.keys)
        self.ids = list(self.ids)
        self.trailing_shapes = {k: tuple(v) for k, v in self.trailing_shapes.items()}
        self.validate()

    @classmethod
    def unchecked(
        cls,
        *,
        keys: set[str],
        ids: list[Hashable],
        seqlens: dict[str, list[list[int]]],
        trailing_shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, torch.dtype],
        data: dict[str, torch.Tensor | None] | None = None,
        metadata: dict[str, list[Any]] | None = None,
    ) -> SequenceSample:
        """Build without validation or copying (call `.validate()` to check later)."""
        obj = cls.__new__(cls)
        obj.keys, obj.ids, obj.seqlens = keys, ids, seqlens
        obj.trailing_shapes, obj.dtypes, obj.data = trailing_shapes, dtypes, data
        obj.metadata = {} if metadata is None else metadata
        return obj

    # ----------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise DataError naming the key, sample id and lengths on any inconsistency."""
        bs = len(self.ids)
        for k in self.keys:
            if not isinstance(k, str):
                raise DataError(f"SequenceSample: keys must be strings, got {k!r}")
        for name, d in (("seqlens", self.seqlens), ("trailing_shapes", self.trailing_shapes),
                        ("dtypes", self.dtypes)):
            _check_same_keys(name, set(d), self.keys)
        if self.data is not None:
            _check_same_keys("data", set(self.data), self.keys)
        seen: dict[Hashable, int] = {}
        for i, sid in enumerate(self.ids):
            if sid in seen:
                raise DataError(
                    f"SequenceSample: duplicate id {sid!r} at positions {seen[sid]} and {i}"
                )
            seen[sid] = i
        for k in sorted(self.keys):
            per_sample = self.seqlens[k]
            if len(per_sample) != bs:
                raise DataError(
                    f"SequenceSample: key '{k}' has seqlens for {len(per_sample)} samples "
                    f"but there are {bs} ids"
                )
            for sid, lens in zip(self.ids, per_sample):
                if not isinstance(lens, list) or not all(_is_len(x) for x in lens):
                    raise DataError(
                        f"SequenceSample: key '{k}', sample {sid!r}: seqlens must be a list "
                        f"of ints >= 0, got {lens!r}"
                    )
            shape = self.trailing_shapes[k]
            if not all(_is_len(x) for x in shape):
                raise DataError(
                    f"SequenceSample: key '{k}': trailing shape must be ints >= 0, got {shape}"
                )
            if not isinstance(self.dtypes[k], torch.dtype):
                raise DataError(
                    f"SequenceSample: key '{k}': dtype must be a torch.dtype, got {self.dtypes[k]!r}"
                )
            t = None if self.data is None else self.data[k]
            if t is not None:
                self._check_tensor(k, t)
        for mk, values in self.metadata.items():
            if not isinstance(values, list) or len(values) != bs:
                n = len(values) if isinstance(values, list) else type(values).__name__
                raise DataError(
                    f"SequenceSample: metadata '{mk}' must be a list with one entry per "
                    f"sample ({bs}), got {n}"
                )

    def _check_tensor(self, k: str, t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            raise DataError(
                f"SequenceSample: key '{k}': data must be a torch.Tensor or None, got {type(t).__name__}"
            )
        total = self.total_len(k)
        if t.dim() == 0 or t.shape[0] != total:
            per = [f"{sid!r}: {lens}" for sid, lens in zip(self.ids, self.seqlens[k])]
            raise DataError(
                f"SequenceSample: key '{k}': data has {t.shape[0] if t.dim() else 'no'} rows "
                f"(shape {tuple(t.shape)}) but its seqlens sum to {total} "
                f"(per sample {_short(per)})"
            )
        if tuple(t.shape[1:]) != self.trailing_shapes[k]:
            raise DataError(
                f"SequenceSample: key '{k}': data has trailing shape {tuple(t.shape[1:])} "
                f"but trailing_shapes says {self.trailing_shapes[k]}"
            )
        if t.dtype != self.dtypes[k]:
            raise DataError(
                f"SequenceSample: key '{k}': data has dtype {t.dtype} but dtypes says {self.dtypes[k]}"
            )

    # -------------------------------------------------------------- construction

    @classmethod
    def from_default(
        cls,
        ids: Sequence[Hashable],
        seqlens: Sequence[int],
        data: dict[str, torch.Tensor],
        metadata: dict[str, list[Any]] | None = None,
    ) -> SequenceSample:
        """One sequence per sample for every key, with lengths `seqlens`.

        Trailing shapes and dtypes are read from the tensors. A key with a different
        layout (e.g. one reward per sample: bs rows while the lengths differ) is not
        guessed: build it with the general constructor, `seqlens[key] = [[1]] * bs`.
        """
        ids = list(ids)
        if len(seqlens) != len(ids):
            raise DataError(
                f"SequenceSample.from_default: {len(seqlens)} seqlens for {len(ids)} ids"
            )
        for sid, n in zip(ids, seqlens):
            if not _is_len(n):
                raise DataError(
                    f"SequenceSample.from_default: sample {sid!r}: length must be an int >= 0, got {n!r}"
                )
        total = sum(seqlens)
        for k, t in data.items():
            if not isinstance(t, torch.Tensor):
                raise DataError(
                    f"SequenceSample.from_default: key '{k}': expected a tensor, got {type(t).__name__}"
                )
            rows = t.shape[0] if t.dim() else None
            if rows != total:
                hint = ""
                if rows == len(ids):
                    hint = (
                        f"; it has one row per sample: give it seqlens [[1]] * {len(ids)} "
                        "through the general SequenceSample constructor"
                    )
                raise DataError(
                    f"SequenceSample.from_default: key '{k}' has {rows} rows but seqlens "
                    f"sum to {total}{hint}"
                )
        return cls(
            keys=set(data),
            ids=ids,
            seqlens={k: [[n] for n in seqlens] for k in data},
            trailing_shapes={k: tuple(t.shape[1:]) for k, t in data.items()},
            dtypes={k: t.dtype for k, t in data.items()},
            data=dict(data),
            metadata={} if metadata is None else dict(metadata),
        )

    # ------------------------------------------------------------------- lengths

    @property
    def bs(self) -> int:
        """Number of samples (not sequences: a sample may hold several)."""
        return len(self.ids)

    def flat_seqlens(self, key: str) -> list[int]:
        """All sequence lengths of `key`, sample after sample."""
        return [n for lens in self._seqlens(key) for n in lens]

    def total_len(self, key: str) -> int:
        return sum(sum(lens) for lens in self._seqlens(key))

    def cu_seqlens(self, key: str) -> torch.Tensor:
        """int32 tensor (n_sequences + 1,): 0 then the running sum of flat_seqlens."""
        return torch.tensor([0, *accumulate(self.flat_seqlens(key))], dtype=torch.int32)

    def seqlens_of(self, key: str, i: int) -> list[int]:
        """Sequence lengths of `key` for the sample at position `i`."""
        return self._seqlens(key)[i]

    def token_counts(self, key: str | None = None) -> list[int]:
        """Per sample, the sum of its lengths for `key` (default: `default_token_key`)."""
        key = self.default_token_key() if key is None else key
        return [sum(lens) for lens in self._seqlens(key)]

    def default_token_key(self) -> str:
        """The key with the largest total length (ties: the first by name)."""
        if not self.keys:
            raise DataError("SequenceSample: no keys to count tokens of")
        return min(sorted(self.keys), key=lambda k: -self.total_len(k))

    def _seqlens(self, key: str) -> list[list[int]]:
        if key not in self.seqlens:
            raise DataError(f"SequenceSample: unknown key '{key}'; available: {sorted(self.keys)}")
        return self.seqlens[key]

    def _offsets(self, key: str) -> list[int]:
        """Row where each sample starts in data[key], plus the total (bs + 1 entries)."""
        return [0, *accumulate(sum(lens) for lens in self.seqlens[key])]

    # ---------------------------------------------------------- batch operations

    @classmethod
    def gather(
        cls, samples: Sequence[SequenceSample], keys: Iterable[str] | None = None
    ) -> SequenceSample:
        """Concatenate samples on `keys` (default: the first's); ids must be distinct."""
        if not samples:
            raise DataError("SequenceSample.gather: no samples given")
        keys = set(samples[0].keys) if keys is None else set(keys)
        first = samples[0]
        for j, s in enumerate(samples):
            missing = keys - s.keys
            if missing:
                raise DataError(
                    f"SequenceSample.gather: sample {j} (ids {_short(s.ids)}) lacks keys "
                    f"{sorted(missing)}; it has {sorted(s.keys)}"
                )
            for k in sorted(keys):
                same_shape = s.trailing_shapes[k] == first.trailing_shapes[k]
                if not same_shape or s.dtypes[k] != first.dtypes[k]:
                    raise DataError(
                        f"SequenceSample.gather: key '{k}': sample 0 has trailing shape "
                        f"{first.trailing_shapes[k]} / {first.dtypes[k]} but sample {j} has "
                        f"{s.trailing_shapes[k]} / {s.dtypes[k]}"
                    )
            if set(s.metadata) != set(first.metadata):
                raise DataError(
                    f"SequenceSample.gather: sample 0 has metadata {sorted(first.metadata)} "
                    f"but sample {j} has {sorted(s.metadata)}"
                )
        ids = [sid for s in samples for sid in s.ids]
        if len(set(ids)) != len(ids):
            seen: set[Hashable] = set()
            dup = next(sid for sid in ids if sid in seen or seen.add(sid))
            where = [j for j, s in enumerate(samples) if dup in s.ids]
            raise DataError(f"SequenceSample.gather: id {dup!r} appears in samples {where}")
        has_data = [s.data is not None for s in samples]
        if any(has_data) and not all(has_data):
            raise DataError(
                f"SequenceSample.gather: samples {[j for j, h in enumerate(has_data) if not h]} "
                "are metadata-only but others carry data"
            )
        data = None
        if all(has_data):
            data = {k: _cat_key(k, [s.data[k] for s in samples]) for k in keys}
        return cls.unchecked(
            keys=keys,
            ids=ids,
            seqlens={k: [lens for s in samples for lens in s.seqlens[k]] for k in keys},
            trailing_shapes={k: first.trailing_shapes[k] for k in keys},
            dtypes={k: first.dtypes[k] for k in keys},
            data=data,
            metadata={mk: [v for s in samples for v in s.metadata[mk]] for mk in first.metadata},
        )

    def split(self, spec: SplitSpec) -> list[SequenceSample]:
        """One sample per range of `spec`; tensors are views into this sample's."""
        if spec.total != self.bs:
            raise DataError(
                f"SequenceSample.split: spec covers {spec.total} samples but bs is {self.bs}"
            )
        offsets = {k: self._offsets(k) for k in self.keys}
        out = []
        for start, end in spec.partitions:
            data = None
            if self.data is not None:
                data = {
                    k: None if t is None else t[offsets[k][start] : offsets[k][end]]
                    for k, t in self.data.items()
                }
            out.append(
                SequenceSample.unchecked(
                    keys=set(self.keys),
                    ids=self.ids[start:end],
                    seqlens={k: v[start:end] for k, v in self.seqlens.items()},
                    trailing_shapes=dict(self.trailing_shapes),
                    dtypes=dict(self.dtypes),
                    data=data,
                    metadata={mk: v[start:end] for mk, v in self.metadata.items()},
                )
            )
        return out

    def unpack(self) -> list[SequenceSample]:
        """One SequenceSample per sample."""
        return self.split(SplitSpec.from_sizes([1] * self.bs))

    def reorder(self, indices: Sequence[int]) -> SequenceSample:
        """A new sample holding samples `indices` (a permutation of range(bs)) in that order."""
        if sorted(indices) != list(range(self.bs)):
            raise DataError(
                f"SequenceSample.reorder: indices {_short(list(indices))} are not a "
                f"permutation of range({self.bs})"
            )
        data = None
        if self.data is not None:
            data = {}
            for k, t in self.data.items():
                off = self._offsets(k)
                pieces = None if t is None else [t[off[i] : off[i + 1]] for i in indices]
                data[k] = None if pieces is None else _cat_key(k, pieces, like=t)
        return SequenceSample.unchecked(
            keys=set(self.keys),
            ids=[self.ids[i] for i in indices],
            seqlens={k: [v[i] for i in indices] for k, v in self.seqlens.items()},
            trailing_shapes=dict(self.trailing_shapes),
            dtypes=dict(self.dtypes),
            data=data,
            metadata={mk: [v[i] for i in indices] for mk, v in self.metadata.items()},
        )

    def split_dp(self, n: int, key: str | None = None) -> list[SequenceSample]:
        """`n` contiguous parts whose largest token count is as small as possible.

        Token count of a sample: the sum of its lengths for `key` (default: the key
        with the largest total length). See `partition_balanced`.
        """
        if not isinstance(n, int) or n < 1 or n > self.bs:
            raise DataError(
                f"SequenceSample.split_dp: cannot split {self.bs} samples into {n} data-parallel parts"
            )
        parts = partition_balanced(self.token_counts(key), n)
        return self.split(SplitSpec(tuple(parts)))

    def split_mbs(
        self, spec: MicroBatchSpec, key: str | None = None
    ) -> tuple[list[SequenceSample], list[int], list[int]]:
        """Micro-batches under `spec`, plus the permutations to undo the grouping.

        Returns (mbs, forward_indices, backward_indices): `forward_indices` lists the
        original positions of the samples as they appear across mbs concatenated;
        `reorder(outputs_in_mb_order, backward_indices)` (or
        `SequenceSample.gather(mbs).reorder(backward_indices)`) gives original order.
        Groups come from `ffd_groups` on the token counts of `key`.
        """
        if spec.n_mbs > self.bs:
            raise DataError(
                f"SequenceSample.split_mbs: cannot split {self.bs} samples into at least "
                f"n_mbs={spec.n_mbs} micro-batches"
            )
        groups = ffd_groups(self.token_counts(key), spec.max_tokens_per_mb, spec.n_mbs)
        forward = [i for g in groups for i in g]
        backward = restore_order(groups)
        mbs = self.reorder(forward).split(SplitSpec.from_sizes([len(g) for g in groups]))
        return mbs, forward, backward

    # ---------------------------------------------------------- key operations

    def meta(self) -> SequenceSample:
        """The same sample without tensors (what the master keeps and ships)."""
        return SequenceSample.unchecked(
            keys=set(self.keys),
            ids=list(self.ids),
            seqlens={k: [list(lens) for lens in v] for k, v in self.seqlens.items()},
            trailing_shapes=dict(self.trailing_shapes),
            dtypes=dict(self.dtypes),
            data=None,
            metadata={mk: list(v) for mk, v in self.metadata.items()},
        )

    def select(self, keys: Iterable[str]) -> SequenceSample:
        """A sample with only `keys` (metadata is per sample and kept whole)."""
        keys = set(keys)
        unknown = keys - self.keys
        if unknown:
            raise DataError(
                f"SequenceSample.select: unknown keys {sorted(unknown)}; available: {sorted(self.keys)}"
            )
        return SequenceSample.unchecked(
            keys=keys,
            ids=list(self.ids),
            seqlens={k: self.seqlens[k] for k in keys},
            trailing_shapes={k: self.trailing_shapes[k] for k in keys},
            dtypes={k: self.dtypes[k] for k in keys},
            data=None if self.data is None else {k: self.data[k] for k in keys},
            metadata=dict(self.metadata),
        )

    def update_(self, other: SequenceSample) -> None:
        """Add the keys (and metadata) of `other`, which must have the same ids in order.

        Keys present in both take `other`'s value. If only one side has tensors, the
        keys of the other side get `None` data.
        """
        if other.ids != self.ids:
            if len(other.ids) != len(self.ids):
                raise DataError(
                    f"SequenceSample.update_: bs {self.bs} vs {other.bs}; "
                    f"ids {_short(self.ids)} vs {_short(other.ids)}"
                )
            i = next(i for i, (a, b) in enumerate(zip(self.ids, other.ids)) if a != b)
            raise DataError(
                f"SequenceSample.update_: ids differ at position {i}: {self.ids[i]!r} here "
                f"vs {other.ids[i]!r} in the update"
            )
        if self.data is not None or other.data is not None:
            mine = self.data if self.data is not None else {k: None for k in self.keys}
            theirs = other.data if other.data is not None else {k: None for k in other.keys}
            self.data = {**mine, **theirs}
        # New containers, not in-place updates: other samples may share these dicts.
        self.keys = self.keys | other.keys
        self.seqlens = {**self.seqlens, **other.seqlens}
        self.trailing_shapes = {**self.trailing_shapes, **other.trailing_shapes}
        self.dtypes = {**self.dtypes, **other.dtypes}
        self.metadata = {**self.metadata, **other.metadata}

    def remap_keys_(self, mapping: dict[str, str]) -> None:
        """Rename keys in place (`{"a": "b", "b": "a"}` swaps). Unknown sources are an error."""
        unknown = set(mapping) - self.keys
        if unknown:
            raise DataError(
                f"SequenceSample.remap_keys_: unknown keys {sorted(unknown)}; "
                f"available: {sorted(self.keys)}"
            )
        new_names = [mapping.get(k, k) for k in self.keys]
        if len(set(new_names)) != len(new_names):
            clash = sorted({n for n in new_names if new_names.count(n) > 1})
            raise DataError(
                f"SequenceSample.remap_keys_: mapping {mapping} gives two keys the name(s) {clash}"
            )

        def rename(d: dict[str, Any]) -> dict[str, Any]:
            return {mapping.get(k, k): v for k, v in d.items()}

        self.keys = set(new_names)
        self.seqlens = rename(self.seqlens)
        self.trailing_shapes = rename(self.trailing_shapes)
        self.dtypes = rename(self.dtypes)
        if self.data is not None:
            self.data = rename(self.data)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SequenceSample:
        """A sample whose tensors live on `device` (lists of lengths and metadata are shared)."""
        data = None
        if self.data is not None:
            data = {
                k: None if t is None else t.to(device, non_blocking=non_blocking)
                for k, t in self.data.items()
            }
        return SequenceSample.unchecked(
            keys=set(self.keys),
            ids=list(self.ids),
            seqlens=dict(self.seqlens),
            trailing_shapes=dict(self.trailing_shapes),
            dtypes=dict(self.dtypes),
            data=data,
            metadata=dict(self.metadata),
        )

    def __repr__(self) -> str:
        lens = {k: self.total_len(k) for k in sorted(self.keys)}
        kind = "meta" if self.data is None else "data"
        return f"SequenceSample(bs={self.bs}, ids={_short(self.ids)}, total_lens={lens}, {kind})"


def _check_same_keys(name: str, got: set[str], keys: set[str]) -> None:
    if got != keys:
        raise DataError(
            f"SequenceSample: {name} has keys {sorted(got)} but keys are {sorted(keys)} "
            f"(missing {sorted(keys - got)}, extra {sorted(got - keys)})"
        )


def _cat_key(
    key: str, tensors: list[torch.Tensor | None], like: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Concatenate along dim 0; all-None gives None, a mix is an error."""
    if not tensors:
        return None if like is None else like[:0]
    present = [t is not None for t in tensors]
    if not any(present):
        return None
    if not all(present):
        raise DataError(
            f"SequenceSample: key '{key}' has data in some samples and None in samples "
            f"{[j for j, p in enumerate(present) if not p]}"
        )
    return torch.cat(tensors, dim=0)
