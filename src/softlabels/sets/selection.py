"""Which real images make up a compressed set: a registry of selections, each named by a spec string.

``random`` draws ``ipc`` images per class (the paper's baseline); ``ce-bin:bin=B,bins=N,epoch=E`` draws them
from one per-class difficulty bin of the expert's ``-log p_y`` at epoch E (paper E10). The pruning scores of
:mod:`softlabels.sets.scores` read the expert's stored pool outputs (:mod:`softlabels.sets.score_store`):
``el2n``, ``grand``, ``forgetting`` and ``aum`` keep the hardest, easiest or middle images of each class by
their score; ``ccs`` covers the score range after cutting the hardest; ``herding`` and ``kcenter`` pick in
the expert's penultimate feature space. A selection returns positions in the training pool, class by class;
its canonical spec is part of the set's identity.
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
    "by_keep",
    "by_score_bin",
    "difficulty_scores",
    "list_selections",
    "pool_score",
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


# ------------------------------------------------------------------------------------------ pruning scores
KEEPS = ("hard", "easy", "middle")
CCS_SCORES = ("aum", "el2n", "forgetting")


def by_keep(scores: torch.Tensor, targets: torch.Tensor, *, ipc: int, num_classes: int, keep: str,
            hard_is_high: bool = True, seed: int = 0) -> torch.Tensor:
    """Per class, the ``ipc`` hardest, easiest or middle-ranked images by ``scores`` (ascending positions
    within a class, class by class). "middle" is the window of ``ipc`` ranks centred on the class median.

    Ties are broken at random (seeded): counts such as forgetting events tie for most images, and breaking
    them by index would pick by file order.
    """
    from ..validation import check_choice

    check_positive_int("ipc", ipc)
    check_choice("keep", keep, KEEPS)
    g = torch.Generator().manual_seed(int(seed))
    s = scores.double() if hard_is_high else -scores.double()
    order = torch.argsort(torch.rand(s.numel(), generator=g, dtype=torch.float64))
    order = order[torch.sort(s[order], stable=True).indices]  # easiest first, ties in random order
    order = order[torch.sort(targets[order].long(), stable=True).indices]  # class by class
    counts = torch.bincount(targets.long(), minlength=num_classes)
    out, start = [], 0
    for c in range(num_classes):
        n = int(counts[c])
        if n < ipc:
            raise ValueError(f"class {c} has only {n} images in the pool; ipc={ipc} is too large")
        lo = {"easy": 0, "hard": n - ipc, "middle": (n - ipc) // 2}[keep]
        out.append(order[start + lo:start + lo + ipc].sort().values)
        start += n
    return torch.cat(out)


def _expert(name: str, experts: Sequence[Any], epoch: int):
    if not experts:
        raise ValueError(f"selection {name} scores images with an expert; pass experts=[...]")
    if epoch > experts[0].epochs_done:
        raise ValueError(
            f"selection {name} epoch {epoch} exceeds the expert's {experts[0].epochs_done} epochs"
        )
    return experts[0]


def pool_score(name: str, prepared, expert, epoch: int, *, device, cache, params: str = "all"):
    """The per-image score ``name`` (el2n, grand, forgetting, aum) of every pool image, from the expert's
    stored outputs, and whether high means hard. Forgetting and AUM read checkpoints 1..``epoch``."""
    from . import scores as sc
    from .score_store import pool_grand, pool_logits

    y = prepared.train_targets
    kw = {"device": device, "cache": cache}
    if name == "el2n":
        return sc.el2n(torch.softmax(pool_logits(prepared, expert, epoch, **kw).double(), 1), y), True
    if name == "grand":
        return pool_grand(prepared, expert, epoch, params=params, **kw), True
    stack = torch.stack([pool_logits(prepared, expert, e, **kw) for e in range(1, epoch + 1)])
    if name == "forgetting":
        return sc.forgetting_events(stack.argmax(2) == y.view(1, -1)).double(), True
    if name == "aum":
        return sc.aum(stack, y), False
    raise ValueError(f"unknown pool score {name!r}")


@dataclass(frozen=True)
class _ByScore:
    score: str
    epoch: int
    keep: str
    params: str = "all"
    experts_used: int = 1

    def select(self, prepared, *, ipc, seed, experts, device, cache) -> torch.Tensor:
        ex = _expert(self.score, experts, self.epoch)
        s, high = pool_score(self.score, prepared, ex, self.epoch, device=device, cache=cache,
                             params=self.params)
        return by_keep(s, prepared.train_targets, ipc=ipc, num_classes=prepared.num_classes, keep=self.keep,
                       hard_is_high=high, seed=seed)


@dataclass(frozen=True)
class _Ccs:
    score: str
    epoch: int
    cut: float
    strata: int
    experts_used: int = 1

    def select(self, prepared, *, ipc, seed, experts, device, cache) -> torch.Tensor:
        from .scores import ccs_select

        ex = _expert("ccs", experts, self.epoch)
        s, high = pool_score(self.score, prepared, ex, self.epoch, device=device, cache=cache)
        return ccs_select(s, prepared.train_targets, ipc=ipc, num_classes=prepared.num_classes, cut=self.cut,
                          strata=self.strata, seed=seed, hardest_is_high=high)


@dataclass(frozen=True)
class _InFeatures:
    method: str  # herding | kcenter
    epoch: int
    experts_used: int = 1

    def select(self, prepared, *, ipc, seed, experts, device, cache) -> torch.Tensor:
        from .score_store import pool_features
        from .scores import herding, k_center_greedy, per_class

        ex = _expert(self.method, experts, self.epoch)
        f = pool_features(prepared, ex, self.epoch, device=device, cache=cache)
        kw = {"seed": seed} if self.method == "kcenter" else {}
        fn = k_center_greedy if self.method == "kcenter" else herding
        pos = per_class(fn, f, prepared.train_targets, ipc=ipc, num_classes=prepared.num_classes, **kw)
        return torch.cat([c.sort().values for c in pos.view(prepared.num_classes, ipc)])


_EPOCH = Param(key="epoch", kind="int", check=lambda v: v >= 0,
               allowed="an integer >= 0 (an expert checkpoint)")
_DYN_EPOCH = Param(key="epoch", kind="int", check=lambda v: v >= 2,
                   allowed="an integer >= 2 (checkpoints 1..epoch are read)")
_KEEP = Param(key="keep", kind="choice", default="hard", choices=KEEPS)


@SELECTIONS.define("el2n", _EPOCH, _KEEP,
                   help="EL2N ||p - y|| at an expert checkpoint; keep the hard / easy / middle images")
def _el2n(epoch: int, keep: str) -> _ByScore:
    return _ByScore("el2n", epoch, keep)


@SELECTIONS.define("grand", _EPOCH,
                   Param(key="params", kind="choice", default="all", choices=("all", "head")), _KEEP,
                   help="GraNd: per-image gradient norm at an expert checkpoint (all params or head)")
def _grand(epoch: int, params: str, keep: str) -> _ByScore:
    return _ByScore("grand", epoch, keep, params)


@SELECTIONS.define("forgetting", _DYN_EPOCH, _KEEP,
                   help="forgetting events over expert checkpoints 1..epoch (never learned = most)")
def _forgetting(epoch: int, keep: str) -> _ByScore:
    return _ByScore("forgetting", epoch, keep)


@SELECTIONS.define("aum", _DYN_EPOCH, _KEEP,
                   help="area under the margin over expert checkpoints 1..epoch (low = hard)")
def _aum(epoch: int, keep: str) -> _ByScore:
    return _ByScore("aum", epoch, keep)


@SELECTIONS.define(
    "ccs",
    Param(key="score", kind="choice", default="aum", choices=CCS_SCORES),
    _DYN_EPOCH,
    Param(key="cut", kind="float", default=0.1, check=lambda v: 0 <= v < 1, allowed="a fraction in [0, 1)"),
    Param(key="strata", kind="int", default=50, check=lambda v: v >= 1, allowed="an integer >= 1"),
    help="coverage-centric: drop the hardest cut per class, draw across equal-width score strata",
)
def _ccs(score: str, epoch: int, cut: float, strata: int) -> _Ccs:
    return _Ccs(score, epoch, cut, strata)


@SELECTIONS.define("herding", _EPOCH, help="herding in the expert's penultimate features (class means)")
def _herding(epoch: int) -> _InFeatures:
    return _InFeatures("herding", epoch)


@SELECTIONS.define("kcenter", _EPOCH, help="greedy k-centre in the expert's penultimate features (seeded)")
def _kcenter(epoch: int) -> _InFeatures:
    return _InFeatures("kcenter", epoch)


def selection(spec: str) -> tuple[Selection, str]:
    """The selection named by ``spec`` and its canonical spec."""
    parsed = SELECTIONS.parse(spec)
    return parsed.obj, parsed.spec


def list_selections() -> dict[str, str]:
    return SELECTIONS.describe()
