"""Reading records from files and objects, then shuffling and sharding them.

Sources `read_records` accepts:
- a path (str or Path) to `.jsonl` (one object per line; blank lines skipped),
  `.json` (a list of objects) or `.parquet` (read with `datasets`);
- a list of dicts;
- a `datasets.Dataset` (run `.map` / `.filter` on it first: they go through
  `datasets`, with its caching and batching);
- a callable with no arguments returning any of the above.

Reading is strict: an unreadable or empty file, a malformed line, a record that
is not an object, a missing, mistyped or duplicate id each raise one
DatasetError naming the file, the line and the field. Field checks beyond the id
belong to the datasets (see records.Record).

`shard_records` shuffles by seed and deals records round-robin to data-parallel
ranks: every record lands on exactly one rank and shard sizes differ by at most
one. This module does not tokenize.
"""
from __future__ import annotations

import bisect
import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar, Union

import datasets

from realflow.api.errors import DatasetError
from realflow.api.dataset.records import Record

__all__ = ["Source", "load_records", "read_records", "shard_records"]

Source = Union[str, Path, list, "datasets.Dataset", Callable[[], Any]]
T = TypeVar("T")

_SUFFIXES = (".jsonl", ".json", ".parquet")


def _read_text(path: Path) -> str:
    label = str(path)
    if not path.exists():
        raise DatasetError("no such file", path=label)
    if path.is_dir():
        raise DatasetError("is a directory, expected a file", path=label)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DatasetError(f"not UTF-8 text (byte {e.start})", path=label, line=line) from None
    except OSError as e:
        raise DatasetError(f"cannot read file: {e.strerror or e}", path=label) from None
    if not text.strip():
        raise DatasetError("file is empty", path=label)
    return text


def _expect_object(value: Any, source: str, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        got = "null" if value is None else type(value).__name__
        raise DatasetError(f"expected a JSON object (a record), got {got}", path=source, line=line)
    return value


def _read_jsonl(path: Path) -> list[Record]:
    label = str(path)
    out = []
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DatasetError(f"invalid JSON at column {e.colno}: {e.msg}", path=label, line=lineno) from None
        out.append(Record(_expect_object(value, label, lineno), label, lineno))
    return out


def _read_json(path: Path) -> list[Record]:
    """A top-level JSON list; each record reports the line its object starts on."""
    label = str(path)
    text = _read_text(path)
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_ws(0)
    if text[pos] != "[":
        raise DatasetError("expected a JSON list of records at the top level "
                           "(for one object per line use a .jsonl file)", path=label, line=line_of(pos))
    decoder = json.JSONDecoder()
    out: list[Record] = []
    pos = skip_ws(pos + 1)
    if pos < len(text) and text[pos] == "]":
        return out
    while True:
        line = line_of(pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DatasetError(f"invalid JSON at column {e.colno}: {e.msg}", path=label, line=e.lineno) from None
        out.append(Record(_expect_object(value, label, line), label, line))
        pos = skip_ws(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if skip_ws(pos + 1) != len(text):
                raise DatasetError("unexpected text after the closing ']'", path=label,
                                   line=line_of(skip_ws(pos + 1)))
            return out
        raise DatasetError("invalid JSON: expected ',' or ']' after a record", path=label,
                           line=line_of(min(pos, len(text) - 1)))


def _read_parquet(path: Path) -> list[Record]:
    label = str(path)
    if not path.is_file():
        raise DatasetError("no such file" if not path.exists() else "is a directory, expected a file",
                           path=label)
    try:
        ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(f"cannot read parquet: {e}", path=label) from None
    return _rows(ds, label)


def _rows(rows: Sequence[Any], label: str) -> list[Record]:
    return [Record(_expect_object(r, label, i), label, i) for i, r in enumerate(rows, start=1)]


def _read_source(source: Any, depth: int = 0) -> tuple[list[Record], str]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
        if path.suffix not in readers:
            raise DatasetError(f"unsupported file type '{path.suffix}'; expected one of "
                               f"{', '.join(_SUFFIXES)}", path=str(path))
        return readers[path.suffix](path), str(path)
    if isinstance(source, datasets.Dataset):
        label = "<datasets.Dataset>"
        return _rows(source, label), label
    if isinstance(source, list):
        return _rows(source, "<list>"), "<list>"
    if callable(source) and depth == 0:
        label = f"<{getattr(source, '__qualname__', type(source).__name__)}()>"
        try:
            records, _ = _read_source(source(), depth=1)
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"the dataset builder raised {type(e).__name__}: {e}", path=label) from e
        return records, label
    what = "a callable returning a callable" if depth else type(source).__name__
    raise DatasetError(
        f"cannot read records from {what}; expected a path to .jsonl/.json/.parquet, a list of "
        "dicts, a datasets.Dataset, or a callable returning one of those"
    )


def read_records(source: Source, *, id_field: str = "id") -> list[Record]:
    """All records of `source` in order, with ids checked (present, str/int, unique).

    Raises DatasetError if the source holds no record.
    """
    records, label = _read_source(source)
    if not records:
        raise DatasetError("holds no records", path=label)
    first_seen: dict[Hashable, int] = {}
    for r in records:
        rid = r.id(id_field)
        if rid in first_seen:
            raise r.error(f"duplicate id {rid!r} (first seen on line {first_seen[rid]})", id_field)
        first_seen[rid] = r.line
    return records


def shard_records(items: Sequence[T], *, seed: int, dp_rank: int = 0, world_size: int = 1,
                  shuffle: bool = True) -> list[T]:
    """This rank's share of `items`: shuffled by `seed`, then dealt round-robin.

    Ranks get either floor(n / world_size) or that plus one items; together they
    hold every item exactly once. The same seed gives the same order on every rank.
    """
    if not 0 <= dp_rank < world_size:
        raise ValueError(f"dp_rank must be in [0, {world_size}), got {dp_rank}")
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)
    return [items[j] for j in order[dp_rank::world_size]]


def load_records(source: Source, *, seed: int, dp_rank: int = 0, world_size: int = 1,
                 id_field: str = "id", shuffle: bool = True) -> list[Record]:
    """`read_records` then `shard_records`: this rank's records of `source`."""
    return shard_records(read_records(source, id_field=id_field), seed=seed, dp_rank=dp_rank,
                         world_size=world_size, shuffle=shuffle)
