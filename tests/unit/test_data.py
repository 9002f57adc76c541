"""SequenceSample: packing invariants as properties, and every validation error."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realflow.api.data import MicroBatchSpec, SequenceSample, SplitSpec, reorder
from realflow.api.errors import DataError

FAST = settings(max_examples=120, deadline=None)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"
KEYS = ["packed_input_ids", "logprobs", "rewards"]


# ------------------------------------------------------------------ strategies


def _tensor(total: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    # Distinct values per row so that a misplaced slice cannot go unnoticed.
    numel = total * math.prod(shape)
    return torch.arange(numel).reshape(total, *shape).to(dtype)


@st.composite
def samples(draw, min_bs: int = 1, max_bs: int = 8, with_data: bool | None = None) -> SequenceSample:
    """Random batches: 1-3 keys, 0-3 sequences per sample (multi-response), empty sequences too."""
    bs = draw(st.integers(min_bs, max_bs))
    ids = draw(
        st.lists(st.one_of(st.integers(-50, 50), st.text(max_size=3)), min_size=bs, max_size=bs, unique=True)
    )
    keys = draw(st.sets(st.sampled_from(KEYS), min_size=1))
    seqlens = {
        k: draw(st.lists(st.lists(st.integers(0, 6), max_size=3), min_size=bs, max_size=bs)) for k in keys
    }
    shapes = {k: draw(st.sampled_from([(), (2,), (1, 3)])) for k in keys}
    dtypes = {k: draw(st.sampled_from([torch.float32, torch.int64, torch.bool])) for k in keys}
    if with_data is None:
        with_data = draw(st.booleans())
    data = None
    if with_data:
        data = {k: _tensor(sum(map(sum, seqlens[k])), shapes[k], dtypes[k]) for k in keys}
    metadata = {"source": [f"m{sid}" for sid in ids]} if draw(st.booleans()) else {}
    return SequenceSample(
        keys=keys, ids=ids, seqlens=seqlens, trailing_shapes=shapes, dtypes=dtypes, data=data, metadata=metadata
    )


@st.composite
def sample_and_spec(draw) -> tuple[SequenceSample, SplitSpec]:
    x = draw(samples())
    sizes, left = [], x.bs
    while left:
        sizes.append(draw(st.integers(1, left)))
        left -= sizes[-1]
    return x, SplitSpec.from_sizes(sizes)


def assert_same(a: SequenceSample, b: SequenceSample) -> None:
    assert a.keys == b.keys and a.ids == b.ids
    assert a.seqlens == b.seqlens and a.metadata == b.metadata
    assert a.trailing_shapes == b.trailing_shapes and a.dtypes == b.dtypes
    assert (a.data is None) == (b.data is None)
    if a.data is not None:
        assert set(a.data) == set(b.data)
        for k in a.data:
            assert a.data[k].dtype == b.data[k].dtype and torch.equal(a.data[k], b.data[k]), k


def ids_of(parts: list[SequenceSample]) -> list:
    return [sid for p in parts for sid in p.ids]


def batch() -> SequenceSample:
    """Three samples: one response, two responses, one response; a scalar per sequence."""
    return SequenceSample(
        keys={"seq", "reward"},
        ids=["a", "b", "c"],
        seqlens={"seq": [[3], [2, 4], [1]], "reward": [[1], [1, 1], [1]]},
        trailing_shapes={"seq": (), "reward": ()},
        dtypes={"seq": torch.int64, "reward": torch.float32},
        data={"seq": torch.arange(10), "reward": torch.tensor([0.1, 0.2, 0.3, 0.4])},
        metadata={"answer": ["1", "2", "3"]},
    )


def fields(**overrides) -> dict:
    x = batch()
    f = dict(
        keys=x.keys, ids=x.ids, seqlens=x.seqlens, trailing_shapes=x.trailing_shapes,
        dtypes=x.dtypes, data=x.data, metadata=x.metadata,
    )
    f.update(overrides)
    return f


# ------------------------------------------------------------------ properties


@FAST
@given(sample_and_spec())
def test_gather_of_split_is_identity(case):
    x, spec = case
    parts = x.split(spec)
    assert [p.bs for p in parts] == spec.sizes
    for p in parts:
        p.validate()
    assert_same(SequenceSample.gather(parts), x)


@FAST
@given(samples())
def test_gather_of_unpack_is_identity(x):
    parts = x.unpack()
    assert [p.ids for p in parts] == [[sid] for sid in x.ids]
    for i, p in enumerate(parts):
        p.validate()
        for k in x.keys:
            assert p.seqlens_of(k, 0) == x.seqlens_of(k, i)
    assert_same(SequenceSample.gather(parts), x)


@FAST
@given(samples(), st.integers(1, 8), st.data())
def test_split_dp_is_contiguous_balanced_and_complete(x, n, data):
    n = min(n, x.bs)
    key = data.draw(st.sampled_from(sorted(x.keys)))
    parts = x.split_dp(n, key=key)
    assert len(parts) == n and all(p.bs >= 1 for p in parts)
    assert ids_of(parts) == x.ids  # every id exactly once, order kept
    counts = x.token_counts(key)
    assert max(sum(p.token_counts(key)) for p in parts) <= sum(counts) / n + max(counts)
    for p in parts:
        p.validate()
    assert_same(SequenceSample.gather(parts), x)


@FAST
@given(samples(), st.integers(1, 8), st.one_of(st.none(), st.integers(1, 30)))
def test_split_mbs_budget_coverage_and_order(x, n_mbs, budget):
    spec = MicroBatchSpec(n_mbs=min(n_mbs, x.bs), max_tokens_per_mb=budget)
    mbs, forward, backward = x.split_mbs(spec)
    key = x.default_token_key()
    assert len(mbs) >= spec.n_mbs and all(mb.bs >= 1 for mb in mbs)
    assert sorted(forward) == list(range(x.bs))
    assert ids_of(mbs) == [x.ids[i] for i in forward]
    for mb in mbs:
        mb.validate()
        tokens = sum(mb.token_counts(key))
        if budget is not None and tokens > budget:
            assert mb.bs == 1, "only a lone oversized sample may exceed the budget"
    # Per-sample outputs computed micro-batch by micro-batch come back in order.
    outputs = [f"y({sid})" for mb in mbs for sid in mb.ids]
    assert reorder(outputs, backward) == [f"y({sid})" for sid in x.ids]
    assert_same(SequenceSample.gather(mbs).reorder(backward), x)


@FAST
@given(samples(with_data=True))
def test_meta_select_update_remap_to(x):
    m = x.meta()
    assert m.data is None
    assert_same(m, x.meta())
    assert m.seqlens == x.seqlens and m.metadata == x.metadata and m.ids == x.ids

    keys = sorted(x.keys)
    head = x.select(keys[:1])
    head.update_(x.select(keys[1:]))
    assert_same(head, x)

    y = x.to("cpu")
    assert_same(y, x)
    mapping = {k: k + "_renamed" for k in keys}
    y.remap_keys_(mapping)
    assert y.keys == set(mapping.values())
    y.validate()
    y.remap_keys_({v: k for k, v in mapping.items()})
    assert_same(y, x)
    assert x.keys == set(keys), "the original is untouched"


@FAST
@given(samples())
def test_cu_seqlens_and_lengths(x):
    for k in x.keys:
        flat = x.flat_seqlens(k)
        cu = x.cu_seqlens(k)
        assert cu.dtype == torch.int32 and cu.shape == (len(flat) + 1,)
        assert cu[0] == 0 and cu[-1] == x.total_len(k)
        assert torch.equal(cu[1:] - cu[:-1], torch.tensor(flat, dtype=torch.int32))


# --------------------------------------------------------------- worked cases


def test_batch_layout():
    x = batch()
    assert x.bs == 3
    assert x.flat_seqlens("seq") == [3, 2, 4, 1]
    assert x.cu_seqlens("seq").tolist() == [0, 3, 5, 9, 10]
    assert x.seqlens_of("seq", 1) == [2, 4]
    assert x.token_counts() == [3, 6, 1]  # "seq" is the longest key
    b = x.unpack()[1]
    assert b.data["seq"].tolist() == [3, 4, 5, 6, 7, 8]
    assert b.data["reward"].tolist() == pytest.approx([0.2, 0.3])
    assert b.metadata == {"answer": ["2"]}


def test_split_mbs_example():
    mbs, forward, backward = batch().split_mbs(MicroBatchSpec(n_mbs=1, max_tokens_per_mb=6))
    assert [mb.ids for mb in mbs] == [["a", "c"], ["b"]]
    assert forward == [0, 2, 1] and backward == [0, 2, 1]


def test_from_default():
    x = SequenceSample.from_default(
        ids=[0, 1], seqlens=[2, 3], data={"ids": torch.arange(5), "h": torch.zeros(5, 4, dtype=torch.bfloat16)},
        metadata={"q": ["x", "y"]},
    )
    assert x.seqlens == {"ids": [[2], [3]], "h": [[2], [3]]}
    assert x.trailing_shapes == {"ids": (), "h": (4,)}
    assert x.dtypes == {"ids": torch.int64, "h": torch.bfloat16}


def test_metadata_only_and_partial_data():
    x = batch()
    x.update_(
        SequenceSample(
            keys={"adv"}, ids=["a", "b", "c"], seqlens={"adv": [[3], [2, 4], [1]]},
            trailing_shapes={"adv": ()}, dtypes={"adv": torch.float32}, data=None,
        )
    )
    assert x.data["adv"] is None and x.data["seq"] is not None
    x.validate()
    parts = x.unpack()
    assert parts[0].data["adv"] is None
    assert SequenceSample.gather(parts).data["adv"] is None


def test_empty_batch():
    x = SequenceSample(keys=set(), ids=[], seqlens={}, trailing_shapes={}, dtypes={})
    assert x.bs == 0 and x.split(SplitSpec(())) == []


def test_unchecked_skips_validation_until_asked():
    bad = SequenceSample.unchecked(**fields(ids=["a", "a", "c"]))
    with pytest.raises(DataError, match="duplicate id 'a'"):
        bad.validate()


def test_repr_is_short():
    r = repr(batch())
    assert "bs=3" in r and "'seq': 10" in r and "tensor" not in r


# -------------------------------------------------------- validation messages


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (dict(seqlens={"seq": [[3], [2, 4], [1]]}),
         r"seqlens has keys \['seq'\] but keys are \['reward', 'seq'\] \(missing \['reward'\]"),
        (dict(dtypes={"seq": torch.int64, "reward": torch.float32, "x": torch.int64}),
         r"dtypes has keys .* extra \['x'\]"),
        (dict(trailing_shapes={"seq": ()}), r"trailing_shapes has keys \['seq'\]"),
        (dict(data={"seq": torch.arange(10)}), r"data has keys \['seq'\] .*missing \['reward'\]"),
        (dict(ids=["a", "b", "a"]), r"duplicate id 'a' at positions 0 and 2"),
        (dict(seqlens={"seq": [[3], [2, 4]], "reward": [[1], [1, 1], [1]]}),
         r"key 'seq' has seqlens for 2 samples but there are 3 ids"),
        (dict(seqlens={"seq": [[3], [2, -4], [1]], "reward": [[1], [1, 1], [1]]}),
         r"key 'seq', sample 'b': seqlens must be a list of ints >= 0, got \[2, -4\]"),
        (dict(seqlens={"seq": [[3], [2, 4], 1], "reward": [[1], [1, 1], [1]]}),
         r"key 'seq', sample 'c': .* got 1"),
        (dict(seqlens={"seq": [[3], [2, 4], [1]], "reward": [[1], [1, True], [1]]}),
         r"key 'reward', sample 'b'"),
        (dict(data={"seq": torch.arange(11), "reward": torch.zeros(4)}),
         r"key 'seq': data has 11 rows \(shape \(11,\)\) but its seqlens sum to 10 "
         r"\(per sample \[\"'a': \[3\]\", \"'b': \[2, 4\]\", \"'c': \[1\]\"\]\)"),
        (dict(data={"seq": torch.tensor(3), "reward": torch.zeros(4)}), r"key 'seq': data has no rows"),
        (dict(data={"seq": torch.arange(10).view(10, 1), "reward": torch.zeros(4)}),
         r"key 'seq': data has trailing shape \(1,\) but trailing_shapes says \(\)"),
        (dict(data={"seq": torch.arange(10), "reward": torch.zeros(4, dtype=torch.float64)}),
         r"key 'reward': data has dtype torch.float64 but dtypes says torch.float32"),
        (dict(data={"seq": list(range(10)), "reward": torch.zeros(4)}),
         r"key 'seq': data must be a torch.Tensor or None, got list"),
        (dict(metadata={"answer": ["1", "2"]}),
         r"metadata 'answer' must be a list with one entry per sample \(3\), got 2"),
        (dict(metadata={"answer": "123"}), r"metadata 'answer' .* got str"),
        (dict(trailing_shapes={"seq": (-1,), "reward": ()}), r"key 'seq': trailing shape must be ints >= 0"),
        (dict(dtypes={"seq": "int64", "reward": torch.float32}), r"key 'seq': dtype must be a torch.dtype"),
        (dict(keys={"seq", 3}), r"keys must be strings, got 3"),
    ],
)
def test_constructor_errors(overrides, pattern):
    with pytest.raises(DataError, match=pattern):
        SequenceSample(**fields(**overrides))


def test_from_default_refuses_to_guess_per_sample_scalars():
    with pytest.raises(DataError) as e:
        SequenceSample.from_default(ids=["a", "b"], seqlens=[3, 4], data={"ids": torch.arange(7), "r": torch.ones(2)})
    msg = str(e.value)
    assert "key 'r' has 2 rows but seqlens sum to 7" in msg and "[[1]] * 2" in msg


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(ids=["a", "b"], seqlens=[3], data={}), r"1 seqlens for 2 ids"),
        (dict(ids=["a", "b"], seqlens=[3, -1], data={}), r"sample 'b': length must be an int >= 0, got -1"),
        (dict(ids=["a"], seqlens=[3], data={"x": [1, 2, 3]}), r"key 'x': expected a tensor, got list"),
        (dict(ids=["a"], seqlens=[3], data={"x": torch.arange(4)}), r"key 'x' has 4 rows but seqlens sum to 3$"),
    ],
)
def test_from_default_errors(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        SequenceSample.from_default(**kwargs)


def test_gather_errors():
    x = batch()
    a, b, c = x.unpack()
    with pytest.raises(DataError, match="no samples given"):
        SequenceSample.gather([])
    with pytest.raises(DataError, match=r"id 'a' appears in samples \[0, 2\]"):
        SequenceSample.gather([a, b, a])
    with pytest.raises(DataError, match=r"sample 1 \(ids \['b'\]\) lacks keys \['reward'\]; it has \['seq'\]"):
        SequenceSample.gather([a, b.select(["seq"])])
    b_half = b.to("cpu")
    b_half.data["reward"] = b_half.data["reward"].half()
    b_half.dtypes["reward"] = torch.float16
    with pytest.raises(DataError, match=r"key 'reward': sample 0 has trailing shape \(\) / torch.float32 "
                                        r"but sample 1 has \(\) / torch.float16"):
        SequenceSample.gather([a, b_half])
    b_meta = b.to("cpu")
    b_meta.metadata = {}
    with pytest.raises(DataError, match=r"sample 0 has metadata \['answer'\] but sample 1 has \[\]"):
        SequenceSample.gather([a, b_meta])
    with pytest.raises(DataError, match=r"samples \[1\] are metadata-only but others carry data"):
        SequenceSample.gather([a, b.meta()])
    b_none = b.to("cpu")
    b_none.data["seq"] = None
    with pytest.raises(DataError, match=r"key 'seq' has data in some samples and None in samples \[1\]"):
        SequenceSample.gather([a, b_none])
    assert SequenceSample.gather([c, a], keys=["seq"]).keys == {"seq"}


@pytest.mark.parametrize(
    "partitions, pattern",
    [
        (((1, 3),), r"partition 0 starts at 1 but must start at 0"),
        (((0, 1), (2, 3)), r"partition 1 starts at 2 but must start at 1"),
        (((0, 1), (1, 1)), r"partition 1 = \[1, 1\) is empty or reversed"),
        (((0, 1, 2),), r"partition 0 must be a pair of ints, got \(0, 1, 2\)"),
        (((0, 1.5),), r"partition 0 must be a pair of ints"),
    ],
)
def test_split_spec_errors(partitions, pattern):
    with pytest.raises(DataError, match=pattern):
        SplitSpec(partitions)


def test_split_spec_from_sizes_and_coverage():
    assert SplitSpec.from_sizes([2, 1]).partitions == ((0, 2), (2, 3))
    assert SplitSpec([[0, 1], [1, 3]]).partitions == ((0, 1), (1, 3))
    with pytest.raises(DataError, match=r"size 1 must be an int >= 1, got 0"):
        SplitSpec.from_sizes([2, 0])
    with pytest.raises(DataError, match=r"spec covers 2 samples but bs is 3"):
        batch().split(SplitSpec.from_sizes([1, 1]))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(n_mbs=0), r"n_mbs must be an int >= 1, got 0"),
        (dict(n_mbs=2.0), r"n_mbs must be an int >= 1, got 2.0"),
        (dict(max_tokens_per_mb=0), r"max_tokens_per_mb must be an int >= 1 or None, got 0"),
    ],
)
def test_micro_batch_spec_errors(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        MicroBatchSpec(**kwargs)


def test_partition_errors_name_the_numbers():
    with pytest.raises(DataError, match=r"cannot split 3 samples into 4 data-parallel parts"):
        batch().split_dp(4)
    with pytest.raises(DataError, match=r"cannot split 3 samples into at least n_mbs=5 micro-batches"):
        batch().split_mbs(MicroBatchSpec(n_mbs=5))


def test_update_errors():
    x = batch()
    with pytest.raises(DataError, match=r"ids differ at position 1: 'b' here vs 'z' in the update"):
        x.update_(SequenceSample.from_default(["a", "z", "c"], [1, 1, 1], {"v": torch.zeros(3)}))
    with pytest.raises(DataError, match=r"bs 3 vs 2; ids \['a', 'b', 'c'\] vs \['a', 'b'\]"):
        x.update_(SequenceSample.from_default(["a", "b"], [1, 1], {"v": torch.zeros(2)}))


def test_key_errors_list_available_keys():
    x = batch()
    with pytest.raises(DataError, match=r"select: unknown keys \['logits'\]; available: \['reward', 'seq'\]"):
        x.select(["seq", "logits"])
    with pytest.raises(DataError, match=r"remap_keys_: unknown keys \['nope'\]; available: \['reward', 'seq'\]"):
        x.remap_keys_({"nope": "x"})
    with pytest.raises(DataError, match=r"gives two keys the name\(s\) \['reward'\]"):
        x.remap_keys_({"seq": "reward"})
    with pytest.raises(DataError, match=r"unknown key 'logits'; available: \['reward', 'seq'\]"):
        x.total_len("logits")
    with pytest.raises(DataError, match="no keys to count tokens of"):
        SequenceSample(keys=set(), ids=["a"], seqlens={}, trailing_shapes={}, dtypes={}).split_dp(1)


def test_reorder_rejects_non_permutation():
    with pytest.raises(DataError, match=r"indices \[0, 0, 1\] are not a permutation of range\(3\)"):
        batch().reorder([0, 0, 1])


def test_swap_keys():
    x = batch()
    x.remap_keys_({"seq": "reward", "reward": "seq"})
    x.validate()
    assert x.data["reward"].shape == (10,) and x.seqlens["seq"] == [[1], [1, 1], [1]]


# ------------------------------------------------------------------------ docs


def test_docs_snippets_run():
    """The python blocks of docs/data.md run top to bottom in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, "docs/data.md has no python snippets"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
