"""Lossy image codecs: JPEG, WebP, downsampling and packed downsampling, decoded to the original shape.

A set stored with these codecs trains like any other: ``decode`` returns uint8 images (N, C, H, W) of the
shape that was encoded, only not bit-exact. ``nbytes`` is, as for every codec, the real payload size.

    "jpeg:quality=75" | "webp:quality=75" | "down:factor=2,mode=area" | "pack:factor=2,codec=zlib"
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..specs import Param
from ..validation import CorruptFileError
from .codec_base import Encoded, meta_shape, smallest_uint_dtype
from .image_codecs import IMAGE_CODECS, ImageCodec, _bytes_tensor, image_codec

__all__ = ["DownCodec", "JpegCodec", "PackCodec", "WebpCodec", "downsample", "upsample"]

QUALITY = Param(key="quality", kind="int", default=75, check=lambda v: 1 <= v <= 100,
                allowed="an integer from 1 (smallest) to 100 (best)")
FACTOR = Param(key="factor", kind="int", default=2, check=lambda v: v >= 2,
               allowed="an integer >= 2 (the downsampling factor of each side)")
_MODES = {1: "L", 3: "RGB"}


# ------------------------------------------------------------------------------------------ helpers


def _check_int(spec: str, key: str, value: object, lo: int, hi: int | None = None) -> None:
    """Direct construction skips spec parsing, so the dataclasses check their own values."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{spec}: {key} must be an integer {rng}, got {value!r}")


def _check_factor(spec: str, h: int, w: int, factor: int) -> tuple[int, int]:
    """(H/F, W/F), or a ValueError naming the sizes and a factor that does divide them."""
    if h % factor == 0 and w % factor == 0:
        return h // factor, w // factor
    g = math.gcd(h, w)
    divisors = [d for d in range(2, g + 1) if g % d == 0]
    if divisors:
        best = min(divisors, key=lambda d: (abs(d - factor), d))
        hint = f"try factor={best} (factors dividing both: {', '.join(map(str, divisors))})"
    else:
        hint = "no factor >= 2 divides both; crop or pad the images first"
    raise ValueError(f"{spec} cannot downsample {h}x{w} images by {factor}: H and W must both be divisible "
                     f"by the factor; {hint}")


def _check_stored_size(spec: str, h: int, w: int, factor: int) -> None:
    if h % factor or w % factor:
        raise CorruptFileError(f"{spec} payload claims {h}x{w} images, not divisible by {factor}")


