"""Your own data in one ``.npz`` or ``.safetensors`` file (no pickle is ever loaded)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io import load_tensors
from ..validation import CorruptFileError, DataNotFoundError
from .base import ImageDataset, register_dataset

REQUIRED_KEYS = ("train_images", "train_targets", "test_images", "test_targets")
_LAYOUT_HELP = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The required arrays as tensors, and every key the file holds."""
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist; arrays needs root= (or path=) naming a .npz or "
                                f".safetensors file with keys {', '.join(REQUIRED_KEYS)}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = load_tensors(path)[0]
        return tensors, sorted(tensors)
    if suffix != ".npz":
        raise ValueError(f"{path}: arrays reads .npz or .safetensors files, not {suffix or 'no extension'!r}")
    out: dict[str, torch.Tensor] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = sorted(z.files)
            for k in REQUIRED_KEYS:
                if k in z.files:
                    out[k] = torch.from_numpy(np.ascontiguousarray(z[k]))
    except ValueError as e:
        if "pickle" in str(e):
            raise ValueError(f"{path} holds object arrays, which would need pickle; store plain numeric "
                             "arrays and pass class names with classes=[...]") from None
        raise CorruptFileError(f"{path} is not a valid .npz file ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptFileError(f"{path} is not a valid .npz file ({e}); it may be truncated") from None
    return out, keys


def _to_uint8_nchw(x: torch.Tensor, *, name: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {_LAYOUT_HELP}")
    else:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {_LAYOUT_HELP}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.dtype.is_floating_point:
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if not torch.isfinite(xf).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(xf.min()), float(xf.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} is floating point with values in [{lo:.4g}, {hi:.4g}]; float images "
                             "must be in [0, 1] (divide 0..255 data by 255, or store uint8)")
        return xf.mul(255.0).round_().to(torch.uint8).contiguous()
    if x.dtype != torch.bool and not x.dtype.is_complex:
        lo, hi = int(x.min()), int(x.max())
        if 0 <= lo and hi <= 255:
            return x.to(torch.uint8).contiguous()
        raise ValueError(f"{name} is {x.dtype} with values in [{lo}, {hi}]; store uint8 0..255 or floats "
                         "in [0, 1]")
    raise ValueError(f"{name} has dtype {x.dtype}; store uint8 0..255 or floats in [0, 1]")


def _to_targets(y: torch.Tensor, n: int, *, name: str) -> torch.Tensor:
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise ValueError(f"{name} has dtype {y.dtype}; targets must be integer class indices")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} has shape {tuple(y.shape)}; expected ({n},), one class index per image")
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} contains negative class index {int(y.min())}")
    return y.to(torch.int64)


@register_dataset("arrays", help="Your own arrays in one .npz/.safetensors file (root= the file).")
def load_arrays(*, root: str | os.PathLike | None = None, path: str | os.PathLike | None = None,
                classes: Sequence[str] | None = None, name: str = "arrays") -> ImageDataset:
    """Load ``train_images``, ``train_targets``, ``test_images``, ``test_targets`` from ``root``/``path``.

    Images are uint8, or floats in [0, 1]; shapes as in ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``.
    Class names come from ``classes``, else ``"0"`` .. ``"K-1"``; mean/std are computed from the train images.
    """
    if root is not None and path is not None and Path(root) != Path(path):
        raise ValueError(f"give the file once: root={str(root)!r} and path={str(path)!r} differ")
    file = root if root is not None else path
    if file is None:
        raise DataNotFoundError("arrays needs root= (or path=) naming a .npz or .safetensors file with keys "
                                f"{', '.join(REQUIRED_KEYS)}")
    p = Path(file).expanduser()
    data, keys = _read_file(p)
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ValueError(f"{p} has no key {key!r}; required keys are {', '.join(REQUIRED_KEYS)}; "
                             f"the file has {', '.join(keys) or 'no keys'}")
    xtr = _to_uint8_nchw(data["train_images"], name=f"{p.name}: train_images")
    xte = _to_uint8_nchw(data["test_images"], name=f"{p.name}: test_images")
    ytr = _to_targets(data["train_targets"], xtr.shape[0], name=f"{p.name}: train_targets")
    yte = _to_targets(data["test_targets"], xte.shape[0], name=f"{p.name}: test_targets")
    k = max(int(ytr.max()), int(yte.max()) if yte.numel() else 0) + 1
    if classes is not None:
        if isinstance(classes, str):
            raise TypeError("classes must be a list of names, not a single string")
        names = tuple(str(c) for c in classes)
        if len(names) < k:
            raise ValueError(f"{p.name}: targets go up to {k - 1} but only {len(names)} class names were "
                             "given")
    else:
        names = tuple(str(c) for c in range(k))
    mean, std = _channel_stats(xtr)
    return ImageDataset(name, xtr, ytr, xte, yte, names, mean, std, source=str(p))


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std on the [0, 1] scale from 256-bin histograms (no float copy of the data)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p = hist / hist.sum()
        m = float((p * levels).sum())
        s = float((p * (levels - m) ** 2).sum()) ** 0.5
        means.append(round(m, 6))
        stds.append(round(s, 6) if s > 0 else 1.0)  # constant channel: avoid dividing by zero
    return tuple(means), tuple(stds)
