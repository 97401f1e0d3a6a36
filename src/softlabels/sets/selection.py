"""Which real images make up a compressed set: a registry of selections, each named by a spec string.

``random`` draws ``ipc`` images per class (the paper's baseline); ``ce-bin:bin=B,bins=N,epoch=E`` draws them
from one per-class difficulty bin of the expert's ``-log p_y`` at epoch E (paper E10). A selection returns
positions in the training pool, class by class; its canonical spec is part of the set's identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..specs import Param, SpecRegistry
from ..validation import check_positive_int

__all__ = [
    "SELECTIONS",
    "Selection",
    "by_score_bin",
    "difficulty_scores",
    "list_selections",
    "random_per_class",
    "selection",
]


def random_per_class(targets: torch.Tensor, *, ipc: int, num_classes: int, seed: int) -> torch.Tensor:
    """``ipc`` random positions of each class in ``targets`` (class-major order), seeded.

    A class with fewer than ``ipc`` samples raises, naming the class and how many it has.
    """
    check_positive_int("ipc", ipc)
    g = torch.Generator().manual_seed(int(seed))
    keys = torch.rand(targets.numel(), generator=g)
    order = torch.argsort(targets.long() * 2.0 + keys)  # class-major, random within class
    counts = torch.bincount(targets.long(), minlength=num_classes)
    short = torch.nonzero(counts < ipc).flatten()
    if short.numel():
        c = int(short[0])
        raise ValueError(f"class {c} has only {int(counts[c])} images in the pool; ipc={ipc} is too large")
    starts = torch.cumsum(counts, 0) - counts
    picks = (starts.view(-1, 1) + torch.arange(ipc).view(1, -1)).flatten()
    return order[picks]


def by_score_bin(targets: torch.Tensor, scores: torch.Tensor, *, ipc: int, num_classes: int, bin: int,
                 num_bins: int = 10, seed: int = 0) -> torch.Tensor:
    """``ipc`` random images per class from difficulty bin ``bin`` (0 = lowest score) of ``num_bins``
    equal-count per-class bins of ``scores`` (e.g. the expert's -log p_y), as
    :func:`softlabels.labels.diagnostics.difficulty_bins` cuts them.

    Unlike the reference code, images within a bin are drawn at random (not lowest index first). A bin
    smaller than ``ipc`` is topped up from the following bins, then (for the last bins) the preceding ones.
    """
    from ..labels.diagnostics import difficulty_bins

    check_positive_int("ipc", ipc)
    if not 0 <= bin < num_bins:
        raise ValueError(f"bin must be in 0..{num_bins - 1}, got {bin}")
    g = torch.Generator().manual_seed(int(seed))
    bins = difficulty_bins(scores, targets, num_bins=num_bins, num_classes=num_classes)
    out = []
    for c in range(num_classes):
        chosen = bins[c][bin]
        if chosen.numel() < ipc:
            order = list(range(bin + 1, num_bins)) + list(range(bin - 1, -1, -1))
            pool = torch.cat([chosen, *(bins[c][b] for b in order)])
            if pool.numel() < ipc:
                raise ValueError(f"class {c} has only {pool.numel()} images; ipc={ipc} is too large")
            out.append(pool[:ipc].sort().values)
            continue
        out.append(chosen[torch.randperm(chosen.numel(), generator=g)[:ipc]].sort().values)
    return torch.cat(out)


def difficulty_scores(prepared, expert, epoch: int, *, device: str | torch.device = "cpu",
                      cache=None) -> torch.Tensor:
    """``-log p_y`` of ``expert`` at ``epoch`` for every image of the training pool (float64, CPU)."""
    from ..config import LabelSpec
    from ..labels.diagnostics import cross_entropy_to_true
    from ..labels.generate import label_images

    pool = torch.arange(prepared.train_targets.numel())
    labels = label_images(prepared, pool, LabelSpec(kind="soft", expert_epoch=epoch), [expert], device=device,
                          cache=cache)
    return cross_entropy_to_true(labels.cpu(), prepared.train_targets)


class Selection(Protocol):
    """Picks pool positions: ``select(prepared, ipc=, seed=, experts=, device=, cache=)``; ``experts_used``
    says how many of the given experts it reads (part of the set's identity)."""

    experts_used: int

    def select(
        self, prepared, *, ipc: int, seed: int, experts: Sequence[Any], device, cache
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class _Random:
    experts_used: int = 0

    def select(self, prepared, *, ipc, seed, experts, device, cache) -> torch.Tensor:
        return random_per_class(prepared.train_targets, ipc=ipc, num_classes=prepared.num_classes, seed=seed)


@dataclass(frozen=True)
class _CeBin:
    bin: int
    bins: int
    epoch: int
    experts_used: int = 1

    def select(self, prepared, *, ipc, seed, experts, device, cache) -> torch.Tensor:
        if not experts:
            raise ValueError("selection ce-bin scores images with an expert; pass experts=[...]")
        if self.epoch > experts[0].epochs_done:
            raise ValueError(
                f"selection ce-bin epoch {self.epoch} exceeds the expert's {experts[0].epochs_done} epochs"
            )
        scores = difficulty_scores(prepared, experts[0], self.epoch, device=device, cache=cache)
        return by_score_bin(prepared.train_targets, scores, ipc=ipc, num_classes=prepared.num_classes,
                            bin=self.bin, num_bins=self.bins, seed=seed)


@dataclass(frozen=True)
class _All:
    experts_used: int = 0

    def select(self, prepared, *, ipc, seed, experts, device, cache) -> torch.Tensor:
        return torch.argsort(prepared.train_targets.long(), stable=True)  # class by class, in pool order


SELECTIONS = SpecRegistry("image selection")
SELECTIONS.define("random", help="ipc random images per class (the paper's baseline)")(_Random)
SELECTIONS.define("all", help="every image of the source (a set file's images; the whole pool)")(_All)


@SELECTIONS.define(
    "ce-bin",
    Param(key="bin", kind="int", check=lambda v: v >= 0, allowed="an integer >= 0"),
    Param(key="bins", kind="int", default=10, check=lambda v: v >= 2, allowed="an integer >= 2"),
    Param(key="epoch", kind="int", check=lambda v: v >= 0, allowed="an integer >= 0"),
    help="ipc random images per class from one bin of the expert's -log p_y at an epoch",
)
def _ce_bin(bin: int, bins: int, epoch: int) -> _CeBin:
    if bin >= bins:
        raise ValueError(f"ce-bin: bin must be in 0..{bins - 1}, got {bin}")
    return _CeBin(bin, bins, epoch)


def selection(spec: str) -> tuple[Selection, str]:
    """The selection named by ``spec`` and its canonical spec."""
    parsed = SELECTIONS.parse(spec)
    return parsed.obj, parsed.spec


def list_selections() -> dict[str, str]:
    return SELECTIONS.describe()
