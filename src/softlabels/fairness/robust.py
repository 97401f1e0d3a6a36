"""Robustness and robust fairness: PGD attacks, per-class clean and robust accuracy, worst class, NSD.

Evaluation attacks use the Adversarial Robustness Toolbox (ART, an optional extra: ``pip install
'softlabels[robust]'``): a maintained, widely used attack library, so the reported robust accuracy does
not rest on an attack written here. ART's ``ProjectedGradientDescentPyTorch`` runs an L-inf PGD with
cross-entropy on images in [0, 1] (the model's normalisation is ART's preprocessing, so epsilon is in pixel
units), from one random start drawn with numpy's global RNG, which is seeded for the call and restored.

Training attacks (inside adversarial training, thousands of small batches) are :func:`pgd_perturb`, a
short torch PGD on model-ready (normalised) images with per-channel epsilon and pixel bounds: it must run
on the training device, maximise the KL divergence to the student's soft targets (ABSLD's inner loss) and
draw its start from the student's seeded generator, none of which ART's numpy interface offers.

Fairness metrics over the per-class accuracies ``a_c``: the worst class ``min a_c`` and the normalised
standard deviation ``NSD = std(a) / mean(a)`` (population std), as in the robust-fairness literature.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_bool, check_positive_float, check_positive_int

__all__ = ["AttackSpec", "MissingExtraError", "fairness_of", "pgd_perturb", "pixel_bounds", "require_art",
           "robust_evaluation", "stratified_subset"]


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require_art():
    """The ``art`` package, or a one-line error naming the extra."""
    try:
        import art  # noqa: F401
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise MissingExtraError("robust accuracy needs the Adversarial Robustness Toolbox: pip install "
                                "'softlabels[robust]' (adversarial-robustness-toolbox>=1.20)") from None
    return PyTorchClassifier, ProjectedGradientDescentPyTorch


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """An L-inf PGD evaluation attack: ``eps`` and ``step`` in pixel units ([0, 1] images; default step
    eps / 4), ``steps`` iterations from one random start (``random_start``), on ``images`` test images
    (stratified per class, seeded by ``seed``; None: the whole test split)."""

    eps: float = 8 / 255
    steps: int = 10
    step: float | None = None
    random_start: bool = True
    images: int | None = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_float("attack eps", self.eps)
        check_positive_int("attack steps", self.steps)
        if self.step is not None:
            check_positive_float("attack step", self.step)
        check_bool("random_start", self.random_start)
        if self.images is not None:
            check_positive_int("attack images", self.images)
        check_positive_int("attack seed", self.seed, minimum=0)

    @property
    def step_size(self) -> float:
        return self.step if self.step is not None else self.eps / 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fairness_of(per_class: Sequence[float]) -> dict[str, float]:
    """Mean, worst class, best class, population std and NSD (std / mean) of per-class accuracies (NaNs,
    classes without images, are left out)."""
    vals = [float(v) for v in per_class if v is not None and v == v]
    if not vals:
        return {"mean": math.nan, "worst": math.nan, "best": math.nan, "std": math.nan, "nsd": math.nan}
    m = sum(vals) / len(vals)
    std = (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5
    return {"mean": m, "worst": min(vals), "best": max(vals), "std": std,
            "nsd": std / m if m > 0 else math.nan}


def pixel_bounds(mean: Sequence[float], std: Sequence[float], *, device=None) -> tuple[torch.Tensor, ...]:
    """Per-channel (1, C, 1, 1) tensors: the normalised images of pixels 0 and 1, and 1 / std (pixel -> model
    units), for attacks on model-ready images ``(x / 255 - mean) / std``."""
    m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s, 1 / s


def pgd_perturb(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, eps: float, step: float,
                steps: int, lo: torch.Tensor, hi: torch.Tensor, inv_std: torch.Tensor,
                generator: torch.Generator, loss: str = "kl") -> torch.Tensor:
    """An L-inf PGD on model-ready ``x``: ``steps`` signed-gradient steps of ``step`` (pixel units) inside the
    ``eps`` ball and the pixel range [``lo``, ``hi``], maximising ``loss``: "kl" to the probability targets
    (ABSLD's inner loss, from a small seeded Gaussian start as the authors' code does) or "ce" to class
    ``target`` (from a seeded uniform start). The model is in eval mode during the attack and restored."""
    was_training = model.training
    model.eval()
    e, a = eps * inv_std, step * inv_std  # per-channel, in model units
    if loss == "kl":
        start = 0.001 * inv_std * torch.randn(x.shape, generator=generator, device=x.device)
    elif loss == "ce":
        start = (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1) * e
    else:
        raise ValueError(f"loss must be 'kl' or 'ce', got {loss!r}")
    adv = torch.max(torch.min(x + start, hi), lo).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            out = model(adv).float()
            value = (F.kl_div(F.log_softmax(out, 1), target, reduction="sum") if loss == "kl"
                     else F.cross_entropy(out, target, reduction="sum"))
            (grad,) = torch.autograd.grad(value, [adv])
        adv = adv.detach() + a * grad.sign()
        adv = torch.max(torch.min(adv, x + e), x - e)
        adv = torch.max(torch.min(adv, hi), lo).detach()
    model.train(was_training)
    return adv


def stratified_subset(targets: torch.Tensor, n: int | None, *, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` images, as equal a share of each class as the split allows, drawn with a seeded
    permutation (sorted); all indices when ``n`` is None or covers the split."""
    if n is None or n >= targets.numel():
        return torch.arange(targets.numel())
    g = torch.Generator().manual_seed(seed)
    per, extra = divmod(n, num_classes)
    picks = []
    for c in range(num_classes):
        idx = (targets == c).nonzero()[:, 0]
        picks.append(idx[torch.randperm(idx.numel(), generator=g)][: per + (c < extra)])
    return torch.cat(picks).sort().values


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _per_class(pred: torch.Tensor, y: torch.Tensor, k: int) -> list[float]:
    correct = torch.zeros(k, dtype=torch.float64).index_add_(0, y, (pred == y).double())
    count = torch.bincount(y, minlength=k).double()
    return [float(c / n) if n > 0 else math.nan for c, n in zip(correct, count, strict=True)]


