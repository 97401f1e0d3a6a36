"""scikit-learn's bundled 8x8 handwritten digits (1797 images): no download, fast, for tests and demos."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import check_positive_int
from .base import ImageDataset, register_dataset, stratified_split

_INSTALL = "pip install 'softlabels[digits]'"


@register_dataset("digits", help="scikit-learn's 8x8 digits (1797 images, 10 classes); resolution= upsamples")
def load_digits(*, root: object = None, resolution: int | None = None) -> ImageDataset:
    """Digits scaled from 0..16 to uint8, with a fixed stratified 25% test split (seed 0).

    ``resolution`` (e.g. 16 or 28) upsamples bilinearly so ConvNets have room; ``root`` is ignored.
    """
    if resolution is not None:
        check_positive_int("resolution", resolution)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(f"the digits dataset needs scikit-learn: {_INSTALL}") from None
    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float64).unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    x = x * (255.0 / 16.0)
    if resolution is not None and resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8)
    train, test = stratified_split(y, fraction=0.25, seed=0, num_classes=10)
    xtr = images[train]
    f = xtr.double().div(255.0)
    mean, std = float(f.mean()), float(f.std(unbiased=False))
    return ImageDataset("digits", xtr, y[train], images[test], y[test], tuple(str(d) for d in range(10)),
                        (round(mean, 4),), (round(std, 4),), source="sklearn.datasets.load_digits")
