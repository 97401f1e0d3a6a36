"""A tiny, seeded synthetic dataset with learnable class structure, for tests and smoke runs."""

from __future__ import annotations

import torch

from .base import ImageDataset, register_dataset


def make_synthetic(*, num_classes: int = 4, n_train: int = 160, n_test: int = 80, channels: int = 1,
                   size: int = 12, noise: float = 0.35, seed: int = 0) -> ImageDataset:
    """Each class is a fixed random smooth pattern plus per-image noise, quantised to uint8.

    Classes overlap (shared pattern component) so an expert's soft labels carry structure.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(num_classes, channels, size // 3 + 1, size // 3 + 1, generator=g)
    base = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    shared = base.mean(0, keepdim=True)
    protos = 0.5 * base + 0.5 * shared

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = protos[y] + noise * torch.randn(n, channels, size, size, generator=g)
        x = (x - x.min()) / (x.max() - x.min())
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y.long()

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return ImageDataset("synthetic", xtr, ytr, xte, yte, tuple(f"class{c}" for c in range(num_classes)),
                        (0.5,) * channels, (0.25,) * channels, source=f"synthetic(seed={seed})")


@register_dataset("synthetic", help="Tiny seeded synthetic images with class structure (tests, smoke runs).")
def load_synthetic(*, root=None, **options) -> ImageDataset:
    return make_synthetic(**options)
