"""Build a CompressedSet: select real images, label them with expert(s), transform, encode."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .compressed import CompressedSet
from .config import LabelSpec
from .data.prepared import PreparedData
from .experts import Trajectory
from .labels.generate import expert_logits, hard_labels, soft_labels
from .selection import random_per_class

_LOGIT_CACHE: dict[tuple, torch.Tensor] = {}


def label_images(prepared: PreparedData, pool_positions: torch.Tensor, label: LabelSpec,
                 experts: Sequence[Trajectory], *, device: str | torch.device = "cpu") -> torch.Tensor:
    """Labels (N, K) for train-pool positions per ``label`` (before any transform)."""
    targets = prepared.train_targets[pool_positions]
    if label.kind == "hard":
        return hard_labels(targets, num_classes=prepared.num_classes)
    if label.expert_epoch is None:
        raise ValueError("soft labels need an expert epoch (LabelSpec(expert_epoch=...), --expert-epoch)")
    if len(experts) < label.ensemble:
        raise ValueError(f"label ensemble={label.ensemble} needs {label.ensemble} experts, got {len(experts)}")
    chosen = list(experts)[: label.ensemble]
    key = (tuple(t.key for t in chosen), label.expert_epoch, str(device), tensor_key(pool_positions))
    if key not in _LOGIT_CACHE:
        x, _ = prepared.tensors("train", device=device)
        _LOGIT_CACHE[key] = expert_logits(chosen, label.expert_epoch, x[pool_positions.to(x.device)],
                                          device=device).cpu()
        if len(_LOGIT_CACHE) > 256:
            _LOGIT_CACHE.pop(next(iter(_LOGIT_CACHE)))
    return soft_labels(_LOGIT_CACHE[key], temperature=label.temperature)


def tensor_key(t: torch.Tensor) -> tuple:
    return (t.numel(), hash(t.cpu().numpy().tobytes()))


def build_compressed_set(prepared: PreparedData, *, ipc: int, label: LabelSpec,
                         experts: Sequence[Trajectory] = (), seed: int = 0,
                         positions: torch.Tensor | None = None, image_codec: str = "raw",
                         device: str | torch.device = "cpu") -> CompressedSet:
    """Random ``ipc`` images per class from the train pool (or given pool ``positions``), labelled per
    ``label``, transformed by ``label.transform`` and stored with ``label.codec``."""
    from .labels.transforms import parse_transform

    ds = prepared.dataset
    selection = "random" if positions is None else "given"
    if positions is None:
        positions = random_per_class(prepared.train_targets, ipc=ipc, num_classes=prepared.num_classes, seed=seed)
    labels = label_images(prepared, positions, label, experts, device=device)
    targets = prepared.train_targets[positions]
    fn, canonical = parse_transform(label.transform)
    g = torch.Generator().manual_seed(int(seed) + 99991)
    labels = fn(labels, targets, generator=g)
    source = prepared.train_idx[positions]
    manifest = {
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(), "classes": list(ds.classes),
        "mean": list(ds.mean), "std": list(ds.std), "zca": bool(prepared.spec.zca), "ipc": ipc,
        "selection": selection, "seed": int(seed),
        "label": {**label.to_dict(), "transform": canonical},
        "experts": [t.key for t in list(experts)[: label.ensemble]] if label.kind == "soft" else [],
        "source_indices": source.tolist(),
    }
    cset = CompressedSet(ds.train_images[source].clone(), labels, targets.clone(), manifest)
    return cset.encode(image_codec=image_codec, label_codec=label.codec)
