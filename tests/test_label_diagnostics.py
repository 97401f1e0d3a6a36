"""Tests for softlabels.labels.diagnostics: hand-computed values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from softlabels.labels.diagnostics import (
    class_similarity,
    confidence,
    cross_entropy_to_true,
    difficulty_bins,
    entropy,
    js_distance,
    label_quality_scores,
    margin,
    mean_js_distance,
    rank_by_quality,
    summarize,
    true_class_prob,
)
from softlabels.labels.transforms import topk

P = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.5, 0.0], [0.7, 0.1, 0.1, 0.1]])
Y = torch.tensor([1, 2, 3])  # the last row is misclassified by its argmax (class 0)
FAST = settings(max_examples=60, deadline=None)


def close(a: torch.Tensor, b: object, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0, equal_nan=True)


def xlx(*ps: float) -> float:
    return -sum(p * math.log(p) for p in ps if p > 0)


@st.composite
def stochastic(draw: st.DrawFn, n: int | None = None, c: int | None = None) -> torch.Tensor:
    n = draw(st.integers(1, 6)) if n is None else n
    c = draw(st.integers(2, 8)) if c is None else c
    rows = draw(st.lists(st.lists(st.integers(0, 6), min_size=c, max_size=c), min_size=n, max_size=n))
    x = torch.tensor(rows, dtype=torch.float64)
    x = torch.where(x.sum(dim=1, keepdim=True) > 0, x, torch.ones_like(x))
    return (x / x.sum(dim=1, keepdim=True)).float()


@st.composite
def pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    p = draw(stochastic())
    return p, draw(stochastic(n=p.shape[0], c=p.shape[1]))


# --------------------------------------------------------------------------------------------- per-row scores


def test_entropy_exact():
    h = entropy(P)
    assert h.dtype == torch.float64
    close(h, [xlx(0.1, 0.4, 0.3, 0.2), 1.5 * math.log(2), xlx(0.7, 0.1, 0.1, 0.1)], atol=1e-7)
    close(entropy(P, normalized=True), entropy(P) / math.log(4))
    close(entropy(torch.tensor([[0.25] * 4, [0.0, 1.0, 0.0, 0.0]])), [math.log(4), 0.0])  # 0 log 0 = 0
    close(entropy(torch.tensor([[0.25] * 4]), normalized=True), [1.0])


def test_confidence_margin_true_class_prob_exact():
    close(confidence(P), [0.4, 0.5, 0.7])
    close(margin(P), [0.1, 0.25, 0.6])
    close(margin(torch.tensor([[0.5, 0.5, 0.0]])), [0.0])  # tied top-2
    close(true_class_prob(P, Y), [0.4, 0.5, 0.1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        margin(torch.ones(2, 1))


def test_cross_entropy_to_true_is_minus_log_p_y():
    ce = cross_entropy_to_true(P, Y)
    close(ce, [-math.log(0.4), math.log(2.0), -math.log(0.1)], atol=1e-7)
    # the reference feeds probabilities to F.cross_entropy as logits: a different (compressed) score
    ref = F.cross_entropy(P, Y, reduction="none").double()
    assert (ce - ref).abs().min() > 0.05
    # p_y = 0 is clamped, not infinite
    zero = cross_entropy_to_true(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    close(zero, [-math.log(1e-12)])
    assert torch.isfinite(zero).all()


def test_js_distance_exact():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.3, 0.7]])
    kl_pm = math.log2(1 / 0.75)
    kl_qm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    close(js_distance(p, q), [1.0, math.sqrt(0.5 * kl_pm + 0.5 * kl_qm), 0.0], atol=1e-7)
    assert math.isclose(mean_js_distance(p, q), float(js_distance(p, q).mean()))
    with pytest.raises(ValueError, match="same shape"):
        js_distance(p, q[:2])


# ---------------------------------------------------------------------------------------------- properties


@FAST
@given(pq=pairs())
def test_js_distance_properties(pq: tuple[torch.Tensor, torch.Tensor]):
    p, q = pq
    d = js_distance(p, q)
    assert torch.equal(d, js_distance(q, p))
    assert ((d >= 0) & (d <= 1)).all()
    close(js_distance(p, p), torch.zeros(p.shape[0]), atol=1e-7)
    expected = [
        jensenshannon(a, b, base=2) for a, b in zip(p.double().numpy(), q.double().numpy(), strict=True)
    ]
    close(d, np.nan_to_num(expected), atol=1e-6)
    # sub-stochastic rows (top-k without renormalisation) also stay in [0, 1]
    s = js_distance(topk(p, k=1), q)
    assert ((s >= 0) & (s <= 1)).all()


@FAST
@given(x=stochastic())
def test_entropy_bounds_and_scipy(x: torch.Tensor):
    h = entropy(x)
    c = x.shape[1]
    assert ((h >= -1e-12) & (h <= math.log(c) + 1e-6)).all()
    close(h, [scipy_entropy(r) for r in x.double().numpy()], atol=1e-6)
    hn = entropy(x, normalized=True)
    assert ((hn >= -1e-12) & (hn <= 1 + 1e-6)).all()


# ---------------------------------------------------------------------------------------------- class views


def test_class_similarity_hand_built():
    labels = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.8, 0.0, 0.1, 0.1], [0.2, 0.3, 0.5, 0.0]])
    targets = torch.tensor([0, 0, 2])
    nan = math.nan
    expected = [[nan, 0.1, 0.1, 0.1], [nan] * 4, [0.2, 0.3, nan, 0.0], [nan] * 4]
    close(class_similarity(labels, targets, num_classes=4), expected, atol=1e-7)
    with pytest.raises(ValueError, match="4 columns but the dataset has 5 classes"):
        class_similarity(labels, targets, num_classes=5)


def test_label_quality_and_rank():
    close(label_quality_scores(P, Y), [0.4, 0.5, 0.1])
    assert rank_by_quality(P, Y).tolist() == [2, 0, 1]
    tied = torch.tensor([[0.7, 0.3], [0.9, 0.1], [0.7, 0.3], [0.9, 0.1]])
    assert rank_by_quality(tied, torch.tensor([1, 1, 1, 1])).tolist() == [1, 3, 0, 2]  # ties by index
    wide = tied.repeat(50, 1)  # 200 rows, two tied groups: wide enough for an unstable sort to reorder
    assert rank_by_quality(wide, torch.ones(200, dtype=torch.long)).tolist() == (
        list(range(1, 200, 2)) + list(range(0, 200, 2))
    )
    s = label_quality_scores(tied, torch.tensor([0, 1, 0, 1]))
    assert ((s >= 0) & (s <= 1)).all()


def test_summarize_exact():
    s = summarize(P, Y)
    hs = [xlx(0.1, 0.4, 0.3, 0.2), 1.5 * math.log(2), xlx(0.7, 0.1, 0.1, 0.1)]
    expected = {
        "mean_entropy": sum(hs) / 3,
        "mean_normalized_entropy": sum(hs) / 3 / math.log(4),
        "mean_confidence": 1.6 / 3,
        "accuracy": 2 / 3,
        "mean_true_class_prob": 1.0 / 3,
        "mean_row_sum": 1.0,
    }
    assert s.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(s[key], value, abs_tol=1e-6), key
    assert math.isclose(summarize(topk(P, k=1), Y)["mean_row_sum"], 1.6 / 3, abs_tol=1e-6)


# -------------------------------------------------------------------------------------------- difficulty bins


def test_difficulty_bins_hand_example():
    scores = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0, 0.0, 0.0])
    targets = torch.tensor([0, 0, 0, 1, 1, 0, 1])
    bins = difficulty_bins(scores, targets, num_bins=2, num_classes=3)
    as_lists = [[b.tolist() for b in c] for c in bins]
    assert as_lists == [[[5, 1], [2, 0]], [[6, 4], [3]], [[], []]]
    assert all(b.dtype == torch.int64 for c in bins for b in c)
    # ties by index; extra samples go to the first bins; fewer samples than bins -> empty trailing bins
    tied = difficulty_bins(torch.ones(4), torch.zeros(4, dtype=torch.long), num_bins=3, num_classes=1)
    assert [b.tolist() for b in tied[0]] == [[0, 1], [2], [3]]
    few = difficulty_bins(torch.tensor([2.0, 1.0]), torch.tensor([0, 0]), num_bins=4, num_classes=1)
    assert [b.tolist() for b in few[0]] == [[1], [0], [], []]


def test_difficulty_bins_validation():
    with pytest.raises(ValueError, match="NaN"):
        difficulty_bins(torch.tensor([0.0, math.nan]), torch.tensor([0, 0]), num_bins=1, num_classes=1)
    with pytest.raises(ValueError, match="1-D"):
        difficulty_bins(torch.zeros(2, 2), torch.tensor([0, 0]), num_bins=1, num_classes=1)
    with pytest.raises(ValueError, match="2 entries but there are 3"):
        difficulty_bins(torch.zeros(3), torch.tensor([0, 0]), num_bins=1, num_classes=1)
    with pytest.raises(ValueError, match="num_bins must be >= 1"):
        difficulty_bins(torch.zeros(2), torch.tensor([0, 0]), num_bins=0, num_classes=1)


@FAST
@given(
    data=st.data(),
    n=st.integers(0, 40),
    num_classes=st.integers(1, 4),
    num_bins=st.integers(1, 6),
)
def test_difficulty_bins_partition(data: st.DataObject, n: int, num_classes: int, num_bins: int):
    scores = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), dtype=torch.float32)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)),
                           dtype=torch.long)
    bins = difficulty_bins(scores, targets, num_bins=num_bins, num_classes=num_classes)
    assert len(bins) == num_classes and all(len(c) == num_bins for c in bins)
    flat = torch.cat([b for c in bins for b in c]) if n else torch.zeros(0, dtype=torch.long)
    assert sorted(flat.tolist()) == list(range(n))  # every index exactly once
    for c, cbins in enumerate(bins):
        members = (targets == c).nonzero()[:, 0]
        sizes = [len(b) for b in cbins]
        assert sum(sizes) == len(members)
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        # concatenated bins = the class's samples sorted by score ascending, ties by index
        expected = sorted(members.tolist(), key=lambda i: (float(scores[i]), i))
        assert torch.cat(list(cbins)).tolist() == expected
