"""ABSLD (Zhao et al., NeurIPS 2024, "Improving Adversarial Robust Fairness via Anti-Bias Soft Label
Distillation"): class-wise temperatures on the teacher's soft labels, adapted while the student trains.

The update rule follows the authors' code (github.com/zhaoshiji123/ABSLD, ``resnet18_absld_cifar10.py``):
after every epoch, with ``L_c`` the student's cross-entropy on the true class summed over the epoch's
training images of class c (on adversarial images for the adversarial branch, clean ones for the clean
branch), ``gap_c = L_c - mean(L)`` and

    T_c <- clamp(T_c - rate * gap_c / max_c |gap_c|, t_min, t_max)      (rate 0.1, T in [0.5, 5])

so hard classes (large loss) get sharper labels (lower T) and easy classes smoother ones. Each image's
label is its teacher distribution tempered by its TRUE class's temperature. The adversarial student's loss
is ``5/6 KL(adv) + 1/6 KL(clean)``, each branch with its own temperatures, the adversarial images from a
10-step PGD that maximises the KL to the adversarial branch's labels; without adversarial training only
the clean branch trains. Departures, all for few-image sets: the teacher is the set's stored labels
(re-tempering ``softmax(log p / T)`` equals tempering the expert's logits, see :func:`class_tempered`),
``L_c`` is a per-class mean (the same direction as the sum on class-balanced sets, and robust to unbalanced
ones), and "epoch" means ``update_every`` student steps (default: one pass over the set).

``adaptive=False`` is the uniform-temperature baseline: the same loop, attack and seeds with T_c = 1 fixed,
so the two differ only in the temperature adaptation and compare pairwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import dsa
from ..config import StudentRecipe
from ..engine.loop import lr_at, make_optimizer
from ..models import init_model
from ..validation import check_bool, check_labels, check_positive_float, check_positive_int, check_targets
from .robust import pgd_perturb, pixel_bounds

__all__ = ["AbsldConfig", "AbsldResult", "class_losses", "class_tempered", "train_absld_student",
           "update_temperatures"]


@dataclass(frozen=True, kw_only=True)
class AbsldConfig:
    """How the student trains: ``adaptive`` (ABSLD) or uniform temperatures; ``adversarial`` training with
    an L-inf PGD of ``eps`` / ``attack_step`` (pixel units) and ``attack_steps`` iterations, its loss
    weighted ``adv_weight`` against ``1 - adv_weight`` for the clean branch; the temperature update's
    ``rate``, bounds and period ``update_every`` (student steps; None: one pass over the set)."""

    adaptive: bool = True
    adversarial: bool = False
    rate: float = 0.1
    t_min: float = 0.5
    t_max: float = 5.0
    update_every: int | None = None
    eps: float = 8 / 255
    attack_step: float = 2 / 255
    attack_steps: int = 10
    adv_weight: float = 5 / 6

    def __post_init__(self) -> None:
        for name in ("adaptive", "adversarial"):
            check_bool(name, getattr(self, name))
        check_positive_float("rate", self.rate, allow_zero=True)
        check_positive_float("t_min", self.t_min)
        check_positive_float("t_max", self.t_max)
        if self.t_min > 1.0 or self.t_max < 1.0:
            raise ValueError(f"temperature bounds must contain 1 (the start), got "
                             f"[{self.t_min}, {self.t_max}]")
        if self.update_every is not None:
            check_positive_int("update_every", self.update_every)
        check_positive_float("eps", self.eps)
        check_positive_float("attack_step", self.attack_step)
        check_positive_int("attack_steps", self.attack_steps)
        if not 0.0 <= float(self.adv_weight) <= 1.0:
            raise ValueError(f"adv_weight must be in [0, 1], got {self.adv_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class AbsldResult:
    """The trained student (eval mode), its final temperatures per branch and their history per update."""

    model: nn.Module
    temperatures: dict[str, list[float]]
    history: list[dict[str, Any]]
    steps: int


def class_tempered(labels: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Each row's distribution re-tempered by its true class's temperature: ``softmax(log p / T_y)``.

    For labels ``p = softmax(z / T0)`` this is ``softmax(z / (T0 * T_y))`` exactly (log p is z / T0 up to a
    per-row constant); zero entries stay zero. Rows are renormalised first (top-k codecs store partial rows).
    """
    p = labels.double()
    p = p / p.sum(dim=1, keepdim=True)
    t = temperatures.double().to(labels.device)[targets.long()][:, None]
    return torch.softmax(torch.log(p) / t, dim=1).to(labels.dtype)


