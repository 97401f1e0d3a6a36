"""The dataset type every loader returns, the dataset registry and the stratified validation split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import tensor_hash
from ..registry import Registry
from ..validation import check_images, check_targets


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images kept as uint8 (N, C, H, W) tensors with int64 targets, plus normalisation constants.

    ``mean``/``std`` are per channel on the [0, 1] scale; :meth:`normalize` maps uint8 to model input.
    """

    name: str
    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    _fingerprint: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            imgs = check_images(getattr(self, f"{split}_images"), name=f"{self.name} {split} images")
            if imgs.dtype != torch.uint8:
                raise TypeError(f"{self.name} {split} images must be uint8, got {imgs.dtype}")
            check_targets(getattr(self, f"{split}_targets"), num_classes=len(self.classes), n=imgs.shape[0],
                          name=f"{self.name} {split} targets")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {tuple(self.train_images.shape[1:])} and test images "
                f"{tuple(self.test_images.shape[1:])} differ in shape"
            )
        c = self.train_images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{self.name}: mean/std need {c} entries, got {len(self.mean)}/{len(self.std)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Content hash of train and test images and targets (cached)."""
        if not self._fingerprint:
            self._fingerprint.append(tensor_hash(self.train_images, self.train_targets, self.test_images,
                                                 self.test_targets))
        return self._fingerprint[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 normalised with this dataset's mean/std (same device as input)."""
        x = images.float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def class_indices(self, targets: torch.Tensor | None = None) -> list[torch.Tensor]:
        t = self.train_targets if targets is None else targets
        return [torch.nonzero(t == c, as_tuple=False).flatten() for c in range(self.num_classes)]

    def subset(self, n_train: int | None = None, n_test: int | None = None, *, seed: int = 0) -> ImageDataset:
        """A stratified random subset (for quick tests and smoke runs)."""
        def pick(t: torch.Tensor, n: int | None) -> torch.Tensor:
            if n is None or n >= t.shape[0]:
                return torch.arange(t.shape[0])
            g = torch.Generator().manual_seed(seed)
            return torch.randperm(t.shape[0], generator=g)[:n].sort().values

        tr, te = pick(self.train_targets, n_train), pick(self.test_targets, n_test)
        return ImageDataset(self.name, self.train_images[tr], self.train_targets[tr], self.test_images[te],
                            self.test_targets[te], self.classes, self.mean, self.std, self.source)


def stratified_split(targets: torch.Tensor, *, fraction: float, seed: int,
                     num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, validation), taking ``fraction`` of each class for validation.

    Deterministic in ``seed``; every class with at least two samples keeps at least one in each part.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    k = int(num_classes if num_classes is not None else int(targets.max()) + 1)
    g = torch.Generator().manual_seed(int(seed))
    train_parts, val_parts = [], []
    for c in range(k):
        idx = torch.nonzero(targets == c, as_tuple=False).flatten()
        if idx.numel() == 0:
            continue
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_val = int(round(fraction * idx.numel()))
        if idx.numel() >= 2:
            n_val = min(max(n_val, 1), idx.numel() - 1)
        else:
            n_val = 0
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


LoaderFn = Callable[..., ImageDataset]
DATASETS: Registry[LoaderFn] = Registry("dataset")


def register_dataset(name: str, *, help: str = "") -> Callable[[LoaderFn], LoaderFn]:
    return DATASETS.register(name, help=help)  # type: ignore[return-value]


def load_dataset(name: str, *, root: str | Path | None = None, **options) -> ImageDataset:
    """Load a registered dataset by name. ``root`` overrides where its files are looked for."""
    return DATASETS.get(name)(root=root, **options)


def list_datasets() -> dict[str, str]:
    return DATASETS.describe()
