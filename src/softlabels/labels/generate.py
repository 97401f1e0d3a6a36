"""Soft labels from experts: softmax(logits / T) of an expert checkpoint on un-augmented images."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..experts import Trajectory
from ..train import logits_of
from .transforms import softmax_with_temperature


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
