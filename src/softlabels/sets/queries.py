"""A label-query budget: only ``q`` of a set's images are labelled by the expert, the rest keep hard labels.

A budget is named by a spec string and is part of the set's identity (``SetSpec.queries``):

* ``all``: every image gets the expert's label (no budget; the default);
* ``random:q=Q``: Q images drawn at random (seeded by the set's image seed);
* ``uncertainty:q=Q,proxy=P,measure=entropy|margin``: the Q images a *proxy* finds most uncertain. The proxy
  is the expert's earlier checkpoint P (it must precede the label epoch): finding the uncertain images costs
  one proxy forward pass per set image, counted as ``proxy_queries``, never hidden in the budget;
* ``diversity:q=Q``: greedy k-centre over the images themselves (model-ready pixels, no network): zero
  proxy queries.

``rest=hard`` (default) gives the other images their one-hot class; ``rest=none`` drops them, so the set is
the Q queried images. Expert queries (Q) and proxy queries are recorded in the set's manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..specs import Param, SpecRegistry

__all__ = ["QUERIES", "Budget", "list_queries", "query_budget"]

QUERIES = SpecRegistry("label query budget")
_Q = Param(key="q", kind="int", check=lambda v: v >= 1, allowed="an integer >= 1 (expert queries)")
_REST = Param(key="rest", kind="choice", default="hard", choices=("hard", "none"))


@dataclass(frozen=True)
class Budget:
    """Which of a set's images the expert labels: ``choose`` returns (positions within the set, the number
    of proxy forward passes it took). ``q`` is None for ``all``."""

    strategy: str
    q: int | None = None
    rest: str = "hard"
    proxy: int | None = None
    measure: str = "entropy"

    def choose(self, prepared, positions: torch.Tensor, *, seed: int, experts: Sequence[Any], device,
               cache) -> tuple[torch.Tensor, int]:
        n = positions.numel()
        if self.q is None:
            return torch.arange(n), 0
        if self.q > n:
            raise ValueError(f"query budget q={self.q} exceeds the set's {n} images; lower q")
        g = torch.Generator().manual_seed(int(seed) + 7717)  # not the selection's own stream
        if self.strategy == "random":
            return torch.randperm(n, generator=g)[: self.q].sort().values, 0
        x, _ = prepared.tensors("train", device=device)
        xs = x[positions.to(x.device)]
        if self.strategy == "diversity":
            from .scores import k_center_greedy

            return k_center_greedy(xs.flatten(1).cpu().double(), self.q, seed=seed).sort().values, 0
        from ..engine.evaluation import logits_of

        if not experts:
            raise ValueError("the uncertainty budget asks the expert's proxy checkpoint; pass experts=[...]")
        if self.proxy > experts[0].epochs_done:
            raise ValueError(f"proxy epoch {self.proxy} exceeds the expert's {experts[0].epochs_done} epochs")
        p = torch.softmax(logits_of(experts[0].model(self.proxy, device=device), xs).double().cpu(), 1)
        if self.measure == "entropy":
            u = -torch.special.xlogy(p, p).sum(1)
        else:  # a small top-1 minus top-2 margin is uncertain
            top = torch.topk(p, 2, dim=1).values
            u = top[:, 1] - top[:, 0]
        order = torch.sort(-u, stable=True).indices  # most uncertain first; ties by position
        return order[: self.q].sort().values, n


QUERIES.define("all", help="every image of the set is labelled by the expert (no budget)")(
    lambda: Budget("all"))


@QUERIES.define("random", _Q, _REST, help="q random images of the set get expert labels")
def _random(q: int, rest: str) -> Budget:
    return Budget("random", q, rest)


@QUERIES.define(
    "uncertainty", _Q,
    Param(key="proxy", kind="int", default=1, check=lambda v: v >= 0, allowed="an expert checkpoint >= 0"),
    Param(key="measure", kind="choice", default="entropy", choices=("entropy", "margin")), _REST,
    help="the q images an earlier expert checkpoint is least sure of (one proxy pass per image, counted)",
)
def _uncertainty(q: int, proxy: int, measure: str, rest: str) -> Budget:
    return Budget("uncertainty", q, rest, proxy, measure)


@QUERIES.define("diversity", _Q, _REST, help="greedy k-centre over the images' pixels: q spread-out images")
def _diversity(q: int, rest: str) -> Budget:
    return Budget("diversity", q, rest)


def query_budget(spec: str) -> tuple[Budget, str]:
    """The budget named by ``spec`` and its canonical spec."""
    parsed = QUERIES.parse(spec)
    return parsed.obj, parsed.spec


def list_queries() -> dict[str, str]:
    return QUERIES.describe()
