"""The data-transfer plan: every need met exactly once, nothing redundant, deterministic."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realflow.api.data import SequenceSample
from realflow.api.errors import DataError
from realflow.system.sample_store import SampleStore
from realflow.system.transfer_plan import Need, Transfer, TransferPlan, sizes_from_meta, transfer_plan


def _holders(spec: dict[str, dict[str, set[int]]]) -> dict:
    """{"a": {"x": {0}}} -> {("a", "x"): {0}}"""
    return {(sid, k): ranks for sid, keys in spec.items() for k, ranks in keys.items()}


CASES = [
    pytest.param(
        _holders({"a": {"x": {0}}}), [Need(1, ("a",), ("x",))], None,
        [Transfer(0, (1,), "x", ("a",), (1,))], id="one-item",
    ),
    pytest.param(
        _holders({"a": {"x": {1}}}), [Need(1, ("a",), ("x",))], None, [], id="consumer-already-holds",
    ),
    pytest.param(
        _holders({"a": {"x": {0}}, "b": {"x": {0}}}), [Need(1, ("a", "b"), ("x",)), Need(2, ("a", "b"), ("x",))], None,
        [Transfer(0, (1, 2), "x", ("a", "b"), (1, 1))], id="broadcast-to-two",
    ),
    pytest.param(
        _holders({"a": {"x": {0}}, "b": {"x": {0}}}), [Need(1, ("a",), ("x",)), Need(2, ("a", "b"), ("x",))], None,
        [Transfer(0, (1, 2), "x", ("a",), (1,)), Transfer(0, (2,), "x", ("b",), (1,))], id="partial-overlap",
    ),
    pytest.param(
        _holders({"a": {"x": {0, 1}}, "b": {"x": {0, 1}}}), [Need(2, ("a", "b"), ("x",))],
        {("a", "x"): 5, ("b", "x"): 3},
        [Transfer(0, (2,), "x", ("a",), (5,)), Transfer(1, (2,), "x", ("b",), (3,))], id="least-loaded-source",
    ),
    pytest.param(
        _holders({"a": {"x": {2, 1}}}), [Need(0, ("a",), ("x",))], None,
        [Transfer(1, (0,), "x", ("a",), (1,))], id="tie-lowest-rank",
    ),
    pytest.param(
        _holders({"a": {"x": {0}, "y": {1}}}), [Need(2, ("a",), ("x", "y")), Need(2, ("a",), ("x",))], None,
        [Transfer(0, (2,), "x", ("a",), (1,)), Transfer(1, (2,), "y", ("a",), (1,))], id="two-keys-two-sources-dedup",
    ),
    pytest.param(
        _holders({"a": {"x": {0}}, "b": {"x": {1}}}), [Need(1, ("a", "b"), ("x",)), Need(0, ("a", "b"), ("x",))], None,
        [Transfer(0, (1,), "x", ("a",), (1,)), Transfer(1, (0,), "x", ("b",), (1,))], id="swap",
    ),
    pytest.param(_holders({"a": {"x": {0}}}), [], None, [], id="nothing-needed"),
]


@pytest.mark.parametrize("holders,needs,sizes,expected", CASES)
def test_plan_table(holders, needs, sizes, expected) -> None:
    assert transfer_plan(holders, needs, sizes) == TransferPlan(tuple(expected))


def test_missing_data_names_rank_sample_and_key() -> None:
    with pytest.raises(DataError, match=r"rank 3 needs key 'y' of sample 'a'.*keys held for that sample: \['x'\]"):
        transfer_plan(_holders({"a": {"x": {0}}}), [Need(3, ("a",), ("x", "y"))])


def test_bad_ranks_and_sizes_are_rejected() -> None:
    with pytest.raises(DataError, match="Need.rank"):
        Need(-1, ("a",), ("x",))
    with pytest.raises(DataError, match="holder of"):
        transfer_plan({("a", "x"): {"zero"}}, [Need(1, ("a",), ("x",))])
    with pytest.raises(DataError, match="no size given for sample 'a', key 'x'"):
        transfer_plan({("a", "x"): {0}}, [Need(1, ("a",), ("x",))], sizes={})


def test_plan_queries() -> None:
    plan = transfer_plan(
        _holders({"a": {"x": {0}}, "b": {"x": {1}}}), [Need(2, ("a", "b"), ("x",)), Need(3, ("a",), ("x",))]
    )
    assert plan.ranks() == (0, 1, 2, 3)
    assert [t.ranks for t in plan.for_rank(2)] == [(0, 2, 3), (1, 2)]
    assert plan.received_by(2) == [("a", "x"), ("b", "x")]
    assert plan.received_by(0) == []
    assert plan.sent_by_rank() == {0: 1, 1: 1}


def test_sizes_from_meta_counts_bytes() -> None:
    meta = SequenceSample(
        keys={"tok", "h"},
        ids=["a", "b"],
        seqlens={"tok": [[3], [2, 4]], "h": [[1], [1]]},
        trailing_shapes={"tok": (), "h": (2, 3)},
        dtypes={"tok": torch.int64, "h": torch.bfloat16},
    )
    assert sizes_from_meta(meta) == {("a", "h"): 12, ("b", "h"): 12, ("a", "tok"): 24, ("b", "tok"): 48}


# ------------------------------------------------------------------ properties

@st.composite
def _scenarios(draw):
    n_ranks = draw(st.integers(1, 5))
    ids = [f"s{i}" for i in range(draw(st.integers(1, 6)))]
    keys = ["k0", "k1", "k2"][: draw(st.integers(1, 3))]
    rank_sets = st.sets(st.integers(0, n_ranks - 1), min_size=1)
    holders = {(sid, k): draw(rank_sets) for sid in ids for k in keys}
    sizes = {item: draw(st.integers(0, 100)) for item in holders}
    needs = draw(st.lists(
        st.builds(
            Need,
            rank=st.integers(0, n_ranks - 1),
            ids=st.lists(st.sampled_from(ids), max_size=len(ids), unique=True).map(tuple),
            keys=st.lists(st.sampled_from(keys), max_size=len(keys), unique=True).map(tuple),
        ),
        max_size=6,
    ))
    return holders, needs, sizes


@settings(max_examples=200, deadline=None)
@given(_scenarios())
def test_every_need_is_met_exactly_once_and_nothing_else(scenario) -> None:
    holders, needs, sizes = scenario
    plan = transfer_plan(holders, needs, sizes)
    wanted = {(n.rank, item) for n in needs for item in n.items()}
    delivered = [(d, (sid, t.key)) for t in plan.transfers for d in t.dsts for sid in t.ids]
    # Never the same (id, key) to the same rank twice.
    assert len(delivered) == len(set(delivered))
    # Exactly the needs the consumer could not serve itself.
    assert set(delivered) == {(r, item) for r, item in wanted if r not in holders[item]}
    sources: dict = {}
    for t in plan.transfers:
        assert t.dsts == tuple(sorted(set(t.dsts))) and t.src not in t.dsts and t.dsts
        assert len(set(t.ids)) == len(t.ids)
        assert t.sizes == tuple(sizes[(sid, t.key)] for sid in t.ids)
        for sid in t.ids:
            assert t.src in holders[(sid, t.key)]
            # One source per item: its consumers share one broadcast.
            assert sources.setdefault((sid, t.key), t.src) == t.src
    merged = [(t.src, t.dsts, t.key) for t in plan.transfers]
    assert len(merged) == len(set(merged))
    # Deterministic.
    assert transfer_plan(holders, needs, sizes) == plan


# ------------------------------------------- the store the executor reads and fills

def test_sample_store_put_merges_keys_and_frees() -> None:
    from_default = SequenceSample.from_default(["a", "b"], [2, 3], {"tok": torch.arange(5)})
    store = SampleStore()
    store.put(from_default)
    store.put(SequenceSample.from_default(["b"], [3], {"logp": torch.ones(3)}))
    assert store.holdings() == {"a": {"tok"}, "b": {"tok", "logp"}}
    assert store.has("b", "logp") and not store.has("a", "logp") and not store.has("z", "tok")
    assert store.tensor("b", "tok").tolist() == [2, 3, 4]
    batch = store.get(["b"], ["tok", "logp"])
    assert batch.ids == ["b"] and batch.data["logp"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(DataError, match=r"no key 'logp' for sample 'a' here \(keys held for it: \['tok'\]\)"):
        store.get(["a", "b"], ["logp"])
    with pytest.raises(DataError, match="carries no tensors"):
        store.put(from_default.meta())
    assert store.free(["a", "z"]) == 1 and len(store) == 1