def robust_evaluation(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, num_classes: int,
                      mean: Sequence[float], std: Sequence[float], attack: AttackSpec,
                      batch_size: int = 500) -> dict[str, Any]:
    """Clean and PGD (ART) accuracy per class on uint8 ``images`` (N, C, H, W) of ``targets``, with
    :func:`fairness_of` for both: ``{"clean_per_class", "robust_per_class", "clean": {...}, "robust":
    {...}, "attack": attack.to_dict(), "images": n}``."""
    import numpy as np

    classifier_cls, pgd_cls = require_art()
    idx = stratified_subset(targets, attack.images, num_classes=num_classes, seed=attack.seed)
    x = (images[idx].float() / 255.0).cpu().numpy()
    y = targets[idx].long().cpu()
    dev = next(model.parameters()).device
    shape = (-1, 1, 1)
    clf = classifier_cls(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                         nb_classes=num_classes, clip_values=(0.0, 1.0),
                         preprocessing=(np.asarray(mean, dtype=np.float32).reshape(shape),
                                        np.asarray(std, dtype=np.float32).reshape(shape)),
                         device_type="gpu" if dev.type == "cuda" else "cpu")
    was_training = model.training
    model.eval()
    try:
        clean = torch.from_numpy(clf.predict(x, batch_size=batch_size).argmax(1))
        pgd = pgd_cls(clf, norm=np.inf, eps=attack.eps, eps_step=attack.step_size, max_iter=attack.steps,
                      num_random_init=1 if attack.random_start else 0, batch_size=batch_size, verbose=False)
        with _numpy_seed(attack.seed):
            adv = pgd.generate(x, y=y.numpy())
        robust = torch.from_numpy(clf.predict(adv, batch_size=batch_size).argmax(1))
    finally:
        model.train(was_training)
    clean_pc, robust_pc = _per_class(clean, y, num_classes), _per_class(robust, y, num_classes)
    return {"clean_per_class": clean_pc, "robust_per_class": robust_pc, "clean": fairness_of(clean_pc),
            "robust": fairness_of(robust_pc), "attack": attack.to_dict(), "images": int(idx.numel()),
            "max_perturbation": float(np.abs(adv - x).max())}
