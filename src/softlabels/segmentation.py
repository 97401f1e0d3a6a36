"""A small soft-label segmentation task, for comparing losses by mean IoU.

Items of an :class:`ImageDataset` are pasted on black canvases; each pixel's class is background (0) or
its item's class + 1. Three kinds of soft per-pixel targets are made from the masks (label smoothing,
boundary blur) or from a teacher (distillation). A tiny fully-convolutional :class:`SegNet` is trained
on them and scored by IoU of argmax predictions against the hard masks; :func:`compare_losses` pairs
losses (e.g. soft cross-entropy vs cross-entropy + Jaccard metric loss, Wang & Blaschko, NeurIPS 2023)
over seeds. Everything is seeded and deterministic on CPU; the global RNG is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.base import ImageDataset
from .engine.losses import Loss, check_targets_for, loss_fn
from .validation import check_choice, check_fraction, check_images, check_positive_float, check_positive_int

__all__ = ["DEFAULT_LOSSES", "FOREGROUND_THRESHOLD", "LABEL_KINDS", "Canvases", "SegNet",
           "boundary_soft_labels", "build_segnet", "compare_losses", "hard_labels", "iou_from_predictions",
           "kd_labels", "make_canvases", "mean_iou", "paste_items", "predict_masks", "smooth_labels",
           "train_segmenter"]

#: An item pixel is foreground when its grey value (0..255) is above this: Fashion-MNIST items sit on an
#: exact-0 background with a faint anti-aliased rim, and 25 (about 10%) keeps the rim out of the mask.
FOREGROUND_THRESHOLD = 25
LABEL_KINDS = ("smooth", "boundary", "kd")
DEFAULT_LOSSES = ("soft-ce", "jml:weight=1.0,ce=1.0")


@dataclass(frozen=True, eq=False, kw_only=True)
class Canvases:
    """``n`` seeded canvases: ``images`` (n, 1, size, size) float32 in [0, 1], ``masks`` (n, size, size)
    int64 in [0, num_classes) with 0 = background and c + 1 = item class c. ``item_indices`` (n, items)
    index the ``split`` of ``dataset`` and ``positions`` (n, items, 2) are the items' top-left (row, col),
    in drawing order, so every canvas can be rebuilt with :func:`paste_items`."""

    images: torch.Tensor
    masks: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    seed: int
    size: int
    items: int
    split: str
    threshold: int
    dataset: str
    fingerprint: str
    item_indices: torch.Tensor
    positions: torch.Tensor

    def __post_init__(self) -> None:
        n, s = self.images.shape[0], self.size
        if tuple(self.images.shape) != (n, 1, s, s) or not self.images.dtype.is_floating_point:
            raise ValueError(f"images must be float (n, 1, {s}, {s}), got {tuple(self.images.shape)}")
        _check_masks(self.masks, self.num_classes)
        if tuple(self.masks.shape) != (n, s, s):
            raise ValueError(f"masks must be ({n}, {s}, {s}), got {tuple(self.masks.shape)}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return self.images.shape[0]


def _check_masks(masks: object, num_classes: int, *, name: str = "masks") -> torch.Tensor:
    check_positive_int("num_classes", num_classes, minimum=2)
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.int64 or masks.ndim != 3:
        what = (f"{masks.dtype} {tuple(masks.shape)}" if isinstance(masks, torch.Tensor)
                else type(masks).__name__)
        raise TypeError(f"{name} must be an int64 tensor (n, H, W) of class indices, got {what}")
    if masks.numel() == 0:
        raise ValueError(f"{name} are empty")
    if int(masks.min()) < 0 or int(masks.max()) >= num_classes:
        raise ValueError(f"{name} hold classes {int(masks.min())}..{int(masks.max())}, outside "
                         f"[0, {num_classes})")
    return masks


def _grey(items: torch.Tensor) -> torch.Tensor:
    """uint8 (m, C, h, w) -> uint8 (m, h, w); colour items become the mean of their channels."""
    if items.shape[1] == 1:
        return items[:, 0]
    return items.float().mean(1).round().to(torch.uint8)


def paste_items(items: torch.Tensor, classes: torch.Tensor, positions: torch.Tensor, *, size: int,
                threshold: int = FOREGROUND_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste uint8 items (m, C, h, w) of ``classes`` (m,) with top-left corners ``positions`` (m, 2) on a
    black ``size`` x ``size`` canvas, in order. Returns (image uint8 (size, size), mask int64 (size, size)).

    Only an item's foreground (grey > ``threshold``) is drawn, overwriting image and mask: later items lie
    on top, and an item's dark surround neither hides earlier items nor leaves faint pixels the mask calls
    background. So the image is non-zero exactly where the mask is foreground.
    """
    check_images(items, name="items")
    if items.dtype != torch.uint8:
        raise TypeError(f"items must be uint8, got {items.dtype}")
    m, (h, w) = items.shape[0], items.shape[-2:]
    if tuple(classes.shape) != (m,) or tuple(positions.shape) != (m, 2):
        raise ValueError(f"classes {tuple(classes.shape)} and positions {tuple(positions.shape)} must be "
                         f"({m},) and ({m}, 2) for {m} items")
    if positions.numel() and (int(positions.min()) < 0 or int(positions[:, 0].max()) > size - h
                              or int(positions[:, 1].max()) > size - w):
        raise ValueError(f"positions must lie in [0, {size - h}] x [0, {size - w}] for {h}x{w} items on a "
                         f"{size}x{size} canvas")
    image = torch.zeros(size, size, dtype=torch.uint8)
    mask = torch.zeros(size, size, dtype=torch.int64)
    for item, c, (r, col) in zip(_grey(items), classes.tolist(), positions.tolist(), strict=True):
        fg = item > threshold
        image[r:r + h, col:col + w][fg] = item[fg]
        mask[r:r + h, col:col + w][fg] = int(c) + 1
    return image, mask


