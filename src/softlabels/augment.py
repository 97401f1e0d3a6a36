"""Batched Differentiable Siamese Augmentation (DSA) and ZCA whitening, on the tensors' own device.

DSA follows ``ParamDiffAug`` / ``DiffAugment`` of Zhao & Bilen (strategy
``color_crop_cutout_flip_scale_rotate``, ``aug_mode='S'``): one family is drawn per batch, and within it
every sample gets its own random parameters. Every op is a handful of batched kernels (no per-sample
Python loop) and differentiable with respect to the images.

Randomness comes only from the ``generator`` argument, which must live on the images' device
(``torch.Generator(device=x.device)``); the same generator state gives bit-identical output on the same
device type. In ``one_family_per_batch`` mode the family choice reads one integer back to the host (one
device synchronisation per call).

ZCA whitening matches kornia's ``ZCAWhitening(eps, compute_inv=True)`` (unbiased covariance,
``W = U diag(1/sqrt(S + eps)) U^T``), fitted in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .validation import check_images, check_positive_float

__all__ = ["DSA_FAMILIES", "DSAConfig", "ZCA", "dsa", "dsa_family", "fit_zca"]

DSA_FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
_NO_AUGMENTATION = "none"


def _parse_strategy(strategy: object) -> tuple[str, ...]:
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a string like 'color_crop_flip', got {type(strategy).__name__}")
    if strategy.strip().lower() == _NO_AUGMENTATION:
        return ()
    names = tuple(strategy.split("_"))
    bad = [n for n in names if n not in DSA_FAMILIES]
    if bad or not names:
        raise ValueError(
            f"unknown DSA family {bad[0] if bad else strategy!r} in strategy {strategy!r}; families are "
            f"joined by '_' and valid ones are {', '.join(DSA_FAMILIES)} (or 'none' for no augmentation)"
        )
    return names


@dataclass(frozen=True)
class DSAConfig:
    """Options of DSA; defaults are the reference ``ParamDiffAug``.

    ``strategy`` names families joined by ``'_'`` (``'none'`` disables augmentation). With
    ``one_family_per_batch`` (the reference ``'S'`` mode) one family is drawn uniformly per call; otherwise
    all families are applied in order (``'M'`` mode).
    """

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop_pad: float = 0.125
    cutout: float = 0.5
    flip_p: float = 0.5
    scale: float = 1.2
    rotate_deg: float = 15.0
    one_family_per_batch: bool = True

    def __post_init__(self) -> None:
        _parse_strategy(self.strategy)
        for name in ("brightness", "saturation", "contrast", "crop_pad", "rotate_deg"):
            check_positive_float(name, getattr(self, name), allow_zero=True)
        for name in ("cutout", "flip_p"):
            if check_positive_float(name, getattr(self, name), allow_zero=True) > 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if check_positive_float("scale", self.scale) < 1.0:
            raise ValueError(f"scale must be >= 1 (factors are drawn from [1/scale, scale]), "
                             f"got {self.scale!r}")
        if not isinstance(self.one_family_per_batch, bool):
            raise TypeError(f"one_family_per_batch must be a bool, got {self.one_family_per_batch!r}")

    @property
    def families(self) -> tuple[str, ...]:
        """The strategy's families in order (empty for ``'none'``)."""
        return _parse_strategy(self.strategy)


_DEFAULT_CONFIG = DSAConfig()


# --- deterministic primitives: explicit per-sample parameters, batched --------------------------------------

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (arithmetic and grid sampling), else the input's own dtype."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def _brightness(x: torch.Tensor, u: torch.Tensor, ratio: float) -> torch.Tensor:
    """``x + (u - 0.5) * ratio`` per sample (``u`` of shape (N,))."""
    return x + _per_sample((u - 0.5) * ratio)


def _saturation(x: torch.Tensor, u: torch.Tensor, ratio: float) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by ``u * ratio``."""
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * _per_sample(u * ratio) + m


def _contrast(x: torch.Tensor, u: torch.Tensor, ratio: float) -> torch.Tensor:
    """Scale each sample's deviation from its (C, H, W) mean by ``u + ratio``."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _per_sample(u + ratio) + m


