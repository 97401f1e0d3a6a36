"""The student loop: train a fresh student on a (compressed) labelled set and evaluate it.

Data stays on the device as one tensor; batches are index slices of a seeded permutation; DSA is
batched; there is no DataLoader and no per-sample Python. Every source of randomness is a seeded
``torch.Generator`` (model init, shuffling, augmentation), so the same seed gives the same student.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import dsa
from ..config import PROTOCOLS, StudentRecipe
from ..models import init_model
from ..validation import check_choice, check_labels, check_targets
from .evaluation import EvalSets, accuracy, evaluator, per_class_accuracy, predict
from .losses import check_targets_for, loss_fn
from .runtime import (
    Engine,
    autocast_ctx,
    planned_steps,
    resolve_compile,
    resolve_device,
    resolve_precision,
    tune_allocator,
)

__all__ = ["StudentResult", "lr_at", "make_optimizer", "soft_cross_entropy", "train_student",
           "train_students"]

ProgressFn = Callable[[int], None]


@dataclass(frozen=True, kw_only=True)
class StudentResult:
    """One trained student. ``test_acc``/``val_acc`` are at the final epoch (the ``clean`` number);
    ``paper_acc`` is the max test accuracy over checkpoints every ``eval_every`` epochs and the end
    (the reference code's number, optimistic: it selects on the test set)."""

    seed: int
    test_acc: float
    val_acc: float | None = None
    paper_acc: float | None = None
    train_acc: float = float("nan")
    per_class: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    epochs: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0
    threads: int = 0  # CPU threads it trained on (provenance: float order depends on it)
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # trained weights, if asked for

    def metric(self, protocol: str) -> float:
        if protocol == "paper":
            return float(self.paper_acc if self.paper_acc is not None else self.test_acc)
        return self.test_acc

    def to_dict(self) -> dict:
        """The metrics (everything but the weights)."""
        return {k: v for k, v in asdict(replace(self, state=None)).items() if k != "state"}

    @classmethod
    def from_metrics(cls, metrics: dict) -> StudentResult:
        """A result from stored metrics (unknown keys, such as derived ones, are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in metrics.items() if k in names and k != "state"})


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with probability targets: mean over rows of -sum_c y_c log softmax(s)_c.

    Equals ``nn.CrossEntropyLoss()(logits, targets)`` for float targets; rows that sum to less than one
    (top-k without renormalisation) are down-weighted exactly as in the reference code.
    """
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def make_optimizer(recipe: StudentRecipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimizer, with PyTorch's fused (single-kernel) update where this build has one: the
    same arithmetic as the per-tensor loop (tested), one kernel for all parameters instead of ~4 per
    tensor. Builds or devices without it fall back to the loop. Experts keep the loop (their stored
    checkpoints stay what they were)."""
    wd = recipe.resolved_weight_decay
    if recipe.optimizer == "sgd":
        cls, kw = torch.optim.SGD, {"lr": recipe.lr, "momentum": recipe.momentum, "weight_decay": wd,
                                    "nesterov": recipe.nesterov}
    else:
        cls, kw = torch.optim.AdamW, {"lr": recipe.lr, "weight_decay": wd}
    if all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params):
        try:
            return cls(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(params, **kw)


def lr_at(recipe: StudentRecipe, *, step: int, epoch: int, total_steps: int, total_epochs: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) in epoch ``epoch``.

    "auto" is the reference code's per-epoch schedule (SGD: StepLR(epochs // 4, 0.3); AdamW: cosine over
    the epochs); "cosine" and "linear" decay per step to zero after a linear warm-up from zero.
    """
    if recipe.schedule == "auto":
        if recipe.optimizer == "sgd":
            return recipe.lr * (0.3 ** (epoch // max(1, total_epochs // 4)))
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * epoch / total_epochs))
    warm = round(recipe.warmup * total_steps)
    if step < warm:
        return recipe.lr * (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    if recipe.schedule == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))
    return recipe.lr * (1 - t)


class _WeightAverage:
    """An exponential moving average of a model's parameters, updated after each step; the decay ramps up
    as ``min(decay, (1 + t) / (10 + t))`` so short runs are not dominated by the initial weights."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.decay, self.t = decay, 0
        self.params = params
        self.avg = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        self.t += 1
        d = min(self.decay, (1 + self.t) / (10 + self.t))
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, a in zip(model.parameters(), self.avg, strict=True):
            p.copy_(a)


def train_student(
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: StudentRecipe,
    *,
    seed: int,
    hard: torch.Tensor | None = None,
    evals: EvalSets | None = None,
    protocol: str = "clean",
    device: str | torch.device = "cpu",
    compile_model: bool = False,
    on_epoch: ProgressFn | None = None,
    return_state: bool = False,
    engine: Engine | None = None,
    parts: tuple[str, ...] = ("test", "val"),
) -> StudentResult:
    """Train one student from scratch on model-ready ``images`` (N, C, H, W) and ``labels`` (N, K).

    ``labels`` are probability targets (one-hot rows for hard labels); ``hard`` (N,) the images' true classes,
    read by losses with a hard-label term (None: the labels' argmax). Returns final / checkpoint
    accuracies per the protocol on the evaluation ``parts`` ("test", "val"; a sweep that chooses on
    validation needs only "val"), and the trained weights as ``state`` with ``return_state``. ``engine``
    holds compiled graphs for reuse across students (a private one is used without it).
    """
    check_choice("protocol", protocol, PROTOCOLS)
    engine = engine if engine is not None else Engine(max_shapes=1)
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_allocator()
    images = images.to(dev)
    # rows may sum above one by a quantisation step (quant codecs); CompressedSet checks the bound
    labels = check_labels(labels.to(dev).float(), n=images.shape[0], atol=float(labels.shape[1]))
    n, c, h, w = images.shape
    k = labels.shape[1]
    if recipe.label_smoothing:
        labels = (1 - recipe.label_smoothing) * labels + recipe.label_smoothing / k
    loss_of = loss_fn(recipe.loss)
    hard = hard.to(dev) if hard is not None else None
    if hard is not None:
        check_targets(hard, num_classes=k, n=n, name="hard (the images' true classes)")
    # the label bound was checked above (quantised rows may exceed one by a step)
    check_targets_for(loss_of, labels, atol=float(k))
    # the default loss is the one the reference code uses, computed exactly as before (its float32 cast)
    criterion = soft_cross_entropy if recipe.loss == "soft-ce" else loss_of
    t0 = time.perf_counter()
    fresh = init_model(recipe.model, recipe.width, seed=seed, in_channels=c, num_classes=k,
                       image_size=(h, w), device=dev)
    shape_key = (recipe.model, recipe.width, c, k, h, w, str(dev))
    model = engine.training_model(shape_key, fresh) if compile_model else fresh
    params = list(model.parameters())  # a compiled module's are its cached copy's
    opt = make_optimizer(recipe, params)
    average = _WeightAverage(params, recipe.ema) if recipe.ema else None
    amp = resolve_precision(recipe.precision, dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + 17)
    bounds = recipe.batch_bounds(n)
    total_steps, total_epochs = recipe.total_steps(n), recipe.total_epochs(n)
    curve: list[tuple[int, float]] = []
    # the trained module itself: inference through the compiled *training* graph would recompile it
    plain = getattr(model, "_orig_mod", model)
    model.train()
    step = 0
    for epoch in range(total_epochs):
        perm = torch.randperm(n, generator=gen, device=dev) if len(bounds) > 1 else None
        for start, end in bounds:
            if step >= total_steps:
                break
            lr = lr_at(recipe, step=step, epoch=epoch, total_steps=total_steps, total_epochs=total_epochs)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[start:end] if perm is not None else None
            xb = images if idx is None else images[idx]
            yb = labels if idx is None else labels[idx]
            hb = hard if idx is None or hard is None else hard[idx]
            if recipe.dsa:
                xb = dsa(xb, generator=gen)
            if compile_model:
                torch._dynamo.mark_dynamic(xb, 0)  # the last batch of an epoch is usually smaller
            with autocast_ctx(dev, amp):
                out = model(xb)
            loss = criterion(out, yb) if criterion is soft_cross_entropy else criterion(out, yb, hard=hb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update()
            step += 1
        if on_epoch is not None:
            on_epoch(1)
        done = epoch + 1
        checkpoint = protocol == "paper" and done % recipe.eval_every == 0 and done < total_epochs
        if evals is not None and checkpoint:
            curve.append((done, accuracy(_predict_plain(plain, evals, average, amp, recipe), evals.test_y)))
    if average is not None:
        average.copy_to(plain)  # everything below judges the averaged weights
    train_s = time.perf_counter() - t0
    train_acc = accuracy(predict(plain, images, amp_dtype=amp), labels.argmax(1))
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()} if return_state else None
    common = dict(seed=int(seed), train_acc=train_acc, epochs=total_epochs, train_s=train_s,
                  threads=torch.get_num_threads(), state=state)
    if evals is None or not parts:
        return StudentResult(test_acc=float("nan"), curve=curve, wall_s=time.perf_counter() - t0, **common)
    run = evaluator(plain, compile_setting=recipe.compile, key=shape_key, device=dev, evals=evals,
                    engine=engine, flip=recipe.tta == "flip")
    test_acc, per_class = float("nan"), []
    if "test" in parts:
        test_pred = run("test", amp_dtype=amp)
        test_acc = accuracy(test_pred, evals.test_y)
        per_class = per_class_accuracy(test_pred, evals.test_y, k)
        curve.append((total_epochs, test_acc))
    val_acc = accuracy(run("val", amp_dtype=amp), evals.val_y) if "val" in parts and evals.val_x is not None \
        else None
    return StudentResult(test_acc=test_acc, val_acc=val_acc,
                         paper_acc=max(a for _, a in curve) if protocol == "paper" and curve else None,
                         per_class=per_class, curve=curve, wall_s=time.perf_counter() - t0, **common)


def _predict_plain(plain: nn.Module, evals: EvalSets, average: _WeightAverage | None, amp,
                   recipe: StudentRecipe) -> torch.Tensor:
    """Test predictions mid-training (the paper protocol's checkpoints), with the averaged weights if any."""
    if average is None:
        return predict(plain, evals.test_x, amp_dtype=amp, stats=evals.stem_stats(plain, "test"),
                       flip=recipe.tta == "flip", flip_stats=evals.stem_stats(plain, "test", flip=True))
    judged = copy.deepcopy(plain)
    average.copy_to(judged)
    return predict(judged, evals.test_x, amp_dtype=amp, stats=evals.stem_stats(judged, "test"),
                   flip=recipe.tta == "flip", flip_stats=evals.stem_stats(judged, "test", flip=True))


def train_students(images: torch.Tensor, labels: torch.Tensor, recipe: StudentRecipe, *, seeds: Sequence[int],
                   evals: EvalSets | None = None, protocol: str = "clean", device: str | torch.device = "cpu",
                   on_epoch: ProgressFn | None = None, engine: Engine | None = None) -> list[StudentResult]:
    """Train one student per seed (sequentially, sharing compiled graphs when compiling pays)."""
    dev = resolve_device(device)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one student seed, e.g. seeds=[0, 1, 2]")
    engine = engine if engine is not None else Engine()
    steps = planned_steps(recipe, images.shape[0], len(seeds))
    compile_model = resolve_compile(recipe.compile, dev, total_steps=steps, model=recipe.model)
    return [train_student(images, labels, recipe, seed=s, evals=evals, protocol=protocol, device=dev,
                          compile_model=compile_model, on_epoch=on_epoch, engine=engine) for s in seeds]
