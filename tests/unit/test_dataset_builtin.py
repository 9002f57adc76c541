"""The registry and the built-in datasets: formats, bad records, max_length, sharding."""
from __future__ import annotations

import json
import logging

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from realflow.api.data import SequenceSample
from realflow.api.dataset import DatasetUtility, dataset_names, make_dataset, register_dataset
from realflow.api.errors import ConfigError, DatasetError, RegistryError
from realflow.assets import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture
def util(tok):
    return DatasetUtility(tok, seed=1)


def jsonl(tmp_path, records, name="d.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def by_id(ds) -> dict:
    return {ds[i].ids[0]: ds[i] for i in range(len(ds))}


SFT = [{"id": "a", "prompt": "12+34=", "answer": "46"}, {"id": "b", "prompt": "5*6=", "answer": "30"}]


# --------------------------------------------------------------------- registry


def test_builtins_registered():
    assert {"prompt_answer", "prompt", "rw_paired", "math_code"} <= set(dataset_names())


def test_unknown_dataset_lists_registered(util):
    with pytest.raises(RegistryError) as e:
        make_dataset("nope", util, source=SFT)
    assert str(e.value).startswith("unknown dataset 'nope'; registered: ")
    registered = str(e.value).split("registered: ")[1].split(", ")
    assert {"math_code", "prompt", "prompt_answer", "rw_paired"} <= set(registered)
    assert registered == sorted(registered)


@pytest.mark.parametrize(
    "name,args,message",
    [
        ("prompt", {"source": SFT, "max_len": 5},
         "dataset 'prompt': unknown argument 'max_len'; accepted: source, max_length"),
        ("prompt_answer", {}, "dataset 'prompt_answer': missing required argument 'source'; accepted: source, max_length"),
        ("prompt_answer", {"source": SFT, "max_length": 0}, "dataset 'prompt_answer': argument 'max_length' must be >= 1, got 0"),
        ("prompt", {"source": SFT, "max_length": "9"}, "dataset 'prompt': argument 'max_length' must be int or None, got '9'"),
        ("rw_paired", {"source": SFT, "max_pairs_per_prompt": 0}, "dataset 'rw_paired': argument 'max_pairs_per_prompt' must be >= 1, got 0"),
        ("math_code", {"source": SFT, "max_filter_percentage": 1.0},
         "dataset 'math_code': argument 'max_filter_percentage' must be < 1 (some prompts always stay active), got 1.0"),
        ("math_code", {"source": SFT, "filter_threshold": "high"}, "dataset 'math_code': argument 'filter_threshold' must be float, got 'high'"),
    ],
)
def test_bad_arguments_name_dataset_and_argument(util, name, args, message):
    with pytest.raises(ConfigError) as e:
        make_dataset(name, util, **args)
    assert str(e.value) == message


def test_bad_utility(tok):
    with pytest.raises(ConfigError, match=r"dp_rank must be in \[0, 2\), got 2"):
        DatasetUtility(tok, seed=0, dp_rank=2, world_size=2)
    with pytest.raises(ConfigError, match="world_size must be >= 1"):
        DatasetUtility(tok, world_size=0)
    with pytest.raises(ConfigError, match="util must be a DatasetUtility"):
        make_dataset("prompt", {"seed": 1}, source=SFT)
    with pytest.raises(ConfigError, match="dataset 'prompt': DatasetUtility.tokenizer is None"):
        make_dataset("prompt", DatasetUtility(None), source=SFT)


def test_register_twice_is_an_error():
    class A:
        def __init__(self, util):
            pass

    register_dataset("test_dup_a", A)
    register_dataset("test_dup_a", A)  # the same class again is harmless
    with pytest.raises(RegistryError, match="already registered"):
        register_dataset("test_dup_a", type("B", (), {}))


# ----------------------------------------------------------------- prompt_answer


def test_prompt_answer_tokens_mask_and_eos(util, tok):
    ds = make_dataset("prompt_answer", util, source=SFT)
    assert len(ds) == 2 and sorted(ds.ids) == ["a", "b"]
    s = by_id(ds)["a"]
    assert isinstance(s, SequenceSample) and s.bs == 1 and s.keys == {"packed_input_ids", "prompt_mask"}
    ids, mask = s.data["packed_input_ids"], s.data["prompt_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == tok.encode("12+34=") + tok.encode("46") + [tok.eos_token_id]
    assert mask.tolist() == [True] * 6 + [False] * 3
    assert s.seqlens == {"packed_input_ids": [[9]], "prompt_mask": [[9]]}
    batch = SequenceSample.gather([ds[0], ds[1]])
    assert batch.bs == 2


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"id": "c", "prompt": "1+1="}, "line 3, field 'answer': missing field"),
        ({"id": "c", "prompt": 7, "answer": "7"}, "line 3, field 'prompt': expected a string, got int"),
        ({"id": "c", "prompt": "", "answer": "7"}, "line 3, field 'prompt': must be a non-empty string"),
        ({"id": "c", "prompt": "1+1=", "answer": ["2"]}, "line 3, field 'answer': expected a string, got list"),
        ({"id": "a", "prompt": "1+1=", "answer": "2"}, "line 3, field 'id': duplicate id 'a' (first seen on line 1)"),
    ],
)
def test_prompt_answer_bad_records(tmp_path, util, bad, message):
    path = jsonl(tmp_path, SFT + [bad])
    with pytest.raises(DatasetError) as e:
        make_dataset("prompt_answer", util, source=path)
    assert str(e.value) == f"{path}, {message}"


