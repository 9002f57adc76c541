"""The worker's SampleStore: batches kept whole, handed out whole when the ids match,
gathered row by row otherwise, dropped once nothing refers to them."""
from __future__ import annotations

import pytest
import torch

from realflow.api.data import SequenceSample
from realflow.api.errors import DataError
from realflow.system.sample_store import SampleStore


def _batch(ids, lens, key="x", start=0, meta=True):  # noqa: ANN001
    data = torch.arange(start, start + sum(lens))
    return SequenceSample(keys={key}, ids=list(ids), seqlens={key: [[n] for n in lens]},
                          trailing_shapes={key: ()}, dtypes={key: data.dtype}, data={key: data},
                          metadata={"tag": [f"t{sid}" for sid in ids]} if meta else {})


def test_a_batch_asked_for_whole_comes_back_without_a_copy():
    store = SampleStore()
    b = _batch(["a", "b", "c"], [2, 3, 1])
    store.put(b)
    got = store.get(["a", "b", "c"], ["x"])
    assert got.data["x"].data_ptr() == b.data["x"].data_ptr() and got.seqlens["x"] == [[2], [3], [1]]
    assert got.metadata == {"tag": ["ta", "tb", "tc"]}
    assert torch.equal(store.tensor("b", "x"), torch.tensor([2, 3, 4]))


def test_other_orders_subsets_and_keys_from_several_batches_are_gathered():
    store = SampleStore()
    store.put(_batch(["a", "b", "c"], [2, 3, 1]))  # x: a=[0,1] b=[2,3,4] c=[5]
    store.put(_batch(["c", "a"], [1, 2], key="y", start=100))  # y: c=[100] a=[101,102]
    got = store.get(["c", "a"], ["x", "y"])
    assert got.ids == ["c", "a"]
    assert torch.equal(got.data["x"], torch.tensor([5, 0, 1])) and got.seqlens["x"] == [[1], [2]]
    assert torch.equal(got.data["y"], torch.tensor([100, 101, 102]))
    assert got.metadata["tag"] == ["tc", "ta"]
    assert store.holdings() == {"a": {"x", "y"}, "b": {"x"}, "c": {"x", "y"}}


def test_a_newer_value_replaces_a_key_and_free_drops_batches():
    store = SampleStore()
    store.put(_batch(["a", "b"], [1, 1]))
    store.put(_batch(["a", "b"], [2, 2], start=50))  # replaces x for both: the first batch is unreferenced
    assert len(store._batches) == 1
    assert torch.equal(store.get(["a", "b"], ["x"]).data["x"], torch.tensor([50, 51, 52, 53]))
    store.put(_batch(["a"], [1], key="y"))
    assert store.free(["a", "zzz"]) == 1 and len(store) == 1 and len(store._batches) == 1
    assert store.free(["b"]) == 1 and len(store) == 0 and not store._batches


def test_missing_data_is_named():
    store = SampleStore()
    store.put(_batch(["a"], [1]))
    with pytest.raises(DataError, match=r"no key 'y' for sample 'a' here \(keys held for it: \['x'\]\)"):
        store.get(["a"], ["x", "y"])
    with pytest.raises(DataError, match=r"no key 'x' for sample 'q' here \(keys held for it: None\)"):
        store.tensor("q", "x")
    with pytest.raises(DataError, match="carries no tensors"):
        store.put(_batch(["b"], [1]).meta())
