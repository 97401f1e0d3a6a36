"""Statistics over student seeds: the one mean / std used by every table, and paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_std", "paired_ci"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (as the paper's ``np.std``) of the finite values; NaN, NaN if none."""
    vals = [float(v) for v in values if v is not None and v == v]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    return m, (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5


def paired_ci(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences ``a - b`` and its two-sided Student-t confidence interval.

    ``a[i]`` and ``b[i]`` share everything but the treatment (same images, same student seed), so the
    interval is that of the mean difference over pairs; with one pair it is unbounded (NaN bounds).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_ci needs as many a as b values, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True) if x == x and y == y]
    if not d:
        return float("nan"), float("nan"), float("nan")
    n = len(d)
    m = sum(d) / n
    if n < 2:
        return m, float("nan"), float("nan")
    from scipy import stats

    s = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)
    return m, m - half, m + half
