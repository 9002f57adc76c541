"""The pure partitioners: optimality, budgets, group counts, order restoration."""
from __future__ import annotations

import doctest
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import realflow.api.partition as partition
from realflow.api.errors import DataError
from realflow.api.partition import ffd_groups, partition_balanced, reorder, restore_order

FAST = settings(max_examples=150, deadline=None)


def _brute_min_max(sizes: list[int], k: int) -> int:
    n = len(sizes)
    best = None
    for cuts in combinations(range(1, n), k - 1):
        bounds = [0, *cuts, n]
        worst = max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


def _reference_ffd_count(sizes: list[int], cap: int | None) -> int:
    loads: list[int] = []
    for s in sorted(sizes, reverse=True):
        for g, load in enumerate(loads):
            if cap is None or load + s <= cap:
                loads[g] += s
                break
        else:
            loads.append(s)
    return len(loads)


@st.composite
def sizes_and_k(draw, max_n: int = 9):
    sizes = draw(st.lists(st.integers(0, 20), min_size=1, max_size=max_n))
    return sizes, draw(st.integers(1, len(sizes)))


# ------------------------------------------------------------ partition_balanced


@FAST
@given(sizes_and_k())
def test_partition_balanced_is_optimal(case):
    sizes, k = case
    parts = partition_balanced(sizes, k)
    assert len(parts) == k
    assert parts[0][0] == 0 and parts[-1][1] == len(sizes)
    assert all(s < e for s, e in parts)
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    worst = max(sum(sizes[s:e]) for s, e in parts)
    assert worst == _brute_min_max(sizes, k)
    # The bound the optimum implies: no part exceeds an even share by more than one item.
    assert worst <= sum(sizes) / k + max(sizes)


@FAST
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=300), st.integers(1, 16))
def test_partition_balanced_large_inputs_within_bound(sizes, k):
    k = min(k, len(sizes))
    parts = partition_balanced(sizes, k)
    assert [i for s, e in parts for i in range(s, e)] == list(range(len(sizes)))
    assert max(sum(sizes[s:e]) for s, e in parts) <= sum(sizes) / k + max(sizes)


@pytest.mark.parametrize(
    "sizes, k, expected",
    [
        ([1] * 8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
        ([5, 1, 1, 1, 1, 1], 2, [(0, 1), (1, 6)]),
        ([0, 0, 0], 3, [(0, 1), (1, 2), (2, 3)]),
        ([7], 1, [(0, 1)]),
    ],
)
def test_partition_balanced_table(sizes, k, expected):
    assert partition_balanced(sizes, k) == expected


def test_partition_balanced_spreads_slack_evenly():
    # The optimum max is 3 (the lone 3); the rest should not pile into early parts.
    parts = partition_balanced([3, 1, 1, 1, 1, 1, 1], 3)
    assert [sum([3, 1, 1, 1, 1, 1, 1][s:e]) for s, e in parts] == [3, 3, 3]


@pytest.mark.parametrize("k", [0, 4, -1])
def test_partition_balanced_rejects_bad_k(k):
    with pytest.raises(DataError, match=rf"3 items into k={k}.*1 <= k <= 3"):
        partition_balanced([1, 2, 3], k)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_partition_rejects_bad_sizes(bad):
    with pytest.raises(DataError, match=r"size at index 1 must be an int >= 0, got"):
        partition_balanced([1, bad, 3], 2)
    with pytest.raises(DataError, match=r"size at index 1"):
        ffd_groups([1, bad, 3], None, 1)


# ------------------------------------------------------------------- ffd_groups


@FAST
@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=30),
    st.one_of(st.none(), st.integers(1, 80)),
    st.integers(1, 30),
)
def test_ffd_groups_properties(sizes, budget, min_groups):
    min_groups = min(min_groups, len(sizes))
    groups = ffd_groups(sizes, budget, min_groups)
    assert all(groups), "no empty group"
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert len(groups) == max(min_groups, _reference_ffd_count(sizes, budget))
    for g in groups:
        assert g == sorted(g)
        if budget is not None and sum(sizes[i] for i in g) > budget:
            assert len(g) == 1 and sizes[g[0]] > budget, "only a lone oversized item may exceed"
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)
    assert ffd_groups(sizes, budget, min_groups) == groups  # deterministic


def test_ffd_groups_balances_when_unconstrained():
    sizes = [5, 4, 3, 3, 1]  # first fit would put everything in one group
    groups = ffd_groups(sizes, None, 2)
    assert groups == [[0, 3], [1, 2, 4]]
    assert [sum(sizes[i] for i in g) for g in groups] == [8, 8]


def test_ffd_groups_oversized_item_alone():
    assert ffd_groups([3, 100, 3], 10, 1) == [[0, 2], [1]]


@pytest.mark.parametrize("min_groups", [0, 4])
def test_ffd_groups_rejects_bad_min_groups(min_groups):
    with pytest.raises(DataError, match=rf"min_groups={min_groups} non-empty groups from 3 items"):
        ffd_groups([1, 2, 3], None, min_groups)


def test_ffd_groups_rejects_bad_budget():
    with pytest.raises(DataError, match="max_tokens must be an int >= 1 or None, got 0"):
        ffd_groups([1, 2, 3], 0, 1)


# ---------------------------------------------------------------- restore_order


@FAST
@given(st.permutations(list(range(12))), st.lists(st.integers(1, 4), min_size=1, max_size=12))
def test_restore_order_inverts_any_grouping(perm, cuts):
    groups, start = [], 0
    for c in cuts:
        if start < len(perm):
            groups.append(perm[start : start + c])
            start += c
    if start < len(perm):
        groups.append(perm[start:])
    forward = [i for g in groups for i in g]
    outputs = [f"out{i}" for i in forward]  # what a model returns in group order
    assert reorder(outputs, restore_order(groups)) == [f"out{i}" for i in range(12)]


def test_restore_order_rejects_repeats():
    with pytest.raises(DataError, match=r"index 0 at position 2 is out of range or repeated"):
        restore_order([[0, 1], [0]])


def test_doctests():
    assert doctest.testmod(partition).failed == 0
