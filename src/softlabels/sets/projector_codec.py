"""Projector labels (HeLlO-style label lightening): store a small label generator instead of N x C labels.

The codec ``projector:dim=D,bits=B,res=R,seed=S,steps=K`` fits a linear head (D x C weights and C biases) on
features of the set's *stored* images so that ``softmax(head(features(image)))`` reproduces the expert's
labels, stores only the head, and regenerates the labels when the set is decoded. Its bytes are the head's
stored size, ``D * C * B / 8`` plus the per-class scales (8-bit only) and biases (fp16), whatever the number
of images: at a large IPC it is far below dense or top-k labels, at the price of the labels it cannot fit.

The features are computable from the stored images alone, so nothing but the head is stored: each image is
area-downsampled to R x R (pixel values / 255 - 0.5) and mapped by a fixed random Gaussian projection
(seeded by S); each projection is standardised over the set's images, shifted by a random bias, passed
through a ReLU and standardised again. The statistics are *over the set's stored images*, so decoding
recomputes them from the same images. The head minimises the mean KL divergence from the
labels (rows renormalised: a generator yields distributions) plus ``1e-4 * |W|^2`` with L-BFGS (K
iterations, deterministic on CPU); then 8-bit heads store int8 weights with one fp16 scale per class
(round to nearest, 127 levels each side), 16-bit heads fp16 weights.

HeLlO (Kang et al., "Label-efficient dataset distillation", CVPR 2025) regenerates labels with a projector
on CLIP image features; without a stored or downloadable feature network, a seeded random feature map is the
honest stand-in here, and its labels are only as good as the fit (measured by the bytes study).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..specs import Param
from ..validation import check_positive_int
from .codec_base import Encoded
from .label_codecs import LABEL_CODECS, LabelCodec

__all__ = ["ProjectorCodec", "projector_features"]

RIDGE = 1e-4


def projector_features(images: torch.Tensor, *, dim: int, res: int, seed: int) -> torch.Tensor:
    """The fixed feature map (N, dim), float64: downsample, random ReLU projection, standardise over N."""
    if images.dtype != torch.uint8:
        raise TypeError(f"projector features read stored uint8 images, got {images.dtype}")
    x = images.double() / 255.0 - 0.5
    if x.shape[-2:] != (res, res):
        x = F.adaptive_avg_pool2d(x, (res, res))
    v = x.flatten(1)
    g = torch.Generator().manual_seed(int(seed))
    proj = torch.randn(v.shape[1], dim, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64) * 0.5
    # standardised projections before the ReLU: every feature is active on part of the set, none is dead
    f = torch.relu(_standardise(v @ proj) + bias)
    return _standardise(f)


def _standardise(f: torch.Tensor) -> torch.Tensor:
    """Columns to mean 0 and (population) std 1 over the rows; constant columns become 0."""
    std = f.std(0, keepdim=True, unbiased=False)
    return (f - f.mean(0, keepdim=True)) / torch.where(std > 1e-12, std, torch.ones_like(std))


@dataclass(frozen=True, kw_only=True)
class ProjectorCodec(LabelCodec):
    """A linear head on seeded random features of the stored images; see the module docstring."""

    dim: int = 64
    bits: int = 8
    res: int = 8
    seed: int = 0
    steps: int = 200

    name: ClassVar[str] = "projector"
    needs_images: ClassVar[bool] = True
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param(key="dim", kind="int", default=64, check=lambda v: v >= 1, allowed="an integer >= 1"),
        Param(key="bits", kind="int", default=8, check=lambda v: v in (8, 16), allowed="8 or 16"),
        Param(key="res", kind="int", default=8, check=lambda v: v >= 1, allowed="an integer >= 1"),
        Param(key="seed", kind="int", default=0, check=lambda v: v >= 0, allowed="an integer >= 0"),
        Param(key="steps", kind="int", default=200, check=lambda v: v >= 1, allowed="an integer >= 1"),
    )

    def __post_init__(self) -> None:
        for key in ("dim", "res", "steps"):
            check_positive_int(f"projector {key}", getattr(self, key))
        check_positive_int("projector seed", self.seed, minimum=0)
        if isinstance(self.bits, bool) or self.bits not in (8, 16):
            raise ValueError(f"projector bits must be 8 or 16, got {self.bits!r}")

    @property
    def TENSORS(self) -> tuple[str, ...]:  # type: ignore[override]  # the scales exist at 8 bits only
        return ("weight", "scale", "bias") if self.bits == 8 else ("weight", "bias")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return projector_features(images, dim=self.dim, res=self.res, seed=self.seed)

    def fit(self, labels: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head (W (dim, C), b (C,)) in float64 before quantisation."""
        phi = self.features(images)
        y = labels.double()
        sums = y.sum(1, keepdim=True)
        if (sums <= 0).any():
            raise ValueError(f"projector: label row {int((sums[:, 0] <= 0).nonzero()[0, 0])} is all zero; "
                             "a generator of distributions cannot fit it")
        y = y / sums
        w = torch.zeros(self.dim, y.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.log(y.mean(0).clamp_min(1e-12)).clone().requires_grad_(True)  # start at the class prior
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = _kl(y, phi @ w + b) + RIDGE * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach(), b.detach()

    def _encode_images(self, x: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        w, b = self.fit(x, images)
        out = {"bias": b.to(torch.float16).contiguous()}
        if self.bits == 16:
            out["weight"] = w.to(torch.float16).contiguous()
            return out
        scale = (w.abs().amax(0) / 127.0).to(torch.float16)
        s = torch.where(scale > 0, scale, torch.ones_like(scale)).double()  # an all-zero column stays zero
        out["weight"] = torch.round(w / s).clamp(-127, 127).to(torch.int8).contiguous()
        out["scale"] = scale.contiguous()
        return out

    def _decode_images(self, enc: Encoded, n: int, c: int, images: torch.Tensor) -> torch.Tensor:
        wdtype = torch.int8 if self.bits == 8 else torch.float16
        w = self._expect(enc, "weight", wdtype, (self.dim, c)).double()
        if self.bits == 8:
            scale = self._expect(enc, "scale", torch.float16, (c,)).double()
            w = w * torch.where(scale > 0, scale, torch.ones_like(scale))
        b = self._expect(enc, "bias", torch.float16, (c,)).double()
        return torch.softmax(self.features(images) @ w + b, dim=1).float()


def _kl(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(y || softmax(logits))."""
    return (torch.xlogy(y, y) - y * torch.log_softmax(logits, dim=1)).sum(1).mean()


LABEL_CODECS.register(ProjectorCodec.name, ProjectorCodec)
