"""The learners of learned labels: ``LabelSpec(kind="learned", learner="bptt:...")`` names the options of
:func:`softlabels.labels.learned.learn_labels` in the one spec grammar (canonical in run keys), plus the size
of the held-out meta set (:mod:`softlabels.labels.learned_source`). The learning seed is the set's image seed.
"""

from __future__ import annotations

from ..specs import Param, SpecRegistry
from .learned import LearnedLabelConfig

__all__ = ["DEFAULT_LEARNER", "LEARNERS", "learner_config", "list_learners"]

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