def downsample(x: torch.Tensor, factor: int, mode: str = "area") -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, H/F, W/F): the mean of each F x F block (rounded half up, in
    integers so every platform agrees) or, for ``nearest``, its top-left pixel (torch's nearest rule)."""
    n, c, h, w = x.shape
    if mode == "nearest":
        return x[:, :, ::factor, ::factor].contiguous()
    sums = x.reshape(n, c, h // factor, factor, w // factor, factor).sum(dim=(3, 5), dtype=torch.int32)
    area = factor * factor
    return ((2 * sums + area) // (2 * area)).clamp_(0, 255).to(torch.uint8)


def upsample(small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, C, H, W): bilinear (align_corners=False), rounded and clamped."""
    up = F.interpolate(small.float(), size=size, mode="bilinear", align_corners=False)
    return up.round_().clamp_(0, 255).to(torch.uint8)


def _split_streams(spec: str, enc: Encoded, n: int) -> list[bytes]:
    """The ``n`` streams of a ``data`` + ``lengths`` payload, its lengths checked against its bytes."""
    data, lengths = enc.tensors["data"], enc.tensors["lengths"]
    if data.dtype != torch.uint8 or data.ndim != 1:
        raise CorruptFileError(f"{spec} payload data must be 1-D uint8, got {data.dtype} {tuple(data.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or tuple(lengths.shape) != (n,):
        raise CorruptFileError(f"{spec} payload lengths must be {n} integers, got {lengths.dtype} "
                               f"{tuple(lengths.shape)}")
    ends = lengths.long().cumsum(0)
    if int(lengths.min()) <= 0 or int(ends[-1]) != data.numel():
        raise CorruptFileError(f"{spec} payload lengths sum to {int(ends[-1])} (min {int(lengths.min())}) "
                               f"but it holds {data.numel()} bytes")
    raw = data.numpy().tobytes()
    return [raw[s:e] for s, e in zip((ends - lengths.long()).tolist(), ends.tolist(), strict=True)]


# ---------------------------------------------------------------------------------- JPEG and WebP


class _PillowCodec(ImageCodec):
    """Each image as its own Pillow stream; streams concatenated plus their lengths (as png does)."""

    FORMAT: ClassVar[str]
    TENSORS: ClassVar[tuple[str, ...]] = ("data", "lengths")
    quality: int

    def __post_init__(self) -> None:
        _check_int(self.name, "quality", self.quality, 1, 100)

    def _save_options(self) -> dict[str, object]:
        raise NotImplementedError

    def _stream_mode(self, c: int) -> str:
        """The Pillow mode a stored stream decodes to."""
        return _MODES[c]

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from PIL import Image

        c = x.shape[1]
        if c not in _MODES:
            raise ValueError(f"{self.spec} stores 1-channel (L) or 3-channel (RGB) images, got {c} channels "
                             f"(shape {tuple(x.shape)}); store them with png or zlib instead")
        arr = x.permute(0, 2, 3, 1).contiguous().numpy()
        if c == 1:
            arr = arr[..., 0]
        streams = []
        for img in arr:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format=self.FORMAT, **self._save_options())
            streams.append(buf.getvalue())
        lengths = torch.tensor([len(s) for s in streams], dtype=torch.int64)
        return {"data": _bytes_tensor(b"".join(streams)),
                "lengths": lengths.to(smallest_uint_dtype(int(lengths.max()))).contiguous()}

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        from PIL import Image

        n, c, h, w = shape
        if c not in _MODES:
            raise CorruptFileError(f"{self.spec} payload claims {c} channels; it stores only 1 or 3")
        out = []
        for stream in _split_streams(self.spec, enc, n):
            try:
                with Image.open(io.BytesIO(stream)) as im:
                    if im.format != self.FORMAT or im.mode != self._stream_mode(c):
                        raise CorruptFileError(f"{self.spec} payload holds a {im.format} {im.mode} stream, "
                                               f"expected {self.FORMAT} {self._stream_mode(c)}")
                    a = np.asarray(im.convert(_MODES[c]))  # a no-op but for 1-channel WebP
            except CorruptFileError:
                raise
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on a bad stream
                raise CorruptFileError(f"{self.spec} payload holds an unreadable stream ({e})") from None
            if a.shape[:2] != (h, w):
                raise CorruptFileError(f"{self.spec} payload image is {a.shape[1]}x{a.shape[0]}, expected "
                                       f"{w}x{h}")
            out.append(a.reshape(h, w, c))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True, kw_only=True)
class JpegCodec(_PillowCodec):
    """Each image as a baseline JPEG (Huffman-optimised, 4:2:0 chroma); lossy, ``quality`` 1..100."""

    quality: int = 75

    name: ClassVar[str] = "jpeg"
    FORMAT: ClassVar[str] = "JPEG"
    PARAMS: ClassVar[tuple[Param, ...]] = (QUALITY,)

    def _save_options(self) -> dict[str, object]:
        # every option that changes the bytes is pinned, so the same images give the same payload
        return {"quality": self.quality, "optimize": True, "progressive": False, "subsampling": 2}


@dataclass(frozen=True, kw_only=True)
class WebpCodec(_PillowCodec):
    """Each image as a lossy WebP (libwebp method 6, the slowest and smallest); ``quality`` 1..100."""

    quality: int = 75

    name: ClassVar[str] = "webp"
    FORMAT: ClassVar[str] = "WEBP"
    PARAMS: ClassVar[tuple[Param, ...]] = (QUALITY,)

    def _save_options(self) -> dict[str, object]:
        return {"quality": self.quality, "method": 6, "lossless": False}

    def _stream_mode(self, c: int) -> str:
        return "RGB"  # Pillow writes a grayscale image as RGB WebP (libwebp has no gray mode)


# ------------------------------------------------------------------------------------ downsampling


@dataclass(frozen=True, kw_only=True)
class DownCodec(ImageCodec):
    """Images downsampled by ``factor`` (block mean or top-left pixel), stored raw: N*C*(H/F)*(W/F) bytes;
    decoded by bilinear upsampling back to (H, W)."""

    factor: int = 2
    mode: str = "area"

    name: ClassVar[str] = "down"
    PARAMS: ClassVar[tuple[Param, ...]] = (FACTOR, Param(key="mode", kind="choice", default="area",
                                                         choices=("area", "nearest")))
    TENSORS: ClassVar[tuple[str, ...]] = ("pixels",)

    def __post_init__(self) -> None:
        _check_int(self.name, "factor", self.factor, 2)
        if self.mode not in ("area", "nearest"):
            raise ValueError(f"down mode must be area or nearest, got {self.mode!r}")

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_factor(self.spec, x.shape[2], x.shape[3], self.factor)
        return {"pixels": downsample(x, self.factor, self.mode)}

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        n, c, h, w = shape
        _check_stored_size(self.spec, h, w, self.factor)
        small = self._expect(enc, "pixels", torch.uint8, (n, c, h // self.factor, w // self.factor))
        return upsample(small, (h, w))


@dataclass(frozen=True, kw_only=True)
class PackCodec(ImageCodec):
    """F*F images downsampled by F (block mean) tiled into one stored image of the original size, row-major
    (image k in packed image k // F^2, tile row (k % F^2) // F, tile column k % F), the last one zero-padded;
    the ceil(N / F^2) packed images are stored with the lossless inner ``codec``, plus their image count."""

    factor: int = 2
    codec: str = "zlib"

    name: ClassVar[str] = "pack"
    PARAMS: ClassVar[tuple[Param, ...]] = (FACTOR, Param(key="codec", kind="choice", default="zlib",
                                                         choices=("raw", "png", "zlib")))

    def __post_init__(self) -> None:
        _check_int(self.name, "factor", self.factor, 2)
        if self.codec not in ("raw", "png", "zlib"):
            raise ValueError(f"pack codec must be raw, png or zlib, got {self.codec!r}")

    @property
    def inner(self) -> ImageCodec:
        return image_codec(self.codec)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, c, h, w = x.shape
        sh, sw = _check_factor(self.spec, h, w, self.factor)
        f, per = self.factor, self.factor**2
        m = -(-n // per)
        small = torch.cat([downsample(x, f), x.new_zeros(m * per - n, c, sh, sw)])
        packed = small.view(m, f, f, c, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(m, c, h, w).contiguous()
        inner = self.inner.encode(packed).tensors
        # the count is stored, not only the meta shape, so a payload's images can be checked against it
        return {**inner, "count": torch.tensor([n], dtype=smallest_uint_dtype(n))}

    def decode(self, enc: Encoded) -> torch.Tensor:
        # the payload tensors are the inner codec's plus the count, so the class-level TENSORS cannot say them
        shape = self._check_payload(enc, (*self.inner.TENSORS, "count"), 4)
        return self._decode(enc, shape)

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        n, c, h, w = shape
        _check_stored_size(self.spec, h, w, self.factor)
        count = self._expect(enc, "count", smallest_uint_dtype(n), (1,))
        if int(count[0]) != n:
            raise CorruptFileError(f"{self.spec} payload counts {int(count[0])} images, its shape {n}")
        f, per, sh, sw = self.factor, self.factor**2, h // self.factor, w // self.factor
        m = -(-n // per)
        inner_tensors = {k: t for k, t in enc.tensors.items() if k != "count"}
        packed = self.inner.decode(Encoded(self.inner.spec, inner_tensors, meta_shape((m, c, h, w))))
        small = packed.view(m, c, f, sh, f, sw).permute(0, 2, 4, 1, 3, 5).reshape(m * per, c, sh, sw)[:n]
        return upsample(small, (h, w))


for _cls in (JpegCodec, WebpCodec, DownCodec, PackCodec):
    IMAGE_CODECS.register(_cls.name, _cls)
del _cls
