"""Student losses for training on soft labels, named by spec strings (``"kl:t=4.0"``).

Every loss takes student ``logits`` (N, K, ...), probability ``targets`` of the same shape (rows along
dim 1 sum to at most one) and optional int64 ``hard`` classes (N, ...); the class dimension is always
dim 1 and every other dimension is averaged, so one loss serves classification and segmentation.
Losses that need a hard class use ``targets.argmax(1)`` when ``hard`` is None. Calls check shapes and
dtypes only (they run at every step); :func:`check_targets_for` checks values, once per set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..specs import Param, SpecRegistry, format_spec
from ..validation import check_labels, check_positive_float, check_targets

__all__ = ["LOSSES", "Loss", "check_targets_for", "jaccard_metric_loss", "list_losses", "loss_fn",
           "soft_jaccard_loss"]

LOSSES = SpecRegistry("student loss")
EPS = 1e-7


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(N, K, ...) -> (positions, K): classes last, so per-position losses are row-wise."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _hard_shape(logits_shape: torch.Size) -> tuple[int, ...]:
    return (logits_shape[0], *logits_shape[2:])


def _check_hard(hard: object, logits_shape: torch.Size) -> torch.Tensor:
    if not isinstance(hard, torch.Tensor) or hard.dtype != torch.int64:
        what = hard.dtype if isinstance(hard, torch.Tensor) else type(hard).__name__
        raise TypeError(f"hard must be an int64 tensor of class indices, got {what}; use .long()")
    if tuple(hard.shape) != _hard_shape(logits_shape):
        raise ValueError(f"hard has shape {tuple(hard.shape)} but logits {tuple(logits_shape)} need "
                         f"{_hard_shape(logits_shape)} (logits' shape without the class dim 1)")
    return hard


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, K, ...), got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        hint = "; class indices go in hard=" if name == "targets" else ""
        raise TypeError(f"{name} must be floating point, got {t.dtype}{hint}")
    if t.ndim < 2:
        raise ValueError(f"{name} must be (N, K, ...) with classes on dim 1, got shape {tuple(t.shape)}; "
                         "a single row is t[None]")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); need at least one position")
    return t


def _check_classes(loss: Loss, k: int) -> None:
    if k < loss.min_classes:
        raise ValueError(f"loss {loss.name!r} needs at least {loss.min_classes} classes on dim 1, got {k}")


@dataclass(frozen=True, kw_only=True)
class Loss:
    """A student loss: ``loss(logits, targets, hard=None)`` is a float32 scalar; ``spec`` is canonical."""

    spec: str
    name: str
    needs_hard: ClassVar[bool] = False
    min_classes: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in fields(self):  # built directly (not from a spec): same bounds as the spec's Params
            if f.name not in ("spec", "name"):
                check_positive_float(f"loss {self.name!r} parameter {f.name}", getattr(self, f.name),
                                     allow_zero=f.name != "t")

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, *,
                 hard: torch.Tensor | None = None) -> torch.Tensor:
        _check_tensor("logits", logits)
        _check_tensor("targets", targets)
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the "
                             "same shape (N, K, ...), classes on dim 1")
        _check_classes(self, logits.shape[1])
        if hard is not None:
            _check_hard(hard, logits.shape)
        s, y = _flat(logits.float()), _flat(targets.float())  # float32 even under bf16 autocast
        h = None
        if self.needs_hard:
            h = hard.reshape(-1) if hard is not None else y.argmax(1)
        return self._value(s, y, h)

    def _value(self, s: torch.Tensor, y: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def _soft_ce(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # no renormalisation: a row of mass m < 1 is down-weighted by m, as in the reference code
    return -(y * F.log_softmax(s, dim=1)).sum(1).mean()


def _retemper(y: torch.Tensor, t: float, keep: torch.Tensor) -> torch.Tensor:
    """softmax(log(y) / t) over the entries in ``keep`` with y > 0; rows with none of them are 0."""
    keep = keep & (y > 0)
    logit = torch.where(keep, y.clamp_min(torch.finfo(y.dtype).tiny).log() / t, float("-inf"))
    any_kept = keep.any(1, keepdim=True)
    return torch.softmax(logit.masked_fill(~any_kept, 0.0), dim=1) * any_kept


def _target_mask(s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, h[:, None], True)


def _log_softmax_nontarget(s: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
    """log softmax over the non-target classes only; 0 (not -inf) at the target so 0 * it stays 0."""
    return F.log_softmax(s.masked_fill(tmask, float("-inf")), dim=1).masked_fill(tmask, 0.0)


@dataclass(frozen=True, kw_only=True)
class _SoftCE(Loss):
    def _value(self, s, y, h):
        return _soft_ce(s, y)


@dataclass(frozen=True, kw_only=True)
class _KL(Loss):
    """``t^2 * mean_positions m * KL(q || softmax(s / t))``, ``q = softmax(log(y) / t)``, m = row mass.

    Stored sets hold probabilities, not logits, so the teacher side is re-tempered from log(y): if
    ``y = softmax(z / T0)`` then ``q = softmax(z / (T0 t))`` exactly. Entries with y == 0 stay 0. Each
    row is weighted by its mass m = sum_c y_c (1 for distributions; 0 for an all-zero row), so a
    top-k row without renormalisation is down-weighted as in soft-ce (at t=1 the gradients agree).
    """

    t: float = 4.0

    def _value(self, s, y, h):
        q = _retemper(y, self.t, torch.ones_like(y, dtype=torch.bool))
        kl = (torch.xlogy(q, q) - q * F.log_softmax(s / self.t, dim=1)).sum(1)
        return self.t ** 2 * (y.sum(1) * kl).mean()


@dataclass(frozen=True, kw_only=True)
class _MSEGT(Loss):
    """``mean_positions sum_c (softmax(s)_c - y_c)^2 + alpha * CE(s, hard)``.

    After DD-Ranking's MSE+GT loss (which compares logits); here the student's probabilities are
    compared with the stored probabilities.
    """

    alpha: float = 1.0
    needs_hard: ClassVar[bool] = True

    def _value(self, s, y, h):
        return (torch.softmax(s, dim=1) - y).square().sum(1).mean() + self.alpha * F.cross_entropy(s, h)


@dataclass(frozen=True, kw_only=True)
class _NKD(Loss):
    """Normalized KD (Yang et al., ICCV 2023), averaged over positions, with t_i = hard class:

    ``L = -y_t log S_t - gamma t^2 sum_{j != t} Yhat_j log Shat_j`` with S = softmax(s),
    ``Yhat_j = y_j^(1/t) / sum_{k != t} y_k^(1/t)`` (the teacher re-tempered as in kl, over non-target
    classes) and ``Shat = softmax(s_{j != t} / t)``. A row with no non-target mass has a second term of 0.
    """

    t: float = 1.0
    gamma: float = 1.5
    needs_hard: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2

    def _value(self, s, y, h):
        tmask = _target_mask(s, h)
        target = -y.gather(1, h[:, None])[:, 0] * F.log_softmax(s, dim=1).gather(1, h[:, None])[:, 0]
        y_hat = _retemper(y, self.t, ~tmask)
        non = (y_hat * _log_softmax_nontarget(s / self.t, tmask)).sum(1)
        return (target - self.gamma * self.t ** 2 * non).mean()


@dataclass(frozen=True, kw_only=True)
class _USKD(Loss):
    """Teacher-free USKD (Yang et al., ICCV 2023), with t = hard class and sg() = detach:

    ``L = CE(s, t) + alpha * mean(-p_t log S_t) + beta * mean(-sum_{j != t} z_j log Shat_j)``, where
    S = softmax(s); ``p_t = sg(S_t^2 + 1 - mean_positions(S_t^2))`` (the authors' code: the soft target
    label is the student's own squared target probability, shifted to average 1 over the batch);
    ``Shat = softmax(s_{j != t})``; ``z_j = (1/r_j) / sum_{r=1}^{K-1} 1/r`` with r_j the rank of sg(s_j)
    among the non-target logits (1 = largest, ties by class index). Simplified: the method's weak
    branch (an extra classifier on intermediate features, its loss and its share of the ranking) is
    left out, since a loss sees logits only; the targets' distribution is ignored (hard only).
    """

    alpha: float = 1.0
    beta: float = 1.0
    needs_hard: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2

    def _value(self, s, y, h):
        tmask = _target_mask(s, h)
        log_s = F.log_softmax(s, dim=1)
        log_st = log_s.gather(1, h[:, None])[:, 0]
        st2 = log_st.detach().exp().square()
        p_t = st2 + 1 - st2.mean()
        # ranks 1..K-1 among non-target logits; the target (-inf) sorts last and is masked out
        order = s.detach().masked_fill(tmask, float("-inf")).argsort(dim=1, descending=True, stable=True)
        ranks = torch.arange(1, s.shape[1] + 1, device=s.device, dtype=s.dtype).expand_as(s)
        z = torch.empty_like(s).scatter_(1, order, ranks).reciprocal().masked_fill(tmask, 0.0)
        z = z / z.sum(1, keepdim=True)
        non = -(z * _log_softmax_nontarget(s, tmask)).sum(1)
        return F.cross_entropy(s, h) + self.alpha * (-p_t * log_st).mean() + self.beta * non.mean()


@dataclass(frozen=True, kw_only=True)
class _JML(Loss):
    """``ce * soft-ce + weight * jaccard_metric_loss(softmax(s), y)`` (Wang & Blaschko, NeurIPS 2023)."""

    weight: float = 1.0
    ce: float = 1.0

    def _value(self, s, y, h):
        return self.ce * _soft_ce(s, y) + self.weight * jaccard_metric_loss(torch.softmax(s, dim=1), y)


def _per_class_sums(x: torch.Tensor, y: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch.Tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape or x.ndim == 0:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must be probabilities of one shape")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim {dim} is out of range for shape {tuple(x.shape)}")
    x, y = x.movedim(dim, 0).reshape(x.shape[dim], -1), y.movedim(dim, 0).reshape(y.shape[dim], -1)
    return x, y, x.sum(1), y.sum(1)


def _class_mean(per_class: torch.Tensor, x_sum: torch.Tensor, y_sum: torch.Tensor) -> torch.Tensor:
    # classes neither present nor predicted would be 0/0: they are left out of the mean
    used = (x_sum > 0) | (y_sum > 0)
    return (per_class * used).sum() / used.sum().clamp_min(1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den == 0, EPS, den)


def soft_jaccard_loss(x: torch.Tensor, y: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
    """SJL on probabilities: per class c (sums over all other dims) ``1 - <x,y> / (|x| + |y| - <x,y>)``,
    averaged over classes present in y or predicted in x."""
    x, y, xs, ys = _per_class_sums(x, y, dim)
    inter = (x * y).sum(1)
    return _class_mean(1 - _ratio(inter, xs + ys - inter), xs, ys)


def jaccard_metric_loss(x: torch.Tensor, y: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
    """JML on probabilities: per class c ``1 - (|x|+|y|-|x-y|) / (|x|+|y|+|x-y|)`` (L1 norms over all
    other dims), averaged over classes present in y or predicted in x. Equals SJL for one-hot y."""
    x, y, xs, ys = _per_class_sums(x, y, dim)
    diff = (x - y).abs().sum(1)
    return _class_mean(1 - _ratio(xs + ys - diff, xs + ys + diff), xs, ys)


def _make(cls: type[Loss], name: str, **values: Any) -> Loss:
    return cls(spec=format_spec(name, LOSSES.get(name).params, values), name=name, **values)


_POS: dict[str, Any] = {"kind": "float", "check": lambda v: v > 0, "allowed": "a number > 0"}
_NONNEG: dict[str, Any] = {"kind": "float", "check": lambda v: v >= 0, "allowed": "a number >= 0"}


@LOSSES.define("soft-ce", help="soft cross-entropy -sum_c y_c log softmax(s)_c (top-k rows down-weighted)")
def _build_soft_ce() -> Loss:
    return _make(_SoftCE, "soft-ce")


@LOSSES.define("kl", Param(key="t", default=4.0, **_POS),
               help="t^2 KL(softmax(log y / t) || softmax(s / t)): KD at temperature t")
def _build_kl(*, t: float) -> Loss:
    return _make(_KL, "kl", t=t)


@LOSSES.define("mse+gt", Param(key="alpha", default=1.0, **_NONNEG),
               help="squared error of softmax(s) to y plus alpha * cross-entropy to the hard class")
def _build_mse_gt(*, alpha: float) -> Loss:
    return _make(_MSEGT, "mse+gt", alpha=alpha)


@LOSSES.define("nkd", Param(key="t", default=1.0, **_POS), Param(key="gamma", default=1.5, **_NONNEG),
               help="Normalized KD: target term plus normalised non-target KD (Yang et al. 2023)")
def _build_nkd(*, t: float, gamma: float) -> Loss:
    return _make(_NKD, "nkd", t=t, gamma=gamma)


@LOSSES.define("uskd", Param(key="alpha", default=1.0, **_NONNEG), Param(key="beta", default=1.0, **_NONNEG),
               help="teacher-free USKD: CE + own soft target label + Zipf non-target labels")
def _build_uskd(*, alpha: float, beta: float) -> Loss:
    return _make(_USKD, "uskd", alpha=alpha, beta=beta)


@LOSSES.define("jml", Param(key="weight", default=1.0, **_NONNEG), Param(key="ce", default=1.0, **_NONNEG),
               help="ce * soft-ce + weight * Jaccard metric loss (Wang & Blaschko 2023)")
def _build_jml(*, weight: float, ce: float) -> Loss:
    return _make(_JML, "jml", weight=weight, ce=ce)


def loss_fn(spec: str = "soft-ce") -> Loss:
    """The loss named by ``spec`` (e.g. ``"kl:t=2"``); unknown names get the closest match."""
    return LOSSES.parse(spec).obj


def list_losses() -> dict[str, str]:
    """Registered loss names -> one-line help."""
    return LOSSES.describe()


def check_targets_for(loss: Loss | str, targets: torch.Tensor, *, hard: torch.Tensor | None = None,
                      atol: float = 1e-3) -> torch.Tensor:
    """Value checks a caller runs once per set: finite, non-negative targets whose rows sum to at most
    1 + ``atol``; ``hard`` (when given) within [0, K). Returns ``targets``."""
    loss = loss_fn(loss) if isinstance(loss, str) else loss
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a Loss or a spec string, got {type(loss).__name__}")
    _check_classes(loss, _check_tensor("targets", targets).shape[1])
    check_labels(_flat(targets), atol=atol, name="targets")
    if hard is not None:
        check_targets(_check_hard(hard, targets.shape).reshape(-1), num_classes=targets.shape[1], name="hard")
    return targets
