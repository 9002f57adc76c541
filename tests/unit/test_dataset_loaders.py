"""Reading records (every source type, every bad input) and sharding by dp rank."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realflow.api.dataset import Record, load_records, read_records, shard_records
from realflow.api.errors import DatasetError

RECORDS = [{"id": f"r{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(7)]


def write_jsonl(path: Path, lines: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def fields(records: list[Record]) -> list[dict]:
    return [r.fields for r in records]


# ------------------------------------------------------------------ good sources


def test_jsonl_json_parquet_list_callable_and_hf_agree(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    (tmp_path / "d.json").write_text(json.dumps(RECORDS, indent=2))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "d.parquet")
    sources = [jsonl, tmp_path / "d.json", str(tmp_path / "d.parquet"), RECORDS, lambda: RECORDS,
               lambda: jsonl, datasets.Dataset.from_list(RECORDS)]
    for src in sources:
        assert fields(read_records(src)) == RECORDS, src


def test_locations_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n   \n" + json.dumps(RECORDS[1]) + "\n")
    assert [(r.source, r.line) for r in read_records(path)] == [(str(path), 1), (str(path), 4)]


def test_locations_json_are_the_lines_records_start_on(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS[:3], indent=2))  # each record spans 5 lines after '['
    assert [r.line for r in read_records(path)] == [2, 7, 12]
    assert [r.line for r in read_records(RECORDS[:3])] == [1, 2, 3]


def test_hf_dataset_with_map_and_filter():
    ds = datasets.Dataset.from_list([{"q": f"{i}*2=", "a": str(2 * i)} for i in range(10)])
    ds = ds.map(lambda r, i: {"id": f"hf{i}", "prompt": r["q"]}, with_indices=True)
    ds = ds.filter(lambda r: int(r["a"]) >= 10)
    recs = read_records(ds)
    assert [r.id() for r in recs] == [f"hf{i}" for i in range(5, 10)]
    assert recs[0].source == "<datasets.Dataset>" and recs[0].text("prompt") == "5*2="


def test_integer_ids():
    assert [r.id() for r in read_records([{"id": 3}, {"id": "3"}])] == [3, "3"]


def test_id_field_is_configurable():
    assert [r.id("qid") for r in read_records([{"qid": "a"}, {"qid": "b"}], id_field="qid")] == ["a", "b"]


# -------------------------------------------------------------------- bad input


def _err(source, **kw) -> str:
    with pytest.raises(DatasetError) as e:
        read_records(source, **kw)
    return str(e.value)


def test_malformed_jsonl_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], RECORDS[1], '{"id": "x", "prompt": }'])
    assert _err(p).startswith(f"{p}, line 3: invalid JSON at column")


def test_jsonl_line_not_an_object(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], [1, 2]])
    assert _err(p) == f"{p}, line 2: expected a JSON object (a record), got list"


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path, content):
    (tmp_path / "d.jsonl").write_text(content)
    assert _err(tmp_path / "d.jsonl") == f"{tmp_path / 'd.jsonl'}: file is empty"


def test_empty_json_list_and_empty_list(tmp_path):
    (tmp_path / "d.json").write_text("[ ]")
    assert _err(tmp_path / "d.json") == f"{tmp_path / 'd.json'}: holds no records"
    assert _err([]) == "<list>: holds no records"


def test_duplicate_id_names_both_lines(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], RECORDS[1], RECORDS[0]])
    assert _err(p) == f"{p}, line 3, field 'id': duplicate id 'r0' (first seen on line 1)"


@pytest.mark.parametrize(
    "record,message",
    [
        ({"prompt": "x"}, "field 'id': missing field"),
        ({"id": None}, "field 'id': missing field (null)"),
        ({"id": 1.5}, "field 'id': id must be a string or an integer, got float"),
        ({"id": True}, "field 'id': id must be a string or an integer, got bool"),
        ({"id": ["a"]}, "field 'id': id must be a string or an integer, got list"),
    ],
)
def test_missing_or_mistyped_id(tmp_path, record, message):
    p = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], record])
    assert _err(p) == f"{p}, line 2, {message}"


def test_unreadable_paths(tmp_path, monkeypatch):
    assert _err(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file"
    (tmp_path / "dir.jsonl").mkdir()
    assert _err(tmp_path / "dir.jsonl") == f"{tmp_path / 'dir.jsonl'}: is a directory, expected a file"
    assert "unsupported file type '.csv'" in _err(tmp_path / "d.csv")
    (tmp_path / "bin.jsonl").write_bytes(b'{"id": 1}\n{"id": "\xff"}\n')
    assert _err(tmp_path / "bin.jsonl") == f"{tmp_path / 'bin.jsonl'}, line 2: not UTF-8 text (byte 18)"
    p = write_jsonl(tmp_path / "locked.jsonl", RECORDS)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)  # root ignores chmod, so simulate it
    assert _err(p) == f"{p}: cannot read file: Permission denied"


def test_bad_json_files(tmp_path):
    (tmp_path / "obj.json").write_text('{"id": 1}')
    assert "line 1: expected a JSON list of records" in _err(tmp_path / "obj.json")
    (tmp_path / "bad.json").write_text('[\n  {"id": 1},\n  {"id": 2,,}\n]')
    assert _err(tmp_path / "bad.json").startswith(f"{tmp_path / 'bad.json'}, line 3: invalid JSON")
    (tmp_path / "nocomma.json").write_text('[\n  {"id": 1}\n  {"id": 2}\n]')
    assert _err(tmp_path / "nocomma.json") == f"{tmp_path / 'nocomma.json'}, line 3: invalid JSON: expected ',' or ']' after a record"
    (tmp_path / "tail.json").write_text('[{"id": 1}]\nextra')
    assert _err(tmp_path / "tail.json") == f"{tmp_path / 'tail.json'}, line 2: unexpected text after the closing ']'"
    (tmp_path / "num.json").write_text('[{"id": 1},\n 7]')
    assert _err(tmp_path / "num.json") == f"{tmp_path / 'num.json'}, line 2: expected a JSON object (a record), got int"


def test_bad_parquet(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    assert _err(tmp_path / "d.parquet").startswith(f"{tmp_path / 'd.parquet'}: cannot read parquet")


def test_bad_in_memory_sources():
    assert _err([RECORDS[0], 5]) == "<list>, line 2: expected a JSON object (a record), got int"
    assert "cannot read records from int" in _err(5)

    def broken():
        raise RuntimeError("no network")

    assert _err(broken) == "<test_bad_in_memory_sources.<locals>.broken()>: the dataset builder raised RuntimeError: no network"
    assert "a callable returning a callable" in _err(lambda: (lambda: RECORDS))


# --------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 23])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_shards_partition_everything_and_balance(n, world_size):
    items = list(range(n))
    shards = [shard_records(items, seed=5, dp_rank=r, world_size=world_size) for r in range(world_size)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == items  # no loss, no overlap
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [n // world_size + (r < n % world_size) for r in range(world_size)]


def test_shuffle_is_deterministic_by_seed():
    items = list(range(50))
    a = shard_records(items, seed=1)
    assert a == shard_records(items, seed=1)
    assert a != shard_records(items, seed=2) and sorted(a) == items
    assert shard_records(items, seed=1, shuffle=False) == items


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError, match=r"dp_rank must be in \[0, 2\)"):
        shard_records([1], seed=0, dp_rank=2, world_size=2)


def test_load_records_shards_files(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    shards = [load_records(p, seed=3, dp_rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    assert sorted(r.id() for s in shards for r in s) == sorted(r["id"] for r in RECORDS)
    assert [r.id() for r in shards[0]] == [r.id() for r in load_records(p, seed=3, dp_rank=0, world_size=3)]
