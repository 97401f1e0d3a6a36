"""A faithful re-creation of the reference code's student loop, kept as a baseline to measure against.

TensorDataset + DataLoader(batch 256, shuffle) + DiffAugment-style DSA drawn from the global RNG (one
family per batch, F.affine_grid) + nn.CrossEntropyLoss, fp32, eager, one student at a time, evaluation
at batch 128. :class:`ReferenceExecutor` trains a lab's students with it (``lab.workers =
ReferenceExecutor(lab.evals)``), so whole studies can be timed both ways (``study_speed.py``). It lives
with the benchmarks, never in the library.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from softlabels.engine.evaluation import EvalSets, accuracy, per_class_accuracy
from softlabels.engine.loop import StudentResult
from softlabels.models import init_model


def ref_dsa(x: torch.Tensor) -> torch.Tensor:
    """The reference DiffAugment 'S' mode: one family per batch, parameters from the global RNG.

    Random draws are where the reference makes them: on the images' device, except the scale and rotate
    parameters (drawn on the CPU, the grid moved to the device), so on a GPU it runs as the official code."""
    dev = x.device
    fam = ["color", "crop", "cutout", "flip", "scale", "rotate"][int(torch.randint(6, (1,)))]
    n, _, h, w = x.shape
    if fam == "color":
        x = x + (torch.rand(n, 1, 1, 1, device=dev) - 0.5)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (torch.rand(n, 1, 1, 1, device=dev) * 2.0) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (torch.rand(n, 1, 1, 1, device=dev) + 0.5) + m
    if fam == "crop":
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        tx = torch.randint(-sh, sh + 1, size=[n, 1, 1], device=dev)
        ty = torch.randint(-sw, sw + 1, size=[n, 1, 1], device=dev)
        gb, gx, gy = torch.meshgrid(torch.arange(n, device=dev), torch.arange(h, device=dev),
                                    torch.arange(w, device=dev), indexing="ij")
        gx = torch.clamp(gx + tx + 1, 0, h + 1)
        gy = torch.clamp(gy + ty + 1, 0, w + 1)
        xp = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
        return xp.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
    if fam == "cutout":
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        ox = torch.randint(0, h + (1 - ch % 2), size=[n, 1, 1], device=dev)
        oy = torch.randint(0, w + (1 - cw % 2), size=[n, 1, 1], device=dev)
        gb, gx, gy = torch.meshgrid(torch.arange(n, device=dev), torch.arange(ch, device=dev),
                                    torch.arange(cw, device=dev), indexing="ij")
        gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
        gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
        mask = torch.ones(n, h, w, device=dev)
        mask[gb, gx, gy] = 0
        return x * mask.unsqueeze(1)
    if fam == "flip":
        r = torch.rand(n, 1, 1, 1, device=dev)
        return torch.where(r < 0.5, x.flip(3), x)
    if fam == "scale":
        sx = torch.rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2
        sy = torch.rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2
        theta = [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(n)]
        theta = torch.tensor(theta, dtype=torch.float)
    else:
        t = (torch.rand(n) - 0.5) * 2 * 15 / 180 * float(np.pi)
        theta = [
            [[torch.cos(t[i]), torch.sin(-t[i]), 0], [torch.sin(t[i]), torch.cos(t[i]), 0]] for i in range(n)
        ]
        theta = torch.tensor(theta, dtype=torch.float)
    grid = F.affine_grid(theta, x.shape, align_corners=True).to(dev)
    return F.grid_sample(x, grid, align_corners=True)


def ref_train(images, labels, *, width, epochs, seed, lr=0.01, model="convnet-d3", weight_decay=5e-4,
              batch_size=256):
    """Train one student the reference way (global RNG seeded with ``seed``); returns the model."""
    torch.manual_seed(seed)
    net = init_model(model, width, seed=seed, in_channels=images.shape[1], num_classes=labels.shape[1],
                     image_size=tuple(images.shape[2:]), device=torch.device("cpu"))
    if hasattr(net, "fused_stem"):
        net.fused_stem = False  # the reference computes conv -> GroupNorm as two modules
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 4), gamma=0.3)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    crit = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        for xb, yb in loader:
            out = net(ref_dsa(xb))
            loss = crit(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return net


def ref_predict(net, x) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i:i + 128]).argmax(1) for i in range(0, x.shape[0], 128)])


def ref_eval(net, x, y) -> tuple[float, float]:
    """(accuracy, seconds) of the reference evaluation: batch 128, fp32, eager."""
    net.eval()
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], 128):
            correct += int((net(x[i:i + 128]).argmax(1) == y[i:i + 128]).sum())
    return correct / x.shape[0], time.perf_counter() - t0


def train_reference(images: torch.Tensor, labels: torch.Tensor, recipe, *, seed: int,
                    evals: EvalSets | None) -> StudentResult:
    """One student of ``recipe`` (SGD, clean protocol) with the reference loop on CPU, timed and reported like
    the engine's students (final-epoch accuracies)."""
    if recipe.optimizer != "sgd":
        raise ValueError("the reference loop supports the SGD recipe only")
    images, labels = images.cpu(), labels.cpu().float()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        net = ref_train(
            images,
            labels,
            width=recipe.width,
            epochs=recipe.epochs,
            seed=seed,
            lr=recipe.lr,
            model=recipe.model,
            weight_decay=recipe.resolved_weight_decay,
            batch_size=recipe.batch_size,
        )
    train_s = time.perf_counter() - t0
    common = dict(
        seed=int(seed),
        train_acc=accuracy(ref_predict(net, images), labels.argmax(1)),
        epochs=recipe.epochs,
        train_s=train_s,
        threads=torch.get_num_threads(),
    )
    if evals is None:
        return StudentResult(test_acc=float("nan"), wall_s=time.perf_counter() - t0, **common)
    pred, ty = ref_predict(net, evals.test_x.cpu()), evals.test_y.cpu()
    val_acc = (
        None if evals.val_x is None else accuracy(ref_predict(net, evals.val_x.cpu()), evals.val_y.cpu())
    )
    test_acc = accuracy(pred, ty)
    return StudentResult(
        test_acc=test_acc,
        val_acc=val_acc,
        per_class=per_class_accuracy(pred, ty, labels.shape[1]),
        curve=[(recipe.epochs, test_acc)],
        wall_s=time.perf_counter() - t0,
        **common,
    )


class ReferenceExecutor:
    """Trains a lab's students one at a time with the reference loop (an executor for ``Lab.workers``)."""

    def __init__(self, evals: EvalSets | None) -> None:
        self.evals = evals

    def run(self, jobs, on_result, *, on_epoch=None) -> None:
        for job in jobs:
            if job.protocol != "clean":
                raise ValueError("the reference loop reports the clean protocol only")
            res = train_reference(job.images, job.labels, job.recipe, seed=job.seed,
                                  evals=self.evals if job.parts else None)
            if on_epoch is not None:
                on_epoch(job.recipe.epochs)
            on_result(job, res)

    def close(self) -> None:
        pass
