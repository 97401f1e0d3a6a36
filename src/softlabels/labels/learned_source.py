"""Learned labels as a label source of compressed sets: ``LabelSpec(kind="learned", learner="bptt:...")``.

The learner spec names the options of :func:`softlabels.labels.learned.learn_labels` (one grammar with the
other specs, canonical in run keys). The meta set is a seeded sample of ``meta_size`` images of the
*training pool* that excludes the set's own images, so validation and test data never shape the labels;
the learning seed is the set's image seed. With a ``work_dir`` the learning state lives under
``work_dir/<hash>`` and an interrupted run resumes to the same labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import config_hash, tensor_hash
from ..specs import Param, SpecRegistry
from .learned import LearnedLabelConfig, learn_labels

if TYPE_CHECKING:
    from ..data.prepared import PreparedData

__all__ = ["LEARNERS", "DEFAULT_LEARNER", "learned_set_labels", "learner_config", "list_learners",
           "meta_positions"]

LEARNERS: SpecRegistry = SpecRegistry("label learner")


def _pos(v) -> bool:
    return v > 0


def _nonneg(v) -> bool:
    return v >= 0


# Defaults sized for a CPU: measured on Fashion-MNIST at IPC 1 (benchmarks/RESULTS.md, learned labels).
@LEARNERS.define(
    "bptt",
    Param(key="model", kind="str", default="convnet-d3"),
    Param(key="width", default=32, check=_pos, allowed="a positive integer"),
    Param(key="inner_steps", default=10, check=_pos, allowed="a positive integer"),
    Param(key="truncate", default=0, check=_nonneg, allowed="0 (all inner steps) or a positive integer"),
    Param(key="inner_lr", kind="float", default=0.01, check=_pos, allowed="a positive number"),
    Param(key="meta_steps", default=100, check=_pos, allowed="a positive integer"),
    Param(key="meta_lr", kind="float", default=0.03, check=_pos, allowed="a positive number"),
    Param(key="meta_batch", default=128, check=_pos, allowed="a positive integer"),
    Param(key="meta_size", default=2000, check=_pos, allowed="a positive integer"),
    Param(key="reset_every", default=1, check=_pos, allowed="a positive integer"),
    Param(key="dsa", kind="bool", default=True),
    Param(key="init", kind="choice", default="hard", choices=("hard", "uniform")),
    help="truncated back-propagation through K unrolled student steps (paper section 5.2)",
)
def _bptt(*, truncate: int, meta_size: int, **kw) -> tuple[dict, int]:
    return {**kw, "truncate": truncate or None}, meta_size


DEFAULT_LEARNER = LEARNERS.canonical("bptt")


def list_learners() -> list[str]:
    return LEARNERS.names()


def learner_config(spec: str, *, seed: int) -> tuple[LearnedLabelConfig, int]:
    """The :class:`LearnedLabelConfig` (seeded) and meta-set size a learner spec names."""
    kw, meta_size = LEARNERS.parse(spec).obj
    return LearnedLabelConfig(seed=seed, checkpoint_every=10, **kw), meta_size


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
