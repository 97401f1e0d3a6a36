"""Label-quality diagnostics for soft-label sets, in the spirit of cleanlab's label-quality views.

All functions are vectorised, validate their inputs, never modify them, and compute in float64;
per-row results are float64 tensors. Rows may be sub-stochastic (after top-k or class removal): the
diagnostics are then computed on the rows as given, without renormalising.

:func:`label_issues` asks cleanlab (an optional extra: ``pip install 'softlabels[labels]'``) which images'
class labels the soft labels contradict, reading the soft labels as cleanlab's ``pred_probs``;
:func:`label_report` puts its per-sample scores beside ours (entropy, JSD to the class, class structure).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from softlabels.validation import check_labels, check_positive_int, check_targets

__all__ = [
    "class_similarity",
    "confidence",
    "cross_entropy_to_true",
    "difficulty_bins",
    "entropy",
    "js_distance",
    "LabelIssues",
    "label_issues",
    "label_quality_scores",
    "label_report",
    "margin",
    "mean_js_distance",
    "rank_by_quality",
    "summarize",
    "true_class_prob",
]

CE_EPS = 1e-12  # probability floor for -log p_y


def _labels64(labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
    return check_labels(labels, name=name).double()


def _labels_targets(labels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = _labels64(labels)
    t = check_targets(targets, num_classes=p.shape[1], n=p.shape[0]).long()
    return p, t


def entropy(labels: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
    """Shannon entropy per row in nats (``0 log 0 = 0``); ``normalized`` divides by ``log C`` (C = 1: 0)."""
    p = _labels64(labels)
    h = -torch.special.xlogy(p, p).sum(dim=1)
    if normalized:
        c = p.shape[1]
        h = h / math.log(c) if c > 1 else torch.zeros_like(h)
    return h


def confidence(labels: torch.Tensor) -> torch.Tensor:
    """The largest probability of each row."""
    return _labels64(labels).max(dim=1).values


def margin(labels: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability per row (needs at least 2 classes)."""
    p = _labels64(labels)
    if p.shape[1] < 2:
        raise ValueError(f"margin needs at least 2 classes, labels have {p.shape[1]}")
    top2 = torch.topk(p, 2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def true_class_prob(labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``p_y``: the probability each row gives its true class."""
    p, t = _labels_targets(labels, targets)
    return p.gather(1, t[:, None])[:, 0]


def cross_entropy_to_true(
    labels: torch.Tensor, targets: torch.Tensor, *, eps: float = CE_EPS
) -> torch.Tensor:
    """Difficulty score ``-log p_y`` per row, with ``p_y`` clamped to ``>= eps`` so it stays finite.

    The labels are treated as probabilities. The reference code instead passes the probabilities to
    ``F.cross_entropy`` as if they were logits (computing ``-log softmax(p)_y``), which compresses every
    score into a narrow band; we do not.
    """
    return -torch.log(true_class_prob(labels, targets).clamp_min(eps))


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon distance per row: the square root of the JS divergence with base-2 logs, in [0, 1]."""
    a, b = _labels64(p, "p"), _labels64(q, "q")
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    m = 0.5 * (a + b)
    xlogy = torch.special.xlogy
    kl_am, kl_bm = xlogy(a, a) - xlogy(a, m), xlogy(b, b) - xlogy(b, m)
    js = 0.5 * (kl_am + kl_bm).sum(dim=1) / math.log(2.0)  # kl_am + kl_bm: exactly symmetric in (p, q)
    return js.clamp(0.0, 1.0).sqrt()


def mean_js_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over rows of :func:`js_distance` (NaN for zero rows)."""
    d = js_distance(p, q)
    return float(d.mean()) if d.numel() else math.nan


def class_similarity(labels: torch.Tensor, targets: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """``(C, C)`` matrix: row ``c`` is the mean soft label of the samples of true class ``c``.

    The own-class (diagonal) entries are NaN, so the matrix shows only the non-top "dark knowledge"
    (paper Fig. 10). Classes without samples get an all-NaN row.
    """
    num_classes = check_positive_int("num_classes", num_classes)
    p = check_labels(labels, num_classes=num_classes).double()
    t = check_targets(targets, num_classes=num_classes, n=p.shape[0]).long()
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, t, p)
    counts = torch.bincount(t, minlength=num_classes).double()
    mean = sums / counts[:, None]  # 0 / 0 = NaN for empty classes
    mean[counts == 0] = math.nan
    mean.fill_diagonal_(math.nan)
    return mean


def label_quality_scores(labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample quality in [0, 1]: the self-confidence ``p_y`` (cleanlab's default); low = suspicious."""
    return true_class_prob(labels, targets).clamp(0.0, 1.0)


def rank_by_quality(labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sample indices ordered worst (lowest quality score) first; ties by index."""
    return torch.sort(label_quality_scores(labels, targets), stable=True).indices


def summarize(labels: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Scalar summaries of a label set.

    Keys: ``mean_entropy``, ``mean_normalized_entropy``, ``mean_confidence``, ``accuracy`` (argmax vs
    targets, ties to the lower class), ``mean_true_class_prob`` and ``mean_row_sum``.
    """
    p, t = _labels_targets(labels, targets)
    if p.shape[0] == 0:
        raise ValueError("cannot summarise an empty label set (0 rows)")
    h = entropy(p)
    c = p.shape[1]
    return {
        "mean_entropy": float(h.mean()),
        "mean_normalized_entropy": float(h.mean() / math.log(c)) if c > 1 else 0.0,
        "mean_confidence": float(p.max(dim=1).values.mean()),
        "accuracy": float((p.argmax(dim=1) == t).double().mean()),
        "mean_true_class_prob": float(p.gather(1, t[:, None]).mean()),
        "mean_row_sum": float(p.sum(dim=1).mean()),
    }


def difficulty_bins(
    scores: torch.Tensor, targets: torch.Tensor, *, num_bins: int, num_classes: int
) -> list[list[torch.Tensor]]:
    """Per class, split its samples into ``num_bins`` equal-count bins by ascending score.

    Returns ``bins[c][b]``: a 1-D int64 tensor of sample indices, ordered by score (ties by index).
    Bin 0 holds the lowest scores (the easiest samples when the score is a cross-entropy). Every sample
    is in exactly one bin and bin sizes within a class differ by at most 1; as in ``numpy.array_split``,
    the first ``n_c % num_bins`` bins hold the extra sample, so a class with fewer samples than bins has
    empty trailing bins. (The reference uses a strict ``<`` at the top edge and drops the maximum.)
    """
    num_bins = check_positive_int("num_bins", num_bins)
    num_classes = check_positive_int("num_classes", num_classes)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 1-D tensor with one score per sample, got {shape}")
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    if scores.dtype.is_floating_point and not torch.isfinite(scores).all():
        raise ValueError("scores contains NaN or infinite values")
    t = check_targets(targets, num_classes=num_classes, n=scores.shape[0]).long()
    # order by (class, score, index): stable sort by score, then stable sort by class
    by_score = torch.sort(scores, stable=True).indices
    order = by_score[torch.sort(t[by_score], stable=True).indices]
    counts = torch.bincount(t, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    cls_sorted = t[order]
    rank = torch.arange(order.numel()) - starts[cls_sorted]  # rank within class
    n = counts[cls_sorted]
    q, rem = n // num_bins, n % num_bins
    big = q + 1
    bin_idx = torch.where(rank < rem * big, rank // big, rem + (rank - rem * big) // q.clamp_min(1))
    sizes = torch.bincount(cls_sorted * num_bins + bin_idx, minlength=num_classes * num_bins)
    chunks = torch.split(order, sizes.tolist())
    return [list(chunks[c * num_bins : (c + 1) * num_bins]) for c in range(num_classes)]


# ------------------------------------------------------------------------------------------ cleanlab
CLEANLAB_EXTRA = "pip install 'softlabels[labels]'"
QUALITY_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")


@dataclass(frozen=True, kw_only=True)
class LabelIssues:
    """cleanlab's view of a labelled set: per-sample quality in [0, 1] (low = the soft label contradicts the
    class), which samples it flags as label issues, and the flagged ones worst first."""

    quality: torch.Tensor
    is_issue: torch.Tensor
    ranked: torch.Tensor
    method: str
    filter_by: str


def _cleanlab():
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise ImportError(f"label-issue scores need cleanlab: {CLEANLAB_EXTRA}") from None
    return cleanlab


def label_issues(labels: torch.Tensor, targets: torch.Tensor, *, method: str = "self_confidence",
                 filter_by: str = "prune_by_noise_rate") -> LabelIssues:
    """Per-sample label-issue scores from cleanlab for class ``targets`` judged by the soft ``labels``.

    The soft labels play cleanlab's ``pred_probs`` (rows are renormalised to sum to 1 for it; an all-zero
    row is an error). cleanlab assumes out-of-sample probabilities: an expert's labels of its own training
    images are in-sample, so it flags fewer issues than held-out predictions would. cleanlab keeps at least
    one image of each class unflagged, so a set with one image per class (IPC 1) has no flagged issues; its
    per-sample ``quality`` still ranks them. Runs in this process (``n_jobs=1``): same input, same flags.
    """
    from ..validation import check_choice

    check_choice("method", method, QUALITY_METHODS)
    check_choice("filter_by", filter_by, FILTERS)
    p, t = _labels_targets(labels, targets)
    sums = p.sum(1, keepdim=True)
    if bool((sums <= 0).any()):
        raise ValueError("some label rows are all zero; cleanlab needs a distribution per row")
    cl = _cleanlab()
    probs, y = (p / sums).numpy(), t.numpy()
    quality = torch.from_numpy(cl.rank.get_label_quality_scores(y, probs, method=method)).double()
    if p.shape[0] < 2 or p.shape[1] < 2:  # nothing to compare against
        mask = torch.zeros(p.shape[0], dtype=torch.bool)
    else:
        with warnings.catch_warnings():  # "too few examples" in a class: the IPC-1 case documented above
            warnings.filterwarnings("ignore", message=".*too few examples.*")
            found = cl.filter.find_label_issues(y, probs, filter_by=filter_by, n_jobs=1)
        mask = torch.from_numpy(found).bool()
    issues = torch.nonzero(mask).flatten()
    ranked = issues[torch.sort(quality[issues], stable=True).indices]
    return LabelIssues(quality=quality, is_issue=mask, ranked=ranked, method=method, filter_by=filter_by)


def _top_pairs(sim: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal entries of a class-similarity matrix: (class, other, mean mass)."""
    flat = torch.nan_to_num(sim, nan=-1.0).flatten()
    order = torch.argsort(flat, descending=True, stable=True)[:k]
    c = sim.shape[0]
    return [{"cls": int(i) // c, "other": int(i) % c, "mass": float(flat[i])} for i in order if flat[i] >= 0]


def label_report(labels: torch.Tensor, targets: torch.Tensor, *, num_classes: int | None = None,
                 cleanlab: bool = True, per_sample: bool = True, top: int = 10) -> dict[str, Any]:
    """One report of a labelled set: our summaries (entropy, confidence, JSD to the one-hot class, the
    strongest class overlaps), cleanlab's label issues (``cleanlab=False`` leaves them out), and, with
    ``per_sample``, every sample's scores; ``top`` worst samples are listed in any case."""
    p, t = _labels_targets(labels, targets)
    k = num_classes if num_classes is not None else p.shape[1]
    onehot = torch.nn.functional.one_hot(t, p.shape[1]).double()
    h, js, quality = entropy(p), js_distance(p, onehot), label_quality_scores(p, t)
    worst = rank_by_quality(p, t)[:top]
    out: dict[str, Any] = {
        "n": int(p.shape[0]),
        "summary": summarize(p, t),
        "mean_js_to_class": float(js.mean()),
        "class_overlaps": _top_pairs(class_similarity(p, t, num_classes=k), top),
        "worst": [{"index": int(i), "cls": int(t[i]), "p_true": float(quality[i]), "entropy": float(h[i]),
                   "argmax": int(p[i].argmax())} for i in worst],
    }
    if per_sample:
        out["per_sample"] = {"entropy": h.tolist(), "p_true": quality.tolist(), "js_to_class": js.tolist()}
    if cleanlab:
        li = label_issues(p, t)
        out["cleanlab"] = {"method": li.method, "filter_by": li.filter_by,
                           "num_issues": int(li.is_issue.sum()),
                           "issue_fraction": float(li.is_issue.double().mean()),
                           "issues": li.ranked[:top].tolist(), "mean_quality": float(li.quality.mean())}
        if per_sample:
            out["per_sample"]["cleanlab_quality"] = li.quality.tolist()
            out["per_sample"]["cleanlab_issue"] = li.is_issue.tolist()
    return out
