"""Learned labels as a label source of compressed sets: ``LabelSpec(kind="learned", learner="bptt:...")``
(the learner specs are in :mod:`softlabels.labels.learners`).

The meta set is a seeded sample of ``meta_size`` images of the *training pool* that excludes the set's own
images, so validation and test data never shape the labels; the learning seed is the set's image seed. With
a ``work_dir`` the learning state lives under ``work_dir/<hash>`` and an interrupted run resumes to the same
labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import config_hash, tensor_hash
from .learned import learn_labels
from .learners import LEARNERS, learner_config

if TYPE_CHECKING:
    from ..data.prepared import PreparedData

__all__ = ["learned_set_labels", "meta_positions"]


def meta_positions(n_pool: int, exclude: torch.Tensor, *, size: int, seed: int) -> torch.Tensor:
    """A seeded sample of ``size`` training-pool positions outside ``exclude`` (the set's own images)."""
    keep = torch.ones(n_pool, dtype=torch.bool)
    keep[exclude.cpu()] = False
    rest = torch.nonzero(keep).flatten()
    if len(rest) == 0:
        raise ValueError("learned labels need held-out training images for the meta-loss, but the set uses "
                         "the whole pool; lower the IPC or use a larger training split")
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    return rest[torch.randperm(len(rest), generator=g)[: min(size, len(rest))]]


def learned_set_labels(prepared: PreparedData, positions: torch.Tensor, learner: str, *, seed: int,
                       device: str | torch.device = "cpu", work_dir: str | Path | None = None,
                       on_step: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Learned labels (N, K) for the training-pool ``positions``, meta-loss on held-out pool images."""
    config, meta_size = learner_config(learner, seed=seed)
    x, y = prepared.tensors("train", device=device)
    meta = meta_positions(len(y), positions, size=meta_size, seed=seed).to(x.device)
    pos = positions.to(x.device)
    images, targets, meta_x, meta_y = x[pos], y[pos], x[meta], y[meta]
    state = None
    if work_dir is not None:
        state = Path(work_dir) / config_hash({"learner": LEARNERS.canonical(learner), "seed": seed,
                                              "data": tensor_hash(images, targets, meta_x, meta_y)})
    result = learn_labels(images, targets, meta_x, meta_y, num_classes=prepared.num_classes, config=config,
                          state_dir=state, on_step=on_step)
    return result.probs
