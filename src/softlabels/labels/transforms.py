"""Label transforms: pure, vectorised functions over soft-label tensors and a registry of named transforms.

Every function takes the labels first and its options keyword-only, validates its input with
:func:`softlabels.validation.check_labels`, and returns a new tensor (the input is never modified).
Labels are ``(N, C)`` float tensors whose rows are probability vectors, or sub-stochastic vectors after
a transform that deliberately does not renormalise (top-k, class removal), as in the paper.

Ties are always broken deterministically: among equal values the lower class index ranks higher
(a stable descending sort).

Transforms can also be named by spec strings (see :func:`parse_transform`)::

    spec  := step ("+" step)*
    step  := name | name ":" param ("," param)*
    param := key "=" value

e.g. ``"topk:k=3+renorm"`` or ``"remove-class:cls=3,renorm=1"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from softlabels.specs import Param, SpecRegistry
from softlabels.validation import check_labels, check_positive_float, check_positive_int, check_targets

from .calibrated import FERKD_SCORES, ferkd_calibrate, ssld_labels, uskd_labels

__all__ = [
    "LABEL_TRANSFORMS",
    "LabelTransform",
    "ParsedTransform",
    "hard",
    "ferkd_calibrate",
    "mix_hard",
    "parse_transform",
    "remove_class_knowledge",
    "renormalize",
    "retemper",
    "shuffle_nontop",
    "smooth",
    "softmax_with_temperature",
    "ssld_labels",
    "swap",
    "topk",
    "uskd_labels",
]


# ----------------------------------------------------------------------------------------------------------
# helpers


def _check_unit_interval(name: str, value: object) -> float:
    v = check_positive_float(name, value, allow_zero=True)
    if v > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _rank_order(labels: torch.Tensor) -> torch.Tensor:
    """Column indices per row sorted by value descending, ties by class index ascending."""
    return torch.sort(labels, dim=1, descending=True, stable=True).indices


def _check_targets_for(labels: torch.Tensor, targets: object) -> torch.Tensor:
    if targets is None:
        raise ValueError("this transform needs targets (the true class of every row), got None")
    return check_targets(targets, num_classes=labels.shape[1], n=labels.shape[0])


# ----------------------------------------------------------------------------------------------------------
# functions


def softmax_with_temperature(logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` with a true temperature ``T > 0``, computed in float64, returned as float32.

    Larger ``T`` gives flatter (higher-entropy) labels; ``T -> 0`` approaches one-hot. Note that the
    reference implementation's ``--temp`` *multiplies* the logits, i.e. it is an inverse temperature:
    its ``softmax(z * temp)`` equals ``softmax_with_temperature(z, temperature=1 / temp)``.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor of shape (N, C), got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, num_classes), got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contains NaN or infinite values")
    t = check_positive_float("temperature", temperature)
    z = logits.double() / t
    return torch.exp(z - torch.logsumexp(z, dim=1, keepdim=True)).float()


def renormalize(labels: torch.Tensor) -> torch.Tensor:
    """Divide every row by its sum; a row summing to 0 raises ``ValueError`` naming the row."""
    check_labels(labels)
    sums = labels.sum(dim=1, keepdim=True)
    zero = (sums[:, 0] <= 0).nonzero()
    if zero.numel():
        rows = zero[:, 0].tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(f"cannot renormalise labels: row {shown} sums to 0 (all entries are zero)")
    return labels / sums


_renormalize = renormalize  # topk's keyword argument shadows the name inside it


def topk(labels: torch.Tensor, *, k: int, renormalize: bool = False) -> torch.Tensor:
    """Keep the ``k`` largest entries per row (ties: lower class index), zero the rest.

    Paper semantics is ``renormalize=False``: the kept entries keep their values and rows sum to < 1.
    """
    check_labels(labels)
    c = labels.shape[1]
    k = check_positive_int("k", k)
    if k > c:
        raise ValueError(f"k must be in 1..{c} (the number of classes), got {k}")
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep.scatter_(1, _rank_order(labels)[:, :k], True)
    out = torch.where(keep, labels, torch.zeros((), dtype=labels.dtype))
    return _renormalize(out) if renormalize else out


def swap(labels: torch.Tensor, *, i: int) -> torch.Tensor:
    """Swap the ``i``-th largest entry of every row with its smallest (paper Fig. 3, ``ablation_k``).

    ``i`` is 1-based (``i=1`` is the top-1 entry) and in ``1..C-1``. Rank order is a stable descending
    sort (value descending, then class index ascending), so the "smallest" entry is the last one in that
    order: among tied minima, the one with the highest class index. Row sums and entropies are unchanged.
    """
    check_labels(labels)
    c = labels.shape[1]
    i = check_positive_int("i", i)
    if i > c - 1:
        raise ValueError(f"i must be in 1..{c - 1} (C - 1, with C = {c} classes), got {i}")
    order = _rank_order(labels)
    a, b = order[:, i - 1 : i], order[:, c - 1 : c]
    out = labels.clone()
    out.scatter_(1, a, labels.gather(1, b))
    out.scatter_(1, b, labels.gather(1, a))
    return out


def remove_class_knowledge(
    labels: torch.Tensor, targets: torch.Tensor, *, cls: int, renormalize: bool = False
) -> torch.Tensor:
    """Zero column ``cls`` in every row whose true class is not ``cls`` (paper ``treat_label``).

    Rows of class ``cls`` are untouched. With ``renormalize=True`` only the changed rows are divided by
    their new sum (a changed row whose whole mass was on ``cls`` then raises ``ValueError``).
    """
    check_labels(labels)
    targets = _check_targets_for(labels, targets)
    c = labels.shape[1]
    cls = check_positive_int("cls", cls, minimum=0)
    if cls >= c:
        raise ValueError(f"cls must be in 0..{c - 1}, got {cls}")
    changed = targets != cls
    out = labels.clone()
    out[:, cls] = torch.where(changed, torch.zeros((), dtype=labels.dtype), labels[:, cls])
    if renormalize and changed.any():
        rows = changed.nonzero()[:, 0]
        sums = out[rows].sum(dim=1)
        if (sums <= 0).any():
            bad = int(rows[(sums <= 0).nonzero()[0, 0]])
            raise ValueError(f"cannot renormalise labels: row {bad} sums to 0 after removing class {cls}")
        out[rows] = out[rows] / sums[:, None]
    return out


def hard(targets: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """One-hot float32 labels ``(N, num_classes)`` from class indices."""
    num_classes = check_positive_int("num_classes", num_classes)
    targets = check_targets(targets, num_classes=num_classes)
    return torch.nn.functional.one_hot(targets.long(), num_classes).float()


def mix_hard(labels: torch.Tensor, targets: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * labels + alpha * onehot(targets)`` with ``alpha`` in [0, 1]."""
    check_labels(labels)
    targets = _check_targets_for(labels, targets)
    a = _check_unit_interval("alpha", alpha)
    onehot = torch.nn.functional.one_hot(targets.long(), labels.shape[1]).to(labels.dtype)
    return (1.0 - a) * labels + a * onehot


