"""Calibrated and teacher-free labels, as pure functions over ``(N, C)`` label tensors.

* :func:`ferkd_calibrate` (FerKD, Shen, ICCV 2023: "calibrates the less-confident regions ... using softened
  hard ground-truth labels"): rows whose confidence is below a threshold are replaced by the smoothed one-hot
  label of their true class; confident rows keep the expert's soft label.
* :func:`ssld_labels` (SSLD, PaddleClas' simple semi-supervised label distillation): the student learns from
  the teacher's distribution alone, never from the ground truth; on stored labels that is the expert's
  distribution made a distribution again (top-k / class-removal rows rescaled), optionally re-tempered.
  Targets are never read, so it also labels images whose class is unknown.
* :func:`uskd_labels` (USKD, Yang et al., ICCV 2023, the label side of the ``uskd`` loss): a fixed target
  probability on the true class and the loss's Zipf distribution over the other classes,
  ``z_j = (1 / r_j) / sum_{r=1}^{K-1} 1/r`` with ``r_j`` the rank of class j among the non-target entries of
  the given labels (1 = largest, ties by lower class index, exactly the loss's rule). With hard input labels
  (no teacher) every non-target entry ties and the ranks follow class index order: teacher-free labels.
  The loss's student-dependent target weight cannot be stored in a label; use the ``uskd`` loss for it.

Ties and all arithmetic are deterministic; functions never modify their inputs.
"""

from __future__ import annotations

import torch

from ..validation import check_labels, check_positive_float, check_targets

__all__ = ["FERKD_SCORES", "ferkd_calibrate", "ssld_labels", "uskd_labels", "zipf_nontarget"]

FERKD_SCORES = ("max", "true")


def _unit(name: str, value: object, *, open_top: bool = False) -> float:
    v = check_positive_float(name, value, allow_zero=True)
    if v > 1.0 or (open_top and v == 1.0):
        raise ValueError(f"{name} must be in [0, 1{')' if open_top else ']'}, got {value!r}")
    return v


def _targets(labels: torch.Tensor, targets: object) -> torch.Tensor:
    if targets is None:
        raise ValueError("this transform needs targets (the true class of every row), got None")
    return check_targets(targets, num_classes=labels.shape[1], n=labels.shape[0]).long()


def ferkd_calibrate(labels: torch.Tensor, targets: torch.Tensor, *, threshold: float, epsilon: float,
                    score: str = "max") -> torch.Tensor:
    """Rows with confidence < ``threshold`` become ``(1 - epsilon) * onehot(target) + epsilon / C``.

    ``score``: "max" (the row's largest entry: the expert is unsure) or "true" (the entry of the true class:
    the expert does not see the labelled class). Other rows are returned unchanged.
    """
    check_labels(labels)
    y = _targets(labels, targets)
    t = _unit("threshold", threshold)
    e = _unit("epsilon", epsilon)
    if score not in FERKD_SCORES:
        raise ValueError(f"score must be one of {', '.join(FERKD_SCORES)}, got {score!r}")
    conf = labels.max(dim=1).values if score == "max" else labels.gather(1, y[:, None])[:, 0]
    c = labels.shape[1]
    soft_hard = torch.nn.functional.one_hot(y, c).to(labels.dtype) * (1.0 - e) + e / c
    return torch.where((conf < t)[:, None], soft_hard, labels)


def ssld_labels(labels: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's rows as distributions, ``softmax(log(p / sum p) / T)`` (T = 1: renormalised only).

    Zero entries stay zero; an all-zero row raises ``ValueError`` naming it. Computed in float64.
    """
    check_labels(labels)
    t = check_positive_float("temperature", temperature)
    sums = labels.double().sum(dim=1, keepdim=True)
    zero = (sums[:, 0] <= 0).nonzero()
    if zero.numel():
        raise ValueError(f"cannot make SSLD labels: row {int(zero[0, 0])} sums to 0 (all entries are zero)")
    z = torch.log(labels.double() / sums) / t  # log 0 = -inf stays -inf
    return torch.softmax(z, dim=1).to(labels.dtype)


def zipf_nontarget(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """USKD's non-target distribution: ``(1 / r_j) / H_{K-1}`` by rank ``r_j`` of ``scores`` among the
    non-target classes (descending, ties by lower class index), 0 at the target. Rows sum to 1."""
    n, k = scores.shape
    if k < 2:
        raise ValueError(f"USKD labels need at least 2 classes, got {k}")
    tmask = torch.zeros(n, k, dtype=torch.bool, device=scores.device).scatter_(1, targets[:, None], True)
    order = scores.double().masked_fill(tmask, float("-inf")).argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=scores.device).expand(n, k)
    z = torch.empty(n, k, dtype=torch.float64, device=scores.device).scatter_(1, order, ranks)
    z = z.reciprocal().masked_fill(tmask, 0.0)
    return z / z.sum(dim=1, keepdim=True)


def uskd_labels(labels: torch.Tensor, targets: torch.Tensor, *, target: float) -> torch.Tensor:
    """``target`` on the true class, ``(1 - target) * zipf_nontarget(labels)`` elsewhere (rows sum to 1)."""
    check_labels(labels)
    y = _targets(labels, targets)
    p = _unit("target", target)
    out = (1.0 - p) * zipf_nontarget(labels, y)
    out.scatter_(1, y[:, None], p)
    return out.to(labels.dtype)
