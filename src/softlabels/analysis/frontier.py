"""Pareto frontiers: the points no other point beats on both axes."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points when lower ``cost`` and higher ``value`` are better.

    A point is on the front if no other point has cost <= and value >= with one strict. Returned in
    increasing cost order; exact duplicates keep the first index.
    """
    if len(cost) != len(value):
        raise ValueError(f"cost and value differ in length ({len(cost)} vs {len(value)})")
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -value[i], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if value[i] > best:
            front.append(i)
            best = value[i]
    return front


def upper_envelope(xs: Sequence[float], ys: Sequence[float], groups: Sequence[object]) -> dict[float, tuple]:
    """For each distinct x, the best y over groups and which group gave it: {x: (y, group)}."""
    best: dict[float, tuple] = {}
    for x, y, g in zip(xs, ys, groups, strict=True):
        if x not in best or y > best[x][0]:
            best[x] = (y, g)
    return dict(sorted(best.items()))
