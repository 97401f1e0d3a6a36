"""Labels for images: softmax(logits / T) of expert checkpoints on un-augmented images, or one-hot classes.

Several experts (a committee: seeds and/or architectures) are combined by an ensemble mode, a spec of
:data:`COMMITTEES`: ``logits`` (softmax of the mean logits: the reference code's ensemble), ``probs`` (the
mean of the members' softmax: MEAL V2) or ``vote`` (the share of members whose argmax is each class:
committee voting). ``probs`` and ``vote`` take ``weights=equal`` or ``weights=prior``: CV-DD's prior
weights, ``softmax(val_acc_% / 5)`` over the members' validation accuracies at the label epoch (the
validation split, never the test split). :func:`committee_agreement` is the committee's diagnostic (mean
pairwise argmax agreement, Fleiss' kappa), recorded in the set's manifest.

Expert logits of training-pool images are worth keeping while a study labels the same images under many
settings (temperatures, transforms, codecs): a :class:`LogitCache` (owned by the ``Lab``) holds them, one
entry per member, so committees of different modes share them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..engine.evaluation import logits_of
from ..io import tensor_hash
from .committees import COMMITTEES, PRIOR_TEMPERATURE, list_ensemble_modes
from .transforms import softmax_with_temperature

if TYPE_CHECKING:
    from ..config import LabelSpec
    from ..data.prepared import PreparedData
    from ..experts import Trajectory

__all__ = ["COMMITTEES", "LogitCache", "committee_agreement", "committee_labels", "committee_weights",
           "expert_logits", "hard_labels", "label_images", "list_ensemble_modes", "member_logits",
           "soft_labels"]

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


def member_logits(trajectories: Sequence[Trajectory], epoch: int, images: torch.Tensor, *,
                  device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Each expert's fp32 logits at ``epoch`` on model-ready ``images`` (eval mode), in order."""
    if not trajectories:
        raise ValueError("need at least one expert trajectory")
    return [logits_of(t.model(epoch, device=device), images.to(device)) for t in trajectories]


def committee_weights(trajectories: Sequence[Trajectory], epoch: int, weights: str) -> torch.Tensor | None:
    """None for equal weights; for ``prior`` CV-DD's ``softmax(100 * val_acc / 5)`` over the members."""
    if weights == "equal":
        return None
    accs = []
    for t in trajectories:
        rec = next((h for h in t.history() if int(h["epoch"]) == epoch), None)
        if rec is None or rec.get("val_acc") is None:
            raise ValueError(f"ensemble weights=prior need each expert's validation accuracy at epoch "
                             f"{epoch}; expert {t.key} has none (no validation split?): use weights=equal")
        accs.append(float(rec["val_acc"]))
    return torch.softmax(torch.tensor(accs, dtype=torch.float64) * 100.0 / PRIOR_TEMPERATURE, dim=0)


def committee_labels(logits: Sequence[torch.Tensor], *, mode: str = "logits", temperature: float = 1.0,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Labels (N, C) float32 of a committee from its members' logits, per the ensemble ``mode`` spec.

    ``logits``: ``softmax(mean_i z_i / T)``; ``probs``: ``sum_i w_i softmax(z_i / T)``; ``vote``:
    ``sum_i w_i onehot(argmax z_i)`` (ties: lower class index; the temperature does not apply). ``weights``
    (members, summing to 1) default to equal; ``logits`` takes none.
    """
    if not logits:
        raise ValueError("a committee needs at least one member's logits")
    kind, _ = COMMITTEES.parse(mode).obj
    n = len(logits)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n,) or (weights < 0).any() or abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"committee weights must be {n} non-negative numbers summing to 1, got "
                             f"{weights.tolist()}")
    if kind == "logits":
        if weights is not None:
            raise ValueError("ensemble mode 'logits' averages logits with equal weights; use probs or vote")
        total = None
        for z in logits:  # the same sum, in the same order, as expert_logits
            total = z if total is None else total + z
        return softmax_with_temperature(total / n, temperature=temperature)
    w = weights if weights is not None else torch.full((n,), 1.0 / n, dtype=torch.float64)
    if kind == "probs":
        parts = [softmax_with_temperature(z, temperature=temperature).double() for z in logits]
    else:
        c = logits[0].shape[1]
        parts = [torch.nn.functional.one_hot(z.argmax(dim=1), c).double() for z in logits]
    out = sum(wi * p for wi, p in zip(w.tolist(), parts, strict=True))
    return out.float()


def committee_agreement(logits: Sequence[torch.Tensor], targets: torch.Tensor | None = None) -> dict:
    """How much a committee agrees on the images: mean pairwise argmax agreement (the mean over images of
    the share of member pairs with the same argmax), Fleiss' kappa of the argmax votes (NaN when every vote
    falls in one class), and each member's argmax accuracy against ``targets`` if given."""
    votes = torch.stack([z.argmax(dim=1).cpu() for z in logits])  # (members, N)
    m, n = votes.shape
    c = int(logits[0].shape[1])
    counts = torch.zeros(n, c, dtype=torch.float64).scatter_add_(
        1, votes.t().long(), torch.ones(n, m, dtype=torch.float64))
    out: dict = {"members": m, "images": n}
    if m < 2:
        out.update(pairwise_agreement=float("nan"), fleiss_kappa=float("nan"))
    else:
        per_image = ((counts * counts).sum(1) - m) / (m * (m - 1))
        p_bar = float(per_image.mean())
        p_e = float(((counts.sum(0) / (n * m)) ** 2).sum())
        kappa = (p_bar - p_e) / (1.0 - p_e) if p_e < 1.0 else float("nan")
        out.update(pairwise_agreement=p_bar, fleiss_kappa=kappa)
    if targets is not None:
        out["member_accuracy"] = [float((v == targets.cpu()).double().mean()) for v in votes]
    return out


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
                 cache: LogitCache | None = None, info: dict | None = None, seed: int = 0,
                 work_dir=None, on_step=None) -> torch.Tensor:
    """Labels (N, K) for training-pool positions per ``label`` (before any transform).

    With a committee (``label.ensemble`` > 1) and an ``info`` dict, ``info["committee"]`` receives the
    ensemble mode, the member keys and weights and :func:`committee_agreement` on these images. Learned
    labels use ``seed`` (the set's image seed), keep their resumable state under ``work_dir`` and report
    each meta step to ``on_step``.
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
    positions_hash = tensor_hash(pool_positions)

    def member(traj: Trajectory) -> torch.Tensor:
        def compute() -> torch.Tensor:
            x, _ = prepared.tensors("train", device=device)
            model = traj.model(label.expert_epoch, device=device)
            return logits_of(model, x[pool_positions.to(x.device)]).cpu()

        if cache is None:
            return compute()
        return cache.get_or_compute((traj.key, label.expert_epoch, str(device), positions_hash), compute)

    logits = [member(t) for t in chosen]
    _, weights_kind = COMMITTEES.parse(label.ensemble_mode).obj
    weights = committee_weights(chosen, label.expert_epoch, weights_kind)
    labels = committee_labels(logits, mode=label.ensemble_mode, temperature=label.temperature,
                              weights=weights)
    if info is not None and len(chosen) > 1:
        info["committee"] = {"mode": label.ensemble_mode, "experts": [t.key for t in chosen],
                             "weights": None if weights is None else weights.tolist(),
                             **committee_agreement(logits, targets)}
    return labels
