"""Pure partitioners over token counts: data-parallel split, micro-batch grouping.

Plain lists of ints in, plain lists out. `SequenceSample.split_dp` and
`SequenceSample.split_mbs` (realflow.api.data, which re-exports these names) feed
them the per-sample token counts; the master can call them on metadata alone.

- `partition_balanced`: contiguous partition into exactly k parts with the
  smallest possible maximum part sum (optimal, not a heuristic).
- `ffd_groups`: non-contiguous grouping under a token budget into at least
  `min_groups` groups (bin packing is NP-hard: this is first-fit decreasing plus a
  balancing pass, with the guarantees stated on the function).
- `restore_order` / `reorder`: the permutation that undoes a grouping.

Deliberately not here: torch, SequenceSample, anything that knows what a token is.
"""
from __future__ import annotations

import bisect
import heapq
from itertools import accumulate
from typing import Sequence, TypeVar

from realflow.api.errors import DataError

T = TypeVar("T")


def _check_sizes(sizes: Sequence[int], what: str) -> None:
    for i, s in enumerate(sizes):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise DataError(f"{what}: size at index {i} must be an int >= 0, got {s!r}")


def _n_parts_greedy(sizes: Sequence[int], cap: int) -> int:
    """Fewest contiguous parts with sums <= cap (greedy is optimal; needs cap >= max)."""
    parts, load = 1, 0
    for s in sizes:
        if load + s > cap:
            parts, load = parts + 1, s
        else:
            load += s
    return parts


