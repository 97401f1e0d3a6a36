"""The one place where user input is validated. Errors say what to fix; no ``assert`` on user input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class SoftlabelsError(Exception):
    """Base class for errors raised by softlabels."""


class DataNotFoundError(SoftlabelsError, FileNotFoundError):
    """A dataset or artifact could not be found; the message says where we looked and how to get it."""


class CorruptFileError(SoftlabelsError, ValueError):
    """A file exists but is truncated, malformed or fails its content hash."""


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_fraction(name: str, value: object) -> float:
    v = check_positive_float(name, value, allow_zero=True)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.{hint}")
    return str(value)


def check_images(images: object, *, name: str = "images") -> torch.Tensor:
    """Images are a 4-D tensor (N, C, H, W), uint8 or floating, finite."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one image")
    if images.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"{name} has {images.shape[1]} channels (shape {tuple(images.shape)}); expected 1, 3 or 4 "
            "channels first: (N, C, H, W). Transpose (N, H, W, C) arrays with .permute(0, 3, 1, 2)."
        )
    if images.dtype.is_floating_point:
        if not torch.isfinite(images).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    elif images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 or floating point, got {images.dtype}")
    return images


def check_targets(targets: object, *, num_classes: int | None = None, n: int | None = None,
                  name: str = "targets") -> torch.Tensor:
    """Hard targets: 1-D integer class indices in [0, num_classes)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(targets).__name__}")
    if targets.ndim != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a 1-D integer tensor, got shape {tuple(targets.shape)} {targets.dtype}"
        )
    if n is not None and targets.shape[0] != n:
        raise ValueError(f"{name} has {targets.shape[0]} entries but there are {n} images")
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"{name} contains negative class indices (min {int(targets.min())})")
    if num_classes is not None and targets.numel() and int(targets.max()) >= num_classes:
        raise ValueError(f"{name} contains class {int(targets.max())} but num_classes is {num_classes}")
    return targets


def check_labels(labels: object, *, num_classes: int | None = None, n: int | None = None,
                 normalized: bool = False, atol: float = 1e-3, name: str = "labels") -> torch.Tensor:
    """Soft labels: 2-D (N, C), finite, non-negative; rows sum to 1 when ``normalized``.

    Rows may sum to less than one when a transform (top-k, column removal) deliberately does not
    renormalise, as in the paper; pass ``normalized=True`` where a distribution is required.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C), got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (N, num_classes), got shape {tuple(labels.shape)}; "
            "hard labels are 1-D class indices and belong in targets"
        )
    if not labels.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point probabilities, got {labels.dtype}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} rows but there are {n} images")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"{name} has {labels.shape[1]} columns but the dataset has {num_classes} classes")
    lf = labels.float()
    if not torch.isfinite(lf).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (lf < 0).any():
        raise ValueError(
            f"{name} contains negative entries (min {float(lf.min()):.3g}); labels are probabilities"
        )
    sums = lf.sum(dim=1)
    if normalized and not torch.allclose(sums, torch.ones_like(sums), atol=atol):
        bad = int((sums - 1).abs().argmax())
        raise ValueError(
            f"{name} rows must sum to 1 (row {bad} sums to {float(sums[bad]):.4f}); "
            "renormalise them or pass a transform that does"
        )
    if (sums > 1 + atol).any():
        bad = int(sums.argmax())
        raise ValueError(f"{name} row {bad} sums to {float(sums[bad]):.4f} > 1; labels must be probabilities")
    return labels