def _color(x: torch.Tensor, u: torch.Tensor, config: DSAConfig) -> torch.Tensor:
    """Brightness, then saturation, then contrast, fused; ``u`` is (3, N) uniforms.

    With b the brightness offset, s, c the saturation and contrast factors, m the per-pixel channel mean
    and M the per-sample mean of ``x``: brightness shifts m and M by b, saturation keeps the channel mean,
    so the composition is ``(x - m) * s * c + (m - M) * c + M + b``: one reduction and two full passes.
    """
    cdt = _compute_dtype(x)
    xc = x.to(cdt)
    u = u.to(cdt)
    b = _per_sample((u[0] - 0.5) * config.brightness)
    s = _per_sample(u[1] * config.saturation)
    c = _per_sample(u[2] + config.contrast)
    # in-place ops act only on fresh temporaries (a broadcast out-of-place add/addcmul is ~10x slower on CPU)
    if xc.shape[1] == 1:  # saturation is the identity on one channel (m == x)
        mm = xc.mean(dim=(2, 3), keepdim=True)
        return (xc * c).add_(mm * (1 - c) + b).to(x.dtype)
    m = xc.mean(dim=1, keepdim=True)
    mm = m.mean(dim=(2, 3), keepdim=True)
    offset = (m - mm).mul_(c).add_(mm + b)
    return (xc - m).mul_(s * c).add_(offset).to(x.dtype)