def smooth(labels: torch.Tensor, *, epsilon: float) -> torch.Tensor:
    """Label smoothing: ``(1 - epsilon) * labels + epsilon / C`` with ``epsilon`` in [0, 1]."""
    check_labels(labels)
    e = _check_unit_interval("epsilon", epsilon)
    return (1.0 - e) * labels + e / labels.shape[1]


def retemper(labels: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Temperature on probabilities: ``p ** (1 / T)`` renormalised, i.e. ``softmax(log p / T)``.

    ``T = 1`` is the identity on normalised rows (sub-stochastic rows are renormalised); ``T < 1``
    sharpens, ``T > 1`` flattens. Zero entries stay zero. Computed in float64, returned in the input dtype.
    """
    check_labels(labels)
    t = check_positive_float("temperature", temperature)
    zero = (labels.sum(dim=1) <= 0).nonzero()
    if zero.numel():
        raise ValueError(f"cannot retemper labels: row {int(zero[0, 0])} sums to 0 (all entries are zero)")
    z = torch.log(labels.double()) / t  # log 0 = -inf stays -inf
    return torch.softmax(z, dim=1).to(labels.dtype)


def shuffle_nontop(labels: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
    """Keep each row's top-1 entry in place and randomly permute its other entries.

    The top-1 is the largest entry (ties: lower class index). ``generator=None`` uses torch's global RNG;
    pass a seeded ``torch.Generator`` for reproducible results.
    """
    check_labels(labels)
    n, c = labels.shape
    if c < 2 or n == 0:
        return labels.clone()
    top = labels.argmax(dim=1, keepdim=True)  # first maximal index
    is_top = torch.zeros(n, c, dtype=torch.bool, device=labels.device)
    is_top.scatter_(1, top, True)
    # destinations: the non-top columns in index order; sources: a random permutation of the same columns
    dest = torch.sort(is_top.to(torch.uint8), dim=1, stable=True).indices[:, : c - 1]
    keys = torch.rand(n, c, generator=generator, device=labels.device)
    keys = keys.masked_fill(is_top, 2.0)  # the top column sorts last and is cut off
    src = torch.argsort(keys, dim=1)[:, : c - 1]
    out = labels.clone()
    out.scatter_(1, dest, labels.gather(1, src))
    return out


# ----------------------------------------------------------------------------------------------------------
# registry and spec strings


class LabelTransform(Protocol):
    def __call__(
        self, labels: torch.Tensor, targets: torch.Tensor | None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


LABEL_TRANSFORMS = SpecRegistry("label transform")


def _register(name: str, help: str, *params: Param) -> Callable[[Callable[..., LabelTransform]], Any]:
    return LABEL_TRANSFORMS.define(name, *params, help=help)


def _renorm_param() -> Param:
    return Param(key="renorm", kind="bool", default=False)


def _int_param(key: str, minimum: int) -> Param:
    return Param(key=key, kind="int", check=lambda v: v >= minimum, allowed=f"an integer >= {minimum}")


def _unit_param(key: str) -> Param:
    return Param(key=key, kind="float", check=lambda v: 0 <= v <= 1, allowed="a number in [0, 1]")


@_register("none", "identity (returns a copy)")
def _build_none() -> LabelTransform:
    return lambda labels, targets, *, generator=None: check_labels(labels).clone()


@_register("topk", "keep the k largest entries per row", _int_param("k", 1), _renorm_param())
def _build_topk(k: int, renorm: bool) -> LabelTransform:
    return lambda labels, targets, *, generator=None: topk(labels, k=k, renormalize=renorm)


@_register("swap", "swap the i-th largest entry with the smallest", _int_param("i", 1))
def _build_swap(i: int) -> LabelTransform:
    return lambda labels, targets, *, generator=None: swap(labels, i=i)


@_register("remove-class", "zero column cls in rows of other classes", _int_param("cls", 0), _renorm_param())
def _build_remove_class(cls: int, renorm: bool) -> LabelTransform:
    return lambda labels, targets, *, generator=None: remove_class_knowledge(
        labels, targets, cls=cls, renormalize=renorm
    )


@_register("hard", "one-hot labels from the targets")
def _build_hard() -> LabelTransform:
    def fn(labels: torch.Tensor, targets: torch.Tensor | None, *, generator: Any = None) -> torch.Tensor:
        check_labels(labels)
        return hard(_check_targets_for(labels, targets), num_classes=labels.shape[1]).to(labels.dtype)

    return fn


@_register("mix-hard", "(1 - alpha) * labels + alpha * one-hot", _unit_param("alpha"))
def _build_mix_hard(alpha: float) -> LabelTransform:
    return lambda labels, targets, *, generator=None: mix_hard(labels, targets, alpha=alpha)


@_register("smooth", "label smoothing (1 - eps) * labels + eps / C", _unit_param("eps"))
def _build_smooth(eps: float) -> LabelTransform:
    return lambda labels, targets, *, generator=None: smooth(labels, epsilon=eps)


@_register("retemper", "p ** (1 / t) renormalised",
           Param(key="t", kind="float", check=lambda v: v > 0, allowed="a number > 0"))
def _build_retemper(t: float) -> LabelTransform:
    return lambda labels, targets, *, generator=None: retemper(labels, temperature=t)


@_register("shuffle-nontop", "keep the top-1 entry, randomly permute the others")
def _build_shuffle_nontop() -> LabelTransform:
    return lambda labels, targets, *, generator=None: shuffle_nontop(labels, generator=generator)


@_register("ferkd", "FerKD: rows with confidence < threshold become the smoothed one-hot true class",
           Param(key="threshold", kind="float", default=0.5, check=lambda v: 0 <= v <= 1,
                 allowed="a number in [0, 1]"),
           Param(key="eps", kind="float", default=0.1, check=lambda v: 0 <= v <= 1,
                 allowed="a number in [0, 1]"),
           Param(key="score", kind="choice", choices=FERKD_SCORES, default="max"))
def _build_ferkd(threshold: float, eps: float, score: str) -> LabelTransform:
    return lambda labels, targets, *, generator=None: ferkd_calibrate(
        labels, targets, threshold=threshold, epsilon=eps, score=score
    )


@_register("ssld", "SSLD: the teacher's rows as distributions (renormalised, re-tempered by t); no targets",
           Param(key="t", kind="float", default=1.0, check=lambda v: v > 0, allowed="a number > 0"))
def _build_ssld(t: float) -> LabelTransform:
    return lambda labels, targets, *, generator=None: ssld_labels(labels, temperature=t)


@_register("uskd", "USKD labels: `target` on the true class, the uskd loss's Zipf ranks on the others",
           Param(key="target", kind="float", default=0.9, check=lambda v: 0 <= v <= 1,
                 allowed="a number in [0, 1]"))
def _build_uskd(target: float) -> LabelTransform:
    return lambda labels, targets, *, generator=None: uskd_labels(labels, targets, target=target)


@_register("renorm", "divide each row by its sum")
def _build_renorm() -> LabelTransform:
    return lambda labels, targets, *, generator=None: renormalize(labels)


class ParsedTransform(NamedTuple):
    """The result of :func:`parse_transform`: the callable and the canonical spec string."""

    fn: LabelTransform
    spec: str


def _parse_step(step: str) -> tuple[LabelTransform, str]:
    parsed = LABEL_TRANSFORMS.parse(step.strip().lower())
    return parsed.obj, parsed.spec


def parse_transform(spec: str) -> ParsedTransform:
    """Parse a spec such as ``"topk:k=3+renorm"`` into ``(fn, canonical_spec)``.

    Grammar: steps ``name`` or ``name:key=value,key=value`` joined by ``+`` and applied left to right.
    ``fn(labels, targets, *, generator=None)`` applies the chain. The canonical spec lowercases names,
    strips whitespace, writes every parameter (defaults included) in declaration order, formats floats
    with ``repr`` and booleans as 0/1, and drops ``none`` steps from longer chains.
    Unknown names raise :class:`softlabels.registry.UnknownNameError` (closest match suggested);
    bad parameters raise ``ValueError`` naming the parameter and its allowed values.
    """
    if not isinstance(spec, str):
        raise TypeError(f"transform spec must be a string, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError(f"empty transform spec; use 'none' or one of: {', '.join(LABEL_TRANSFORMS.names())}")
    steps: list[tuple[LabelTransform, str]] = []
    for raw in spec.split("+"):
        if not raw.strip():
            raise ValueError(f"empty step in transform spec {spec!r} (doubled or trailing '+')")
        steps.append(_parse_step(raw))
    kept = [s for s in steps if s[1] != "none"] or steps[:1]
    fns = [f for f, _ in kept]
    canonical = "+".join(c for _, c in kept)

    def chain(
        labels: torch.Tensor, targets: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        for f in fns:
            labels = f(labels, targets, generator=generator)
        return labels

    return ParsedTransform(chain, canonical)
