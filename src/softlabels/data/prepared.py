"""A dataset with its validation split carved out and model-ready tensors kept on the device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import DataSpec
from ..io import tensor_hash
from .base import ImageDataset, load_dataset, stratified_split


@dataclass(eq=False)
class PreparedData:
    """Train pool (for experts and image selection), validation and test, per the ``clean`` protocol.

    ``train_idx`` / ``val_idx`` index ``dataset.train_images``. Images stay uint8 until
    :meth:`to_input`, which normalises (and whitens, with ZCA) on the device.
    """

    dataset: ImageDataset
    spec: DataSpec
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    zca: object | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def train_targets(self) -> torch.Tensor:
        return self.dataset.train_targets[self.train_idx]

    def split_key(self) -> str:
        """Identifies the data an expert sees: dataset content + the exact train split."""
        return f"{self.dataset.fingerprint()}-{tensor_hash(self.train_idx)}"

    def to_input(self, images_u8: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
        x = self.dataset.normalize(images_u8.to(device))
        if self.zca is not None:
            x = self.zca.apply(x)  # type: ignore[attr-defined]
        return x

    def tensors(self, part: str, *, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Model-ready (x, y) for ``part`` in {"train", "val", "test"}, cached per device."""
        key = (part, str(device))
        if key not in self._cache:
            d = self.dataset
            if part == "train":
                u8, y = d.train_images[self.train_idx], d.train_targets[self.train_idx]
            elif part == "val":
                u8, y = d.train_images[self.val_idx], d.train_targets[self.val_idx]
            elif part == "test":
                u8, y = d.test_images, d.test_targets
            else:
                raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
            self._cache[key] = (self.to_input(u8, device=device), y.to(device))
        return self._cache[key]


def prepare_data(spec: DataSpec, *, root=None, dataset: ImageDataset | None = None,
                 **load_options) -> PreparedData:
    """Load (unless given) and split a dataset per ``spec``; fit ZCA on the train pool if asked."""
    ds = dataset if dataset is not None else load_dataset(spec.name, root=root, **load_options)
    train_idx, val_idx = stratified_split(ds.train_targets, fraction=spec.val_fraction, seed=spec.split_seed,
                                          num_classes=ds.num_classes)
    if spec.train_subset is not None and spec.train_subset < train_idx.numel():
        keep, _ = stratified_split(ds.train_targets[train_idx], seed=spec.split_seed + 1,
                                   fraction=1.0 - spec.train_subset / train_idx.numel(),
                                   num_classes=ds.num_classes)
        train_idx = train_idx[keep]
    prepared = PreparedData(ds, spec, train_idx, val_idx)
    if spec.zca:
        from ..augment import fit_zca

        prepared.zca = fit_zca(ds.normalize(ds.train_images[train_idx]))
    return prepared