def partition_balanced(sizes: Sequence[int], k: int) -> list[tuple[int, int]]:
    """Split `sizes` into exactly `k` contiguous non-empty ranges [start, end).

    Guarantee: the largest part sum is the minimum achievable over all contiguous
    partitions into k non-empty parts (binary search on the bound, with greedy
    feasibility). Hence it is also at most sum/k + max(sizes). Among the optimal
    partitions, cuts are placed as close as possible to an even share of what is
    left, so parts are also close to each other (a heuristic, not a guarantee).
    O(n log(sum) + k log n).

    >>> partition_balanced([5, 1, 1, 1, 1, 1], 2)
    [(0, 1), (1, 6)]
    """
    _check_sizes(sizes, "partition_balanced")
    n = len(sizes)
    if not isinstance(k, int) or k < 1 or k > n:
        raise DataError(
            f"partition_balanced: cannot split {n} items into k={k} non-empty parts "
            f"(need 1 <= k <= {n})"
        )
    lo, hi = max(sizes), sum(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if _n_parts_greedy(sizes, mid) <= k:
            hi = mid
        else:
            lo = mid + 1
    return _cuts_under_cap(sizes, k, cap=lo)


def _cuts_under_cap(sizes: Sequence[int], k: int, cap: int) -> list[tuple[int, int]]:
    n = len(sizes)
    pre = [0, *accumulate(sizes)]
    # reach[i]: end of the longest part starting at i with sum <= cap.
    # need[i]: fewest parts (each <= cap) covering sizes[i:]; non-increasing in i.
    reach = [0] * n
    j = 0
    for i in range(n):
        j = max(j, i + 1)
        while j < n and pre[j + 1] - pre[i] <= cap:
            j += 1
        reach[i] = j
    need = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        need[i] = 1 + need[reach[i]]

    parts: list[tuple[int, int]] = []
    start = 0
    for left in range(k, 1, -1):  # `left` parts remain, this one included
        # Invariant: sizes[start:] splits into `left` parts <= cap,
        # i.e. need[start] <= left <= n - start.
        hi_end = min(reach[start], n - (left - 1))
        lo_end, top = start + 1, hi_end  # first end with need[end] <= left - 1
        while lo_end < top:
            mid = (lo_end + top) // 2
            if need[mid] <= left - 1:
                top = mid
            else:
                lo_end = mid + 1
        target = pre[start] + (pre[n] - pre[start]) / left
        end = bisect.bisect_left(pre, target, lo_end, hi_end + 1)
        end = min(max(end, lo_end), hi_end)
        if end > lo_end and target - pre[end - 1] <= pre[end] - target:
            end -= 1  # the cut just before is at least as close to an even share
        parts.append((start, end))
        start = end
    parts.append((start, n))
    assert all(pre[e] - pre[s] <= cap and s < e for s, e in parts), (parts, cap)
    return parts


def _first_fit_decreasing(
    sizes: Sequence[int], order: list[int], cap: int | None
) -> list[list[int]]:
    groups: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        for g, load in enumerate(loads):
            if cap is None or load + sizes[i] <= cap:
                groups[g].append(i)
                loads[g] += sizes[i]
                break
        else:
            groups.append([i])
            loads.append(sizes[i])
    return groups


def _least_loaded(
    sizes: Sequence[int], order: list[int], cap: int | None, n_groups: int
) -> list[list[int]]:
    """Largest first into the least-loaded group; a new group only when none has room."""
    groups: list[list[int]] = []
    heap: list[tuple[int, int]] = []  # (load, group index)
    for i in order:
        s = sizes[i]
        # The least-loaded group is the one most likely to have room: if it has none,
        # no group has.
        if len(groups) < n_groups or cap is not None and heap[0][0] + s > cap:
            groups.append([i])
            heapq.heappush(heap, (s, len(groups) - 1))
        else:
            load, g = heapq.heappop(heap)
            groups[g].append(i)
            heapq.heappush(heap, (load + s, g))
    return groups


def ffd_groups(sizes: Sequence[int], max_tokens: int | None, min_groups: int) -> list[list[int]]:
    """Group item indices so each group's size sum is <= `max_tokens`.

    Guarantees:
    - at least `min_groups` groups, none empty, every index exactly once;
    - every group sums to <= max_tokens, except that an item larger than the budget
      goes alone in its own group;
    - the number of groups is max(min_groups, m) where m is the number of groups
      first-fit decreasing (FFD) needs (FFD uses at most 11/9 OPT + 6/9 groups);
    - deterministic: indices ascending within a group, groups ordered by their
      smallest index.

    How: FFD fixes the group count m' = max(min_groups, m); items are then dealt,
    largest first, to the least-loaded group with room, which balances the groups
    (FFD alone piles tokens into the first ones). If that pass needs more than m'
    groups, FFD's grouping is kept, split to reach min_groups.
    `max_tokens=None` means no budget: exactly `min_groups` balanced groups.

    >>> ffd_groups([4, 4, 2, 2], max_tokens=6, min_groups=1)
    [[0, 2], [1, 3]]
    """
    _check_sizes(sizes, "ffd_groups")
    n = len(sizes)
    if not isinstance(min_groups, int) or min_groups < 1 or min_groups > n:
        raise DataError(
            f"ffd_groups: cannot make min_groups={min_groups} non-empty groups from "
            f"{n} items (need 1 <= min_groups <= {n})"
        )
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise DataError(f"ffd_groups: max_tokens must be an int >= 1 or None, got {max_tokens!r}")
    order = sorted(range(n), key=lambda i: (-sizes[i], i))
    ffd = _first_fit_decreasing(sizes, order, max_tokens)
    n_groups = max(min_groups, len(ffd))
    groups = _least_loaded(sizes, order, max_tokens, n_groups)
    if len(groups) > n_groups:
        groups = ffd
        while len(groups) < min_groups:
            # Split the heaviest group that has two items; subsets keep the budget.
            g = max((g for g in groups if len(g) > 1), key=lambda g: sum(sizes[i] for i in g))
            g.sort(key=lambda i: (-sizes[i], i))
            groups.append([g.pop()])
    groups = [sorted(g) for g in groups]
    groups.sort(key=lambda g: g[0])
    return groups


def restore_order(groups: Sequence[Sequence[int]]) -> list[int]:
    """The permutation `backward` with `reorder(concat(groups), backward) == range(n)`.

    If outputs[j] is the output of the j-th item in group order (groups concatenated),
    `reorder(outputs, restore_order(groups))` lists outputs in original index order.
    `groups` must hold every index 0..n-1 exactly once.

    >>> restore_order([[1, 2], [0]])
    [2, 0, 1]
    """
    forward = [i for g in groups for i in g]
    n = len(forward)
    backward = [-1] * n
    for pos, i in enumerate(forward):
        if not isinstance(i, int) or not 0 <= i < n or backward[i] != -1:
            raise DataError(
                f"restore_order: groups must hold each index 0..{n - 1} exactly once; "
                f"index {i!r} at position {pos} is out of range or repeated"
            )
        backward[i] = pos
    return backward


def reorder(items: Sequence[T], indices: Sequence[int]) -> list[T]:
    """`[items[i] for i in indices]`: apply a permutation from this module."""
    return [items[i] for i in indices]
