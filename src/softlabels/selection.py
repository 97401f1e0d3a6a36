"""Which real images make up a compressed set: random per class, or by difficulty bin."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .registry import Registry
from .validation import check_positive_int

SelectFn = Callable[..., torch.Tensor]
SELECTIONS: Registry[SelectFn] = Registry("selection")


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
    from .labels.diagnostics import difficulty_bins

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
            extra = [bins[c][b] for b in order]
            pool = torch.cat([chosen, *extra])
            if pool.numel() < ipc:
                raise ValueError(f"class {c} has only {pool.numel()} images; ipc={ipc} is too large")
            out.append(pool[:ipc].sort().values)
            continue
        out.append(chosen[torch.randperm(chosen.numel(), generator=g)[:ipc]].sort().values)
    return torch.cat(out)


SELECTIONS.register("random", random_per_class, help="ipc random images per class (the paper's baseline)")
SELECTIONS.register("bin", by_score_bin, help="ipc images per class from one difficulty bin of a score")
