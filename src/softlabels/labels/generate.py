"""Labels for images: softmax(logits / T) of expert checkpoints on un-augmented images, or one-hot classes.

Expert logits of training-pool images are worth keeping while a study labels the same images under many
settings (temperatures, transforms, codecs): a :class:`LogitCache` (owned by the ``Lab``) holds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..engine.evaluation import logits_of
from ..io import tensor_hash
from .transforms import softmax_with_temperature

if TYPE_CHECKING:
    from ..config import LabelSpec
    from ..data.prepared import PreparedData
    from ..experts import Trajectory

__all__ = ["LogitCache", "expert_logits", "hard_labels", "label_images", "soft_labels"]


def expert_logits(trajectories: Sequence[Trajectory], epoch: int, images: torch.Tensor, *,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Mean fp32 logits over ``trajectories`` at ``epoch`` on model-ready ``images`` (eval mode).

    With several experts this is the reference code's ensemble: average the logits, then softmax.
    """
    if not trajectories:
        raise ValueError("need at least one expert trajectory")
    total = None
    for traj in trajectories:
        z = logits_of(traj.model(epoch, device=device), images.to(device))
        total = z if total is None else total + z
    return total / len(trajectories)


def soft_labels(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) with a TRUE temperature T (T > 1 smooths).

    The reference code's ``--temp`` multiplies the logits, i.e. it is 1/T: its ``temp=0.5`` is our
    ``temperature=2``. (One implementation: :func:`softlabels.labels.transforms.softmax_with_temperature`.)
    """
    return softmax_with_temperature(logits, temperature=temperature)


def hard_labels(targets: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """One-hot float labels (the hard-label baseline)."""
    return torch.nn.functional.one_hot(targets.long(), num_classes).float()


class LogitCache:
    """Expert logits (CPU) of pool images, keyed by the experts' keys, the epoch and a content hash of the
    positions; the least recently used beyond ``size`` entries are dropped."""

    def __init__(self, *, size: int = 64) -> None:
        self._size = size
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get_or_compute(self, key: tuple, compute) -> torch.Tensor:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = compute()
        self._entries[key] = value
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def label_images(prepared: PreparedData, pool_positions: torch.Tensor, label: LabelSpec,
                 experts: Sequence[Trajectory], *, device: str | torch.device = "cpu",
                 cache: LogitCache | None = None, seed: int = 0, work_dir=None,
                 on_step=None) -> torch.Tensor:
    """Labels (N, K) for training-pool positions per ``label`` (before any transform).

    Learned labels use ``seed`` (the set's image seed), keep their resumable state under ``work_dir`` and
    report each meta step to ``on_step``.
    """
    targets = prepared.train_targets[pool_positions]
    if label.kind == "hard":
        return hard_labels(targets, num_classes=prepared.num_classes)
    if label.kind == "learned":
        from .learned_source import learned_set_labels

        return learned_set_labels(prepared, pool_positions, label.learner, seed=seed, device=device,
                                  work_dir=work_dir, on_step=on_step)
    if label.expert_epoch is None:
        raise ValueError("soft labels need an expert epoch (LabelSpec(expert_epoch=...), --expert-epoch)")
    if len(experts) < label.ensemble:
        raise ValueError(
            f"label ensemble={label.ensemble} needs {label.ensemble} experts, got {len(experts)}"
        )
    chosen = list(experts)[: label.ensemble]

    def compute() -> torch.Tensor:
        x, _ = prepared.tensors("train", device=device)
        return expert_logits(chosen, label.expert_epoch, x[pool_positions.to(x.device)], device=device).cpu()

    if cache is None:
        logits = compute()
    else:
        key = (tuple(t.key for t in chosen), label.expert_epoch, str(device), tensor_hash(pool_positions))
        logits = cache.get_or_compute(key, compute)
    return soft_labels(logits, temperature=label.temperature)
