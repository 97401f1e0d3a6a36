"""Image codecs: how uint8 images (N, C, H, W) are stored (raw, png, zlib), decoded bit-exactly, and how
float images (synthetic sets made by a distillation method) are stored (``float:dtype=fp32|fp16|bf16``)."""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..registry import Registry
from ..specs import Param
from ..validation import CorruptFileError, check_images
from .codec_base import Codec, Encoded, build_codec, meta_shape, smallest_uint_dtype

__all__ = ["IMAGE_CODECS", "FloatCodec", "ImageCodec", "PngCodec", "RawCodec", "ZlibCodec", "decode_images",
           "image_codec", "list_image_codecs"]


class ImageCodec(Codec):
    """Encodes uint8 images (N, C, H, W) and decodes them bit-exactly."""

    kind: ClassVar[str] = "image codec"
    TENSORS: ClassVar[tuple[str, ...]] = ()
    stores_float: ClassVar[bool] = False  # True: float images in, float images out

    def encode(self, images: torch.Tensor) -> Encoded:
        """Encode uint8 (N, C, H, W) images (float images for a float codec)."""
        check_images(images)
        if self.stores_float != images.dtype.is_floating_point:
            if self.stores_float:
                raise TypeError(
                    f"image codec {self.spec!r} stores float images, got {images.dtype}; use raw, "
                    "png or zlib for uint8 images"
                )
            raise TypeError(f"image codec {self.spec!r} stores uint8 images, got {images.dtype}: store float "
                            "(synthetic) images with 'float:dtype=fp32' (or fp16 / bf16), or quantise them "
                            "first, e.g. (x * 255).round().clamp(0, 255).to(torch.uint8)")
        x = images.detach().to("cpu").contiguous()
        return Encoded(self.spec, self._encode(x), meta_shape(tuple(x.shape)))

    def decode(self, enc: Encoded) -> torch.Tensor:
        """Decode a payload made by this codec to uint8 (N, C, H, W)."""
        shape = self._check_payload(enc, self.TENSORS, 4)
        return self._decode(enc, shape)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


@dataclass(frozen=True, kw_only=True)
class RawCodec(ImageCodec):
    """The uint8 pixels as they are: N*C*H*W bytes."""

    name: ClassVar[str] = "raw"
    TENSORS: ClassVar[tuple[str, ...]] = ("pixels",)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": x.clone()}

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        return self._expect(enc, "pixels", torch.uint8, shape).clone()


_PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True, kw_only=True)
class PngCodec(ImageCodec):
    """Each image as a lossless PNG (zlib level 9, optimize); streams concatenated plus their lengths."""

    name: ClassVar[str] = "png"
    TENSORS: ClassVar[tuple[str, ...]] = ("data", "lengths")

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from PIL import Image

        arr = x.permute(0, 2, 3, 1).contiguous().numpy()
        if arr.shape[3] == 1:
            arr = arr[..., 0]
        streams = []
        for img in arr:  # PNG compresses one image at a time
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", optimize=True, compress_level=9)
            streams.append(buf.getvalue())
        lengths = torch.tensor([len(s) for s in streams], dtype=torch.int64)
        return {"data": _bytes_tensor(b"".join(streams)),
                "lengths": lengths.to(smallest_uint_dtype(int(lengths.max()))).contiguous()}

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        from PIL import Image

        n, c, h, w = shape
        data, lengths = enc.tensors["data"], enc.tensors["lengths"]
        if data.dtype != torch.uint8 or data.ndim != 1:
            raise CorruptFileError(
                f"png payload data must be 1-D uint8, got {data.dtype} {tuple(data.shape)}"
            )
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or tuple(lengths.shape) != (n,):
            raise CorruptFileError(f"png payload lengths must be {n} integers, got {lengths.dtype} "
                                   f"{tuple(lengths.shape)}")
        ends = lengths.long().cumsum(0)
        if int(lengths.min()) <= 0 or int(ends[-1]) != data.numel():
            raise CorruptFileError(
                f"png payload lengths sum to {int(ends[-1])} but it holds {data.numel()} bytes"
            )
        raw, out = data.numpy().tobytes(), []
        for start, end in zip((ends - lengths.long()).tolist(), ends.tolist(), strict=True):
            try:
                with Image.open(io.BytesIO(raw[start:end])) as im:
                    im.load()
                    mode, a = im.mode, np.asarray(im)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on a bad stream
                raise CorruptFileError(f"png payload holds an unreadable PNG stream ({e})") from None
            if mode != _PNG_MODES.get(c) or a.shape[:2] != (h, w):
                raise CorruptFileError(f"png payload image is {mode} {a.shape}, expected {_PNG_MODES.get(c)} "
                                       f"({h}, {w})")
            out.append(a.reshape(h, w, c))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True, kw_only=True)
class ZlibCodec(ImageCodec):
    """zlib (level 9) of the whole raw uint8 block; often beats per-image PNG on tiny grayscale images."""

    name: ClassVar[str] = "zlib"
    TENSORS: ClassVar[tuple[str, ...]] = ("data",)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"data": _bytes_tensor(zlib.compress(x.numpy().tobytes(), 9))}

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        data = enc.tensors["data"]
        if data.dtype != torch.uint8 or data.ndim != 1:
            raise CorruptFileError(
                f"zlib payload data must be 1-D uint8, got {data.dtype} {tuple(data.shape)}"
            )
        try:
            raw = zlib.decompress(data.numpy().tobytes())
        except zlib.error as e:
            raise CorruptFileError(f"zlib payload does not decompress ({e})") from None
        if len(raw) != math.prod(shape):
            raise CorruptFileError(
                f"zlib payload decompresses to {len(raw)} bytes, expected {math.prod(shape)}"
            )
        return _bytes_tensor(raw).view(shape)


_FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, kw_only=True)
class FloatCodec(ImageCodec):
    """Float images as they are, in ``dtype`` (fp32 exact; fp16 / bf16 round to nearest): N*C*H*W*4 (or 2)
    bytes. For synthetic sets, whose pixels are free parameters rather than 8-bit values."""

    name: ClassVar[str] = "float"
    PARAMS: ClassVar[tuple[Param, ...]] = (Param(key="dtype", kind="choice", default="fp32",
                                                 choices=tuple(_FLOAT_DTYPES)),)
    TENSORS: ClassVar[tuple[str, ...]] = ("values",)
    stores_float: ClassVar[bool] = True
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"float image codec: dtype must be one of {', '.join(_FLOAT_DTYPES)}, "
                             f"got {self.dtype!r}")

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"values": x.to(_FLOAT_DTYPES[self.dtype]).contiguous()}

    def _decode(self, enc: Encoded, shape: tuple[int, ...]) -> torch.Tensor:
        return self._expect(enc, "values", _FLOAT_DTYPES[self.dtype], shape).float()


IMAGE_CODECS: Registry[type[ImageCodec]] = Registry("image codec")
for _cls in (RawCodec, PngCodec, ZlibCodec, FloatCodec):
    IMAGE_CODECS.register(_cls.name, _cls)
del _cls


def image_codec(spec: str) -> ImageCodec:
    """The image codec named by ``spec``: ``"raw"``, ``"png"``, ``"zlib"``, ``"float:dtype=fp16"``, ..."""
    return build_codec(IMAGE_CODECS, "image codec", spec)  # type: ignore[return-value]


def decode_images(enc: Encoded) -> torch.Tensor:
    """Decode an image payload with the codec named in ``enc.codec``."""
    return image_codec(enc.codec).decode(enc)


def list_image_codecs() -> dict[str, str]:
    return IMAGE_CODECS.describe()