def test_max_length_drops_with_logged_count(util, caplog):
    records = [{"id": i, "prompt": "1" * i, "answer": "2"} for i in range(1, 11)]  # lengths i + 2
    with caplog.at_level(logging.WARNING, logger="realflow.api.dataset"):
        ds = make_dataset("prompt_answer", util, source=records, max_length=8)
    assert sorted(ds.ids) == [1, 2, 3, 4, 5, 6]
    assert "dropped 4 of 10 records longer than max_length=8 tokens" in caplog.text
    with pytest.raises(DatasetError) as e:
        make_dataset("prompt_answer", util, source=records, max_length=2)
    assert str(e.value) == "<list>: dataset 'prompt_answer': all 10 records are longer than max_length=2 tokens (the shortest has 3)"


def test_drop_happens_before_sharding(tok):
    records = [{"id": i, "prompt": "1" * (1 + i % 4), "answer": "2"} for i in range(22)]
    shards = [make_dataset("prompt_answer", DatasetUtility(tok, seed=9, dp_rank=r, world_size=4),
                           source=records, max_length=5) for r in range(4)]
    kept = sorted(i for s in shards for i in s.ids)
    assert kept == [i for i in range(22) if i % 4 < 3]  # 17 records survive
    assert [len(s) for s in shards] == [5, 4, 4, 4]


def test_dataset_sharding_and_seed(tok):
    records = [{"id": f"r{i}", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(10)]
    shards = [make_dataset("prompt", DatasetUtility(tok, seed=4, dp_rank=r, world_size=3), source=records)
              for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sorted(i for s in shards for i in s.ids) == sorted(r["id"] for r in records)
    order = make_dataset("prompt", DatasetUtility(tok, seed=4), source=records).ids
    assert order == make_dataset("prompt", DatasetUtility(tok, seed=4), source=records).ids
    assert order != make_dataset("prompt", DatasetUtility(tok, seed=5), source=records).ids


# ------------------------------------------------------------------------ prompt


def test_prompt_keeps_other_fields_in_metadata(util, tok):
    records = [
        {"id": "p1", "prompt": "2+2=", "answer": "4", "tests": {"inputs": [1]}},
        {"id": "p2", "prompt": "3+3=", "answer": "6"},
    ]
    ds = make_dataset("prompt", util, source=records)
    s = by_id(ds)
    assert s["p1"].keys == {"packed_prompts"}
    assert s["p1"].data["packed_prompts"].tolist() == tok.encode("2+2=")
    assert s["p1"].metadata == {"answer": ["4"], "prompt": ["2+2="], "tests": [{"inputs": [1]}]}
    assert s["p2"].metadata == {"answer": ["6"], "prompt": ["3+3="], "tests": [None]}
    batch = SequenceSample.gather([s["p1"], s["p2"]])
    assert batch.metadata["answer"] == ["4", "6"]


def test_prompt_renders_chat_messages(util, tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2="}]
    ds = make_dataset("prompt", util, source=[{"id": "c", "messages": messages, "answer": "4"}])
    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
    assert ds[0].data["packed_prompts"].tolist() == tok.encode(rendered, add_special_tokens=False)
    assert ds[0].metadata["messages"] == [messages] and ds[0].metadata["answer"] == ["4"]


def test_prompt_mixed_chat_and_plain_from_parquet(tmp_path, util):
    rows = [{"id": "a", "prompt": "1+1=", "messages": None},
            {"id": "b", "prompt": None, "messages": [{"role": "user", "content": "2+2="}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    ds = make_dataset("prompt", util, source=str(tmp_path / "d.parquet"))
    assert sorted(ds.ids) == ["a", "b"]


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"id": "x"}, "field 'prompt': missing field (give 'prompt' or chat 'messages')"),
        ({"id": "x", "prompt": "1=", "messages": [{"role": "user", "content": "1="}]},
         "field 'messages': give either 'prompt' or 'messages', not both"),
        ({"id": "x", "messages": []}, "field 'messages': expected a non-empty list of messages, got an empty list"),
        ({"id": "x", "messages": "hi"}, "field 'messages': expected a non-empty list of messages, got str"),
        ({"id": "x", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 3}]},
         "field 'messages[1].content': expected a string, got int"),
        ({"id": "x", "messages": ["hi"]}, "field 'messages[0]': expected an object with 'role' and 'content', got str"),
    ],
)
def test_prompt_bad_records(util, bad, message):
    with pytest.raises(DatasetError) as e:
        make_dataset("prompt", util, source=[{"id": "ok", "prompt": "1="}, bad])
    assert str(e.value) == f"<list>, line 2, {message}"