def _translate(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
    """``out[n, :, i, j] = x[n, :, i + shift_h[n], j + shift_w[n]]``, zero outside; one gather.

    Like the reference: pad by one zero pixel and clamp the source index into the padded image.
    """
    n, c, h, w = x.shape
    dev = x.device
    rows = (torch.arange(h, device=dev) + shift_h.reshape(-1, 1) + 1).clamp_(0, h + 1)
    cols = (torch.arange(w, device=dev) + shift_w.reshape(-1, 1) + 1).clamp_(0, w + 1)
    index = (rows.unsqueeze(2) * (w + 2) + cols.unsqueeze(1)).reshape(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (1, 1, 1, 1)).reshape(n, c, (h + 2) * (w + 2))
    return padded.gather(2, index).reshape(n, c, h, w)


def _cutout(x: torch.Tensor, center_h: torch.Tensor, center_w: torch.Tensor,
            size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size`` rectangle starting at ``center - size // 2`` per sample, clipped at the borders."""
    _, _, h, w = x.shape
    dev = x.device
    start_h = (center_h - size[0] // 2).reshape(-1, 1)
    start_w = (center_w - size[1] // 2).reshape(-1, 1)
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    in_h = (rows >= start_h) & (rows < start_h + size[0])
    in_w = (cols >= start_w) & (cols < start_w + size[1])
    keep = ~(in_h.unsqueeze(2) & in_w.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror (last dim) the samples where the boolean ``flip`` (N,) is true."""
    return torch.where(_per_sample(flip), x.flip(3), x)


def _scale_theta(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(sx)
    return torch.stack([sx, zero, zero, zero, sy, zero], dim=1).reshape(-1, 2, 3)


def _rotation_theta(radians: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(radians)
    return torch.stack([cos, sin, zero, -sin, cos, zero], dim=1).reshape(-1, 2, 3)


def _grid_coords(n: int, like: torch.Tensor) -> torch.Tensor:
    """``affine_grid``'s normalised pixel centres for ``align_corners=True`` (a single pixel sits at 0)."""
    if n == 1:
        return torch.zeros(1, dtype=like.dtype, device=like.device)
    return torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=True)`` by broadcasting: no matmul, so autocast
    cannot lower its precision, and faster on CPU (``benchmarks/augment.py``)."""
    t = theta.reshape(-1, 6, 1, 1)
    xs = _grid_coords(w, theta)
    ys = _grid_coords(h, theta).unsqueeze(1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack((gx, gy), dim=-1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling by per-sample ``theta`` (N, 2, 3), zero padding, ``align_corners=True``.

    Low-precision inputs are resampled in float32 (autocast disabled) and cast back.
    """
    if x.numel() == 0:
        return x.clone()
    cdt = _compute_dtype(x)
    grid = _affine_grid(theta.to(cdt), x.shape[2], x.shape[3])
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = F.grid_sample(x.to(cdt), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


# --- random families ----------------------------------------------------------------------------------------

def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)


def _randint(high: int, n: int, x: torch.Tensor, generator: torch.Generator, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=generator, device=x.device)


def _family_color(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    return _color(x, _rand((3, x.shape[0]), x, g), cfg)


def _family_crop(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * cfg.crop_pad + 0.5), int(w * cfg.crop_pad + 0.5)
    shift_h = _randint(sh + 1, n, x, g, low=-sh)
    shift_w = _randint(sw + 1, n, x, g, low=-sw)
    return _translate(x, shift_h, shift_w)


def _family_cutout(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    n, _, h, w = x.shape
    size = int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)
    center_h = _randint(h + (1 - size[0] % 2), n, x, g)
    center_w = _randint(w + (1 - size[1] % 2), n, x, g)
    return _cutout(x, center_h, center_w, size)


def _family_flip(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    return _flip(x, _rand((x.shape[0],), x, g) < cfg.flip_p)


def _family_scale(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    lo = 1.0 / cfg.scale
    s = _rand((2, x.shape[0]), x, g) * (cfg.scale - lo) + lo
    return _affine(x, _scale_theta(s[0], s[1]))


def _family_rotate(x: torch.Tensor, g: torch.Generator, cfg: DSAConfig) -> torch.Tensor:
    radians = (_rand((x.shape[0],), x, g) - 0.5) * (2.0 * cfg.rotate_deg * math.pi / 180.0)
    return _affine(x, _rotation_theta(radians))


_FAMILY_FNS: dict[str, Callable[[torch.Tensor, torch.Generator, DSAConfig], torch.Tensor]] = {
    "color": _family_color,
    "crop": _family_crop,
    "cutout": _family_cutout,
    "flip": _family_flip,
    "scale": _family_scale,
    "rotate": _family_rotate,
}


def _check_inputs(x: object, generator: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point (normalised images), got {x.dtype}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    gd, xd = generator.device, x.device
    if gd.type != xd.type or (gd.index is not None and xd.index is not None and gd.index != xd.index):
        raise ValueError(f"generator is on {gd} but x is on {xd}; use torch.Generator(device=x.device)")
    return x


def _choose_family(generator: torch.Generator, families: tuple[str, ...], device: torch.device) -> str:
    """Draw one family uniformly (reads one integer back to the host)."""
    i = int(torch.randint(0, len(families), (1,), generator=generator, device=device).item())
    return families[i]


def dsa_family(x: torch.Tensor, family: str, *, generator: torch.Generator,
               config: DSAConfig = _DEFAULT_CONFIG) -> torch.Tensor:
    """Apply the one named DSA ``family`` with per-sample random parameters; returns a new tensor."""
    if family not in _FAMILY_FNS:
        raise ValueError(f"unknown DSA family {family!r}; valid ones are {', '.join(DSA_FAMILIES)}")
    x = _check_inputs(x, generator)
    return _FAMILY_FNS[family](x, generator, config)


def dsa(x: torch.Tensor, *, generator: torch.Generator, config: DSAConfig = _DEFAULT_CONFIG) -> torch.Tensor:
    """Differentiable Siamese Augmentation of a float (N, C, H, W) batch; returns a new tensor.

    ``generator`` must be on ``x``'s device. bfloat16/float16 inputs are computed in float32 where
    arithmetic matters and returned in their own dtype.
    """
    x = _check_inputs(x, generator)
    families = config.families
    if not families:
        return x.clone()
    if config.one_family_per_batch:
        families = (_choose_family(generator, families, x.device),)
    for family in families:
        x = _FAMILY_FNS[family](x, generator, config)
    return x


# --- ZCA whitening ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ZCA:
    """A fitted ZCA transform: ``apply(x) = (x - mean) @ matrix``, ``invert(z) = z @ inverse_matrix + mean``.

    ``mean`` has the images' (C, H, W) shape; the matrices are (D, D) with D = C * H * W.
    """

    mean: torch.Tensor
    matrix: torch.Tensor
    inverse_matrix: torch.Tensor
    eps: float

    def __post_init__(self) -> None:
        if not isinstance(self.mean, torch.Tensor) or self.mean.ndim != 3:
            got = tuple(self.mean.shape) if isinstance(self.mean, torch.Tensor) else type(self.mean).__name__
            raise ValueError(f"ZCA mean must be a tensor of the images' (C, H, W) shape, got {got}")
        d = self.mean.numel()
        for name in ("matrix", "inverse_matrix"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (d, d):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"ZCA {name} must have shape ({d}, {d}) to match mean "
                                 f"{tuple(self.mean.shape)}, got {got}")

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 3 or tuple(x.shape[-3:]) != tuple(self.mean.shape):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ZCA was fitted on images of shape {tuple(self.mean.shape)}, got {shape}")
        return x.reshape(-1, self.mean.numel())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten images (..., C, H, W)."""
        flat = self._flat(x) - self.mean.to(x.device, x.dtype).reshape(1, -1)
        return (flat @ self.matrix.to(x.device, x.dtype)).reshape(x.shape)

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        """Undo ``apply``."""
        flat = self._flat(z) @ self.inverse_matrix.to(z.device, z.dtype)
        return flat.reshape(z.shape) + self.mean.to(z.device, z.dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ZCA:
        return ZCA(self.mean.to(device, dtype), self.matrix.to(device, dtype),
                   self.inverse_matrix.to(device, dtype), self.eps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-ready); ``eps`` as a 0-d float64 tensor."""
        return {"mean": self.mean, "matrix": self.matrix, "inverse_matrix": self.inverse_matrix,
                "eps": torch.tensor(self.eps, dtype=torch.float64)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> ZCA:
        missing = [k for k in ("mean", "matrix", "inverse_matrix", "eps") if k not in state]
        if missing:
            raise ValueError(f"ZCA state is missing {', '.join(missing)}; "
                             "was it written by ZCA.state_dict()?")
        return cls(state["mean"], state["matrix"], state["inverse_matrix"], float(state["eps"]))


def fit_zca(images: torch.Tensor, *, eps: float = 0.1, chunk: int = 4096) -> ZCA:
    """Fit ZCA whitening on float (N, C, H, W) images (like kornia ``ZCAWhitening(eps, compute_inv=True)``).

    The unbiased covariance is accumulated in float64 in ``chunk``-row blocks on the images' device and
    eigendecomposed with ``torch.linalg.eigh``; the result is stored in float32.
    """
    check_images(images)
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be floating point (normalise them first), got {images.dtype}")
    eps = check_positive_float("eps", eps)
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"fit_zca needs at least 2 images to estimate a covariance, got {n}")
    flat = images.reshape(n, -1)
    d = flat.shape[1]
    mean = torch.zeros(d, dtype=torch.float64, device=images.device)
    for i in range(0, n, chunk):
        mean += flat[i:i + chunk].to(torch.float64).sum(0)
    mean /= n
    cov = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    for i in range(0, n, chunk):
        xc = flat[i:i + chunk].to(torch.float64) - mean
        cov.addmm_(xc.T, xc)
    cov /= n - 1
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0.0) + eps
    matrix = (evecs * evals.rsqrt()) @ evecs.T
    inverse = (evecs * evals.sqrt()) @ evecs.T
    matrix = (matrix + matrix.T) / 2
    inverse = (inverse + inverse.T) / 2
    return ZCA(mean.reshape(images.shape[1:]).float(), matrix.float(), inverse.float(), eps)