def class_losses(losses: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-class sum of per-image ``losses`` and the per-class image counts (float64)."""
    y = targets.long()
    total = torch.zeros(num_classes, dtype=torch.float64, device=losses.device).index_add_(0, y,
                                                                                            losses.double())
    count = torch.bincount(y, minlength=num_classes).double()
    return total, count.to(losses.device)


def update_temperatures(temps: torch.Tensor, class_loss: torch.Tensor, *, rate: float, t_min: float,
                        t_max: float) -> torch.Tensor:
    """ABSLD's step: ``clamp(T - rate * (L - mean L) / max |L - mean L|, t_min, t_max)`` over the classes
    with a finite loss (the others keep their temperature); unchanged when every loss is equal."""
    temps = temps.double().clone()
    seen = torch.isfinite(class_loss)
    if not seen.any():
        return temps
    loss = class_loss.double()[seen]
    gap = loss - loss.mean()
    scale = float(gap.abs().max())
    if scale == 0.0:
        return temps
    temps[seen] = (temps[seen] - rate * gap / scale).clamp(t_min, t_max)
    return temps


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # the KL to the target up to the target's entropy, a constant: the same gradient as ABSLD's KL
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def train_absld_student(images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                        recipe: StudentRecipe, *, config: AbsldConfig, seed: int, mean: Sequence[float],
                        std: Sequence[float], device: str | torch.device = "cpu") -> AbsldResult:
    """Train one student on model-ready ``images`` (N, C, H, W) normalised by ``mean`` / ``std`` (pixel
    units, no ZCA), probability ``labels`` (N, K) and true classes ``targets`` per ``config``.

    The recipe gives the model, width, optimizer, lr schedule, batch size, length and DSA; the loop runs in
    fp32 without EMA or label smoothing. One seed fixes init, batches, augmentation and attack starts.
    """
    if not isinstance(config, AbsldConfig):
        raise TypeError(f"config must be an AbsldConfig, got {type(config).__name__}")
    dev = torch.device(device)
    images = images.to(dev).float()
    n, c, h, w = images.shape
    labels = check_labels(labels.to(dev).float(), n=n, atol=float(labels.shape[1]))
    k = labels.shape[1]
    targets = check_targets(targets, num_classes=k, n=n).long().to(dev)
    lo, hi, inv_std = pixel_bounds(mean, std, device=dev)
    model = init_model(recipe.model, recipe.width, seed=seed, in_channels=c, num_classes=k, image_size=(h, w),
                       device=dev)
    opt = make_optimizer(recipe, list(model.parameters()))
    gen = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + 29)
    bs = min(recipe.batch_size, n)
    total_steps, total_epochs = recipe.total_steps(n), recipe.total_epochs(n)
    every = config.update_every or math.ceil(n / bs)
    branches = ("adv", "nat") if config.adversarial else ("nat",)
    temps = {b: torch.ones(k, dtype=torch.float64) for b in branches}
    acc = {b: [torch.zeros(k, dtype=torch.float64, device=dev), torch.zeros(k, dtype=torch.float64,
                                                                             device=dev)] for b in branches}
    history: list[dict[str, Any]] = []
    model.train()
    step = 0
    for epoch in range(total_epochs):
        perm = torch.randperm(n, generator=gen, device=dev) if n > bs else torch.arange(n, device=dev)
        for start in range(0, n, bs):
            if step >= total_steps:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(recipe, step=step, epoch=epoch, total_steps=total_steps,
                                total_epochs=total_epochs)
            idx = perm[start:start + bs]
            xb, pb, yb = images[idx], labels[idx], targets[idx]
            if recipe.dsa:
                xb = dsa(xb, generator=gen)
            goals = {b: class_tempered(pb, yb, temps[b]) for b in branches}
            outs = {"nat": model(xb)}
            if config.adversarial:
                adv = pgd_perturb(model, xb.detach(), goals["adv"], eps=config.eps, step=config.attack_step,
                                  steps=config.attack_steps, lo=lo, hi=hi, inv_std=inv_std, generator=gen)
                outs["adv"] = model(adv)
                loss = config.adv_weight * _soft_ce(outs["adv"], goals["adv"]) + \
                    (1 - config.adv_weight) * _soft_ce(outs["nat"], goals["nat"])
            else:
                loss = _soft_ce(outs["nat"], goals["nat"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for b in branches:
                    per_image = F.cross_entropy(outs[b].detach().float(), yb, reduction="none")
                    s, cnt = class_losses(per_image, yb, k)
                    acc[b][0] += s
                    acc[b][1] += cnt
            step += 1
            if step % every == 0:
                rec: dict[str, Any] = {"step": step}
                for b in branches:
                    mean_loss = (acc[b][0] / acc[b][1]).cpu()  # 0 / 0 = NaN: class not seen
                    if config.adaptive:
                        temps[b] = update_temperatures(temps[b], mean_loss, rate=config.rate,
                                                       t_min=config.t_min, t_max=config.t_max)
                    rec[f"{b}_class_loss"] = [float(v) for v in mean_loss]
                    rec[f"{b}_temperatures"] = [float(v) for v in temps[b]]
                    acc[b][0].zero_()
                    acc[b][1].zero_()
                history.append(rec)
    model.eval()
    return AbsldResult(model=model, temperatures={b: [float(v) for v in temps[b]] for b in branches},
                       history=history, steps=step)