def make_canvases(dataset: ImageDataset, *, n: int, size: int = 56, items: int = 3, seed: int,
                  split: str = "train", threshold: int = FOREGROUND_THRESHOLD) -> Canvases:
    """``n`` canvases of ``size`` x ``size`` pixels, each with ``items`` items of ``dataset``'s ``split``
    drawn uniformly (with replacement) at uniform positions, possibly overlapping (see :func:`paste_items`).
    Deterministic in ``seed``; ``num_classes`` is the dataset's K + 1 (background first)."""
    check_choice("split", split, ("train", "test"))
    check_positive_int("n", n)
    check_positive_int("items", items)
    check_positive_int("seed", seed, minimum=0)
    check_positive_int("threshold", threshold, minimum=0)
    if threshold >= 255:
        raise ValueError(f"threshold must be below 255 (a uint8 grey value), got {threshold}")
    pool, classes = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_targets")
    h, w = pool.shape[-2:]
    if check_positive_int("size", size) < max(h, w):
        raise ValueError(f"size {size} is smaller than the {h}x{w} items of {dataset.name}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(pool.shape[0], (n, items), generator=g)
    pos = torch.stack([torch.randint(size - h + 1, (n, items), generator=g),
                       torch.randint(size - w + 1, (n, items), generator=g)], dim=-1)
    images = torch.empty(n, 1, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.int64)
    for i in range(n):
        images[i, 0], masks[i] = paste_items(pool[idx[i]], classes[idx[i]], pos[i], size=size,
                                             threshold=threshold)
    return Canvases(images=images.float() / 255.0, masks=masks, num_classes=dataset.num_classes + 1,
                    class_names=("background", *dataset.classes), seed=seed, size=size, items=items,
                    split=split, threshold=threshold, dataset=dataset.name, fingerprint=dataset.fingerprint(),
                    item_indices=idx, positions=pos)


# ------------------------------------------------------------------------------------------- soft labels
def hard_labels(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot probability maps (n, num_classes, H, W) float32 of int64 ``masks`` (n, H, W)."""
    _check_masks(masks, num_classes)
    return F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float().contiguous()


def smooth_labels(masks: torch.Tensor, num_classes: int, *, epsilon: float) -> torch.Tensor:
    """Label smoothing per pixel: ``(1 - epsilon) * one_hot + epsilon / num_classes``."""
    eps = check_fraction("epsilon", epsilon)
    return hard_labels(masks, num_classes).mul_(1 - eps).add_(eps / num_classes)


def boundary_soft_labels(masks: torch.Tensor, num_classes: int, *, radius: int) -> torch.Tensor:
    """One-hot maps blurred by a normalised (2 radius + 1)^2 box kernel: each pixel's label is the class
    histogram of its square neighbourhood, so pixels within ``radius`` (Chebyshev distance) of a boundary
    share mass between the classes on both sides and all others stay one-hot. A box rather than a
    Gaussian keeps the soft band exactly ``radius`` wide and the arithmetic hand-checkable. The canvas
    edge is replicate-padded so it is not a boundary (zero padding would leak mass out of the frame)."""
    r = check_positive_int("radius", radius, minimum=0)
    y = hard_labels(masks, num_classes)
    if r == 0:
        return y
    return F.avg_pool2d(F.pad(y, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    check_images(images)
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be float canvases in [0, 1], got {images.dtype}")
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i:i + batch_size]).float()
                          for i in range(0, images.shape[0], check_positive_int("batch_size", batch_size))])
    finally:
        model.train(was_training)


def kd_labels(teacher: nn.Module, images: torch.Tensor, *, temperature: float,
              batch_size: int = 256) -> torch.Tensor:
    """Distillation labels ``softmax(teacher(images) / temperature)`` per pixel, (n, K, H, W)."""
    t = check_positive_float("temperature", temperature)
    return torch.softmax(_logits(teacher, images, batch_size) / t, dim=1)


# ------------------------------------------------------------------------------------------------- model
class SegNet(nn.Module):
    """``depth`` 3x3 convolutions (GroupNorm + ReLU) with dilations 1, 2, 4, ..., then a 1x1 head.

    The dilations grow the receptive field to 1 + 2 (2^depth - 1) pixels (31 at depth 4) at full
    resolution, so each pixel sees most of a 28x28 item: an undilated stack of four sees 9x9, too little
    to tell the item classes apart. GroupNorm, not BatchNorm, so small batches and eval mode agree.
    """

    def __init__(self, num_classes: int, *, in_channels: int = 1, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes, minimum=2)
        check_positive_int("width", width)
        layers: list[nn.Module] = []
        c = check_positive_int("in_channels", in_channels)
        for i in range(check_positive_int("depth", depth)):
            d = 2 ** i
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d, bias=False),
                       nn.GroupNorm(math.gcd(width, 8), width), nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_segnet(num_classes: int, *, width: int = 32, depth: int = 4, in_channels: int = 1,
                 seed: int) -> SegNet:
    """A :class:`SegNet` whose initial weights depend only on ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_positive_int("seed", seed, minimum=0))
        return SegNet(num_classes, in_channels=in_channels, width=width, depth=depth)


def train_segmenter(images: torch.Tensor, targets: torch.Tensor, *, loss: str | Loss = "soft-ce", steps: int,
                    lr: float = 3e-3, batch_size: int = 32, seed: int, weight_decay: float = 0.01,
                    width: int = 32, depth: int = 4, flip: bool = True,
                    on_step: Callable[[int, float], None] | None = None) -> SegNet:
    """Train a fresh :class:`SegNet` on float ``images`` (n, C, H, W) and probability ``targets``
    (n, K, H, W) with AdamW and a per-step cosine schedule from ``lr`` to 0. Returns it in eval mode.

    ``seed`` fixes the init (:func:`build_segnet`) and, through one torch.Generator, the batch order
    (reshuffled each pass; batches never wrap) and the random horizontal flips of image and target
    together. Neither depends on ``loss``, so runs of two losses with one seed are paired.
    ``on_step(step, loss_value)`` is called after every step.
    """
    check_images(images)
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be float canvases in [0, 1], got {images.dtype}")
    n = images.shape[0]
    if not isinstance(targets, torch.Tensor) or targets.ndim != 4 or targets.shape[0] != n \
            or targets.shape[2:] != images.shape[2:]:
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be (n, K, H, W) = ({n}, K, {images.shape[2]}, {images.shape[3]}) "
                         f"probability maps, got {got}")
    lf = loss_fn(loss) if isinstance(loss, str) else loss
    check_targets_for(lf, targets)
    check_positive_int("steps", steps)
    lr = check_positive_float("lr", lr)
    weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
    bs = min(check_positive_int("batch_size", batch_size), n)
    model = build_segnet(targets.shape[1], width=width, depth=depth, in_channels=images.shape[1], seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    order, at = torch.randperm(n, generator=g), 0
    model.train()
    for step in range(steps):
        if at + bs > n:
            order, at = torch.randperm(n, generator=g), 0
        idx = order[at:at + bs]
        at += bs
        x, y = images[idx], targets[idx]
        if flip:
            f = (torch.rand(bs, generator=g) < 0.5).view(-1, 1, 1, 1)
            x, y = torch.where(f, x.flip(-1), x), torch.where(f, y.flip(-1), y)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        value = lf(model(x), y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if on_step is not None:
            on_step(step, float(value.detach()))
    return model.eval()


# ------------------------------------------------------------------------------------------------ scoring
def predict_masks(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Argmax class per pixel, int64 (n, H, W)."""
    return _logits(model, images, batch_size).argmax(1)


def iou_from_predictions(pred: torch.Tensor, masks: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """IoU per class of predicted vs true masks (both int64 (n, H, W)), with intersections and unions
    summed over all pixels. ``per_class_iou[c]`` is None for a class neither present nor predicted;
    ``miou`` averages the others. Also ``pixel_acc`` and the raw ``intersection``/``union`` counts."""
    _check_masks(masks, num_classes)
    _check_masks(pred, num_classes, name="pred")
    if pred.shape != masks.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and masks {tuple(masks.shape)} differ in shape")
    k = num_classes
    conf = torch.bincount(masks.reshape(-1) * k + pred.reshape(-1), minlength=k * k).view(k, k)
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    per_class = [float(i) / float(u) if u > 0 else None for i, u in zip(inter.tolist(), union.tolist(),
                                                                           strict=True)]
    used = [v for v in per_class if v is not None]
    return {"miou": sum(used) / len(used), "pixel_acc": float(inter.sum()) / masks.numel(),
            "per_class_iou": per_class, "intersection": inter.tolist(), "union": union.tolist()}


def mean_iou(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int, *,
             batch_size: int = 256) -> dict[str, Any]:
    """:func:`iou_from_predictions` of ``model``'s argmax predictions on ``images``."""
    return iou_from_predictions(predict_masks(model, images, batch_size=batch_size), masks, num_classes)


# --------------------------------------------------------------------------------------------- comparison
def compare_losses(train: Canvases, test: Canvases, *, labels: str = "smooth",
                   losses: Sequence[str] = DEFAULT_LOSSES, seeds: Sequence[int] = (0, 1, 2), steps: int,
                   lr: float = 3e-3, batch_size: int = 32, weight_decay: float = 0.01, width: int = 32,
                   depth: int = 4, epsilon: float = 0.1, radius: int = 1, temperature: float = 1.0,
                   teacher_seed: int = 100, teacher_steps: int | None = None) -> list[dict[str, Any]]:
    """Train one :class:`SegNet` per (loss, seed) on ``train``'s soft labels and score it on ``test``.

    ``labels``: ``"smooth"`` (:func:`smooth_labels`, ``epsilon``), ``"boundary"``
    (:func:`boundary_soft_labels`, ``radius``) or ``"kd"``: a teacher is first trained with soft-ce on
    one-hot labels (seed ``teacher_seed``, ``teacher_steps`` defaulting to ``steps``; distinct from the
    student seeds by default so no student shares its init) and :func:`kd_labels` at ``temperature``
    label the train canvases. A seed gives the same init, batch order and flips for every loss, so
    per-seed differences between losses are paired. Returns one row per run, losses outer and seeds
    inner: loss (canonical spec), seed, labels, label_params, miou, pixel_acc, per_class_iou, settings,
    plus teacher_seed and teacher_miou for ``"kd"``.
    """
    kind = check_choice("labels", labels, LABEL_KINDS)
    if (train.num_classes, train.size) != (test.num_classes, test.size):
        raise ValueError(f"train ({train.num_classes} classes, {train.size} px) and test "
                         f"({test.num_classes} classes, {test.size} px) canvases do not match")
    if (train.fingerprint, train.split, train.seed) == (test.fingerprint, test.split, test.seed):
        raise ValueError("train and test canvases come from the same split with the same seed, so they "
                         "share canvases; use split='test' or another seed for the test canvases")
    if not losses or not seeds:
        raise ValueError("need at least one loss and one seed")
    specs = [loss_fn(s).spec for s in losses]
    settings = {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "width": width,
                "depth": depth}
    k = train.num_classes
    extra: dict[str, Any] = {}
    if kind == "smooth":
        targets, params = smooth_labels(train.masks, k, epsilon=epsilon), {"epsilon": epsilon}
    elif kind == "boundary":
        targets, params = boundary_soft_labels(train.masks, k, radius=radius), {"radius": radius}
    else:
        t_steps = teacher_steps if teacher_steps is not None else steps
        teacher = train_segmenter(train.images, hard_labels(train.masks, k), loss="soft-ce", steps=t_steps,
                                  seed=teacher_seed, **settings)
        targets = kd_labels(teacher, train.images, temperature=temperature)
        params = {"temperature": temperature, "teacher_steps": t_steps}
        extra = {"teacher_seed": teacher_seed,
                 "teacher_miou": mean_iou(teacher, test.images, test.masks, k)["miou"]}
    rows = []
    for spec in specs:
        for seed in seeds:
            model = train_segmenter(train.images, targets, loss=spec, steps=steps, seed=seed, **settings)
            score = mean_iou(model, test.images, test.masks, k)
            rows.append({"loss": spec, "seed": seed, "labels": kind, "label_params": dict(params),
                         "miou": score["miou"], "pixel_acc": score["pixel_acc"],
                         "per_class_iou": score["per_class_iou"], "settings": {"steps": steps, **settings},
                         **extra})
    return rows