def test_prompt_from_hf_dataset_with_map_and_filter(util, tok):
    hf = datasets.Dataset.from_list([{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(6)])
    hf = hf.map(lambda r, i: {"id": i, "prompt": r["q"]}, with_indices=True).filter(lambda r: r["id"] % 2 == 1)
    ds = make_dataset("prompt", util, source=hf)
    s = by_id(ds)
    assert sorted(s) == [1, 3, 5]
    assert s[3].data["packed_prompts"].tolist() == tok.encode("3+3=")
    assert s[3].metadata == {"a": ["6"], "prompt": ["3+3="], "q": ["3+3="]}


def test_builder_callable_source(util):
    ds = make_dataset("prompt", util, source=lambda: SFT)
    assert sorted(ds.ids) == ["a", "b"]


# --------------------------------------------------------------------- rw_paired


def test_rw_paired_packs_pairs_alternately(util, tok):
    records = [{"id": "r", "prompt": "1+1=", "chosen": ["2", "2", "2"], "rejected": ["3", "11", "12"]},
               {"id": "s", "prompt": "9-1=", "chosen": "8", "rejected": "7"}]
    ds = make_dataset("rw_paired", util, source=records, max_pairs_per_prompt=2)
    s = by_id(ds)
    eos, p = tok.eos_token_id, tok.encode("1+1=")
    seqs = [p + tok.encode(a) + [eos] for a in ("2", "3", "2", "11")]
    assert s["r"].seqlens == {"packed_input_ids": [[6, 6, 6, 7]], "prompt_lens": [[1]]}
    assert s["r"].data["packed_input_ids"].tolist() == [t for q in seqs for t in q]
    assert s["r"].data["prompt_lens"].tolist() == [4]
    assert s["s"].seqlens["packed_input_ids"] == [[6, 6]]
    assert SequenceSample.gather([s["r"], s["s"]]).seqlens["packed_input_ids"] == [[6, 6, 6, 7], [6, 6]]


def test_rw_paired_max_length_counts_the_longest_sequence(util):
    records = [{"id": "r", "prompt": "1+1=", "chosen": ["2"], "rejected": ["1111"]},
               {"id": "s", "prompt": "1+1=", "chosen": ["2"], "rejected": ["3"]}]
    assert make_dataset("rw_paired", util, source=records, max_length=6).ids == ["s"]


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"id": "x", "prompt": "1=", "chosen": ["1", "1"], "rejected": ["2"]},
         "field 'rejected': has 1 answers but 'chosen' has 2; they pair up one to one"),
        ({"id": "x", "prompt": "1=", "chosen": [], "rejected": []},
         "field 'chosen': expected a string or a non-empty list of strings, got an empty list"),
        ({"id": "x", "prompt": "1=", "chosen": ["1", 1], "rejected": ["2", "3"]}, "field 'chosen[1]': expected a string, got int"),
        ({"id": "x", "prompt": "1=", "chosen": ["1"]}, "field 'rejected': missing field"),
    ],
)
def test_rw_paired_bad_records(util, bad, message):
    with pytest.raises(DatasetError) as e:
        make_dataset("rw_paired", util, source=[bad])
    assert str(e.value) == f"<list>, line 1, {message}"


# --------------------------------------------------------------------- math_code

MATH_CODE = [
    {"qid": "m1", "prompt": "2+2=", "task": "math", "solutions": ["4"]},
    {"qid": "c1", "prompt": "print a+b", "task": "code", "input_output": '{"inputs": ["1 2"], "outputs": ["3"]}'},
    {"qid": "c2", "prompt": "print a*b", "task": "code", "input_output": {"inputs": ["2 2"], "outputs": ["4"]}},
]


def test_math_code_samples_and_metadata(util):
    ds = make_dataset("math_code", util, source=MATH_CODE)
    s = by_id(ds)
    assert sorted(s) == ["c1", "c2", "m1"]
    assert s["m1"].metadata["task"] == ["math"] and s["m1"].metadata["solutions"] == [["4"]]
    assert s["m1"].metadata["input_output"] == [None]
    assert s["c2"].metadata["input_output"] == [{"inputs": ["2 2"], "outputs": ["4"]}]
    assert set(s["c1"].metadata) == {"prompt", "task", "solutions", "input_output"}


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"prompt": "x", "task": "math", "solutions": ["1"]}, "field 'qid': missing field"),
        ({"qid": "x", "prompt": "x", "task": "proof", "solutions": ["1"]}, "field 'task': must be one of 'math', 'code', got 'proof'"),
        ({"qid": "x", "prompt": "x", "solutions": ["1"]}, "field 'task': missing field"),
        ({"qid": "x", "prompt": "x", "task": "math"}, "field 'solutions': missing field"),
        ({"qid": "x", "prompt": "x", "task": "math", "solutions": "1"}, "field 'solutions': expected a non-empty list of strings, got str"),
        ({"qid": "x", "prompt": "x", "task": "math", "solutions": [1]}, "field 'solutions[0]': expected a string, got int"),
        ({"qid": "x", "prompt": "x", "task": "code"}, "field 'input_output': missing field"),
        ({"qid": "x", "prompt": "x", "task": "code", "input_output": "{nope"}, "field 'input_output': invalid JSON string: Expecting property name enclosed in double quotes"),
        ({"qid": "x", "prompt": "x", "task": "code", "input_output": [1]}, "field 'input_output': expected an object with 'inputs' and 'outputs', got list"),
        ({"qid": "x", "prompt": "x", "task": "code", "input_output": {"inputs": []}}, "field 'input_output.outputs': expected a list, got NoneType"),
        ({"qid": "x", "prompt": "x", "task": "code", "input_output": {"inputs": [1], "outputs": []}}, "field 'input_output.outputs': 1 inputs but 0 outputs"),
    ],
)
def test_math_code_bad_records(tmp_path, util, bad, message):
    path = jsonl(tmp_path, MATH_CODE + [bad])
    with pytest.raises(DatasetError) as e:
        make_dataset("math_code", util, source=path)
    assert str(e.value) == f"{path}, line 4, {message}"


def _scored(util, n=10, **args):
    records = [{"qid": f"q{i}", "prompt": f"{i}+0=", "task": "math", "solutions": [str(i)]} for i in range(n)]
    return make_dataset("math_code", util, source=records, **args)


def test_filter_curriculum_drops_highest_first_within_budget(util):
    ds = _scored(util, filter_threshold=0.5, max_filter_percentage=0.3)
    scores = {"q0": 0.9, "q1": 0.6, "q2": 1.0, "q3": 0.5, "q4": 0.95, "q5": 0.1}
    # Above 0.5: q2 (1.0), q4 (0.95), q0 (0.9), q1 (0.6); q3 is not *above*. Budget floor(0.3 * 10) = 3.
    assert ds.filter(scores) == ["q2", "q4", "q0"]
    assert len(ds) == 7 and sorted(ds.ids) == ["q1", "q3", "q5", "q6", "q7", "q8", "q9"]
    # Second call: 7 active, budget floor(2.1) = 2, only q1 is left above the threshold.
    assert ds.filter(scores) == ["q1"]
    assert len(ds) == 6
    # Dropped prompts are gone from __getitem__ too.
    assert {ds[i].ids[0] for i in range(len(ds))} == {"q3", "q5", "q6", "q7", "q8", "q9"}


def test_filter_ignores_unknown_ids_and_respects_small_budgets(util):
    ds = _scored(util, n=3, filter_threshold=0.0, max_filter_percentage=0.5)
    # Budget floor(0.5 * 3) = 1; "other" belongs to another rank.
    assert ds.filter({"other": 5.0, "q0": 0.2, "q1": 0.7}) == ["q1"]
    tied_first = next(i for i in ds.ids if i in ("q0", "q2"))  # ties go in dataset (shuffled) order
    assert ds.filter({"q0": 0.2, "q2": 0.2}) == [tied_first]  # budget floor(0.5 * 2) = 1
    assert len(ds) == 1


def test_filter_defaults_never_drop(util):
    ds = _scored(util)
    assert ds.filter({f"q{i}": 1.0 for i in range(10)}) == [] and len(ds) == 10


def test_curriculum_drop_budget_rounding():
    from realflow.api.dataset import curriculum_drop

    ids = list(range(100))
    scores = dict.fromkeys(ids, 1.0)
    assert len(curriculum_drop(ids, scores, 0.5, 0.29)) == 29  # 0.29 * 100 == 28.999...
    assert curriculum_drop(ids, scores, 0.5, 0.0) == []
    assert curriculum_drop([], {}, 0.5, 0.5) == []
