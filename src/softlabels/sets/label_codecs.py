"""Label codecs: how soft labels (N, C) are stored (dense fp32 / fp16 / bf16, top-k, quantised, hard)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..registry import Registry
from ..specs import Param
from ..validation import CorruptFileError, check_choice, check_labels, check_positive_int
from .codec_base import RENORM, Codec, Encoded, build_codec, meta_shape, smallest_uint_dtype

__all__ = ["LABEL_CODECS", "Bf16Codec", "Fp16Codec", "Fp32Codec", "HardCodec", "LabelCodec", "QuantCodec",
           "TopKCodec", "decode_labels", "label_codec", "list_label_codecs", "short_label_codec"]


class LabelCodec(Codec):
    """Encodes soft labels (N, C) and decodes them to float32 (N, C).

    A codec with ``needs_images`` (the projector) stores a label generator instead of the labels and reads
    the set's stored images on both sides: ``encode(labels, images=...)``, ``decode(enc, images=...)``
    (``CompressedSet`` passes the decoded images; other codecs ignore them).
    """

    kind: ClassVar[str] = "label codec"
    TENSORS: ClassVar[tuple[str, ...]] = ()
    needs_images: ClassVar[bool] = False

    def encode(self, labels: torch.Tensor, *, images: torch.Tensor | None = None) -> Encoded:
        """Encode (N, C) non-negative probabilities (rows summing to <= 1)."""
        check_labels(labels)
        if labels.shape[0] == 0 or labels.shape[1] == 0:
            raise ValueError(
                f"labels are empty (shape {tuple(labels.shape)}); need N >= 1 rows and C >= 1 classes"
            )
        x = labels.detach().to("cpu")
        tensors = self._encode_images(x, self._images(images, x.shape[0])) if self.needs_images \
            else self._encode(x)
        return Encoded(self.spec, tensors, meta_shape(tuple(x.shape)))

    def decode(self, enc: Encoded, *, images: torch.Tensor | None = None) -> torch.Tensor:
        """Decode a payload made by this codec to float32 (N, C)."""
        n, c = self._check_payload(enc, self.TENSORS, 2)
        if self.needs_images:
            return self._decode_images(enc, n, c, self._images(images, n))
        return self._decode(enc, n, c)

    def _images(self, images: torch.Tensor | None, n: int) -> torch.Tensor:
        if images is None:
            raise ValueError(f"label codec {self.spec} regenerates labels from the set's stored images: pass "
                             "images= (the decoded uint8 images, as CompressedSet does)")
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != n:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"label codec {self.spec} needs the {n} stored images (N, C, H, W), got {got}")
        return images.detach().to("cpu")

    def _encode_images(self, x: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _decode_images(self, enc: Encoded, n: int, c: int, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def row_sum_excess(self, num_classes: int) -> float:
        """How far above 1 a decoded row may sum when the input row summed to at most 1."""
        return 0.0

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _decode(self, enc: Encoded, n: int, c: int) -> torch.Tensor:
        raise NotImplementedError


def _renormalize(v: torch.Tensor) -> torch.Tensor:
    """Rows divided by their sum; an all-zero row becomes uniform over its entries."""
    s = v.sum(dim=1, keepdim=True)
    return torch.where(s > 0, v / torch.where(s > 0, s, torch.ones_like(s)), 1.0 / v.shape[1])


def _check_indices(spec: str, idx: torch.Tensor, c: int) -> torch.Tensor:
    idx = idx.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c):
        raise CorruptFileError(f"{spec} payload has class indices outside [0, {c})")
    return idx


class _DenseCodec(LabelCodec):
    dtype: ClassVar[torch.dtype]
    TENSORS: ClassVar[tuple[str, ...]] = ("values",)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"values": x.to(self.dtype, copy=True).contiguous()}

    def _decode(self, enc: Encoded, n: int, c: int) -> torch.Tensor:
        return self._expect(enc, "values", self.dtype, (n, c)).to(torch.float32, copy=True)


@dataclass(frozen=True, kw_only=True)
class Fp32Codec(_DenseCodec):
    """Dense float32 labels: lossless for float32 input; 4*N*C bytes."""

    name: ClassVar[str] = "fp32"
    dtype: ClassVar[torch.dtype] = torch.float32


@dataclass(frozen=True, kw_only=True)
class Fp16Codec(_DenseCodec):
    """Dense float16 labels: relative error <= 2^-11 on normal values; 2*N*C bytes."""

    name: ClassVar[str] = "fp16"
    dtype: ClassVar[torch.dtype] = torch.float16


@dataclass(frozen=True, kw_only=True)
class Bf16Codec(_DenseCodec):
    """Dense bfloat16 labels: relative error <= 2^-8; 2*N*C bytes."""

    name: ClassVar[str] = "bf16"
    dtype: ClassVar[torch.dtype] = torch.bfloat16


_TOPK_VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.uint8}


@dataclass(frozen=True, kw_only=True)
class TopKCodec(LabelCodec):
    """The k largest entries per row (ties: lower class first) as (index, value); N*k*(index+value) bytes.

    ``values=int8`` stores round(p*255) as uint8. Decoding scatters into zeros; ``renorm=1`` rescales each
    decoded row to sum to 1 (an all-zero row becomes uniform over its k kept classes).
    """

    k: int
    values: str = "fp32"
    renorm: bool = False

    name: ClassVar[str] = "topk"
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param(key="k", kind="int", check=lambda v: v >= 1, allowed="an integer >= 1"),
        Param(key="values", kind="choice", choices=tuple(_TOPK_VALUE_DTYPES), default="fp32"), RENORM)
    TENSORS: ClassVar[tuple[str, ...]] = ("indices", "values")

    def __post_init__(self) -> None:
        check_positive_int("topk k", self.k)
        check_choice("topk values", self.values, tuple(_TOPK_VALUE_DTYPES))
        if not isinstance(self.renorm, bool):
            raise TypeError(f"topk renorm must be a bool, got {self.renorm!r}")

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, c = x.shape
        if self.k > c:
            raise ValueError(f"topk k={self.k} exceeds the number of classes C={c}; use k <= {c}")
        order = torch.sort(x, dim=1, descending=True, stable=True).indices[:, : self.k]
        vals = x.gather(1, order)
        if self.values == "int8":
            stored = torch.round(vals.double().clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        else:
            stored = vals.to(_TOPK_VALUE_DTYPES[self.values])
        return {"indices": order.to(smallest_uint_dtype(c - 1)).contiguous(), "values": stored.contiguous()}

    def _decode(self, enc: Encoded, n: int, c: int) -> torch.Tensor:
        if self.k > c:
            raise CorruptFileError(f"{self.spec} payload has only {c} classes")
        idx = self._expect(enc, "indices", smallest_uint_dtype(c - 1), (n, self.k))
        vals = self._expect(enc, "values", _TOPK_VALUE_DTYPES[self.values], (n, self.k))
        idx = _check_indices(self.spec, idx, c)
        if self.k > 1 and (idx.sort(dim=1).values.diff(dim=1) == 0).any():
            raise CorruptFileError(f"{self.spec} payload repeats a class index within a row")
        v = vals.float() / 255.0 if self.values == "int8" else vals.to(torch.float32)
        if self.renorm:
            v = _renormalize(v)
        return torch.zeros(n, c, dtype=torch.float32).scatter_(1, idx, v)


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack values < 2**bits into uint8, first value in the most significant bits; zero-pad the last byte."""
    per = 8 // bits
    q = torch.cat([q, q.new_zeros((-q.numel()) % per)]).view(-1, per).to(torch.int32)
    shifts = torch.arange(per - 1, -1, -1, dtype=torch.int32) * bits
    return (q << shifts).sum(dim=1).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per - 1, -1, -1, dtype=torch.int32) * bits
    q = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return q.flatten()[:count]


@dataclass(frozen=True, kw_only=True)
class QuantCodec(LabelCodec):
    """Dense probabilities rounded to q in {0..2^bits-1} (value q/(2^bits-1)); ceil(N*C*bits/8) bytes.

    Rounding is to nearest (ties to even); 4- and 2-bit values are packed row-major across the whole matrix,
    most significant bits first, the last byte zero-padded. ``renorm=1`` rescales decoded rows to sum to 1
    (an all-zero row becomes uniform).
    """

    bits: int = 8
    renorm: bool = False

    name: ClassVar[str] = "quant"
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param(key="bits", kind="int", default=8, check=lambda v: v in (8, 4, 2), allowed="one of 8, 4, 2"),
        RENORM,
    )
    TENSORS: ClassVar[tuple[str, ...]] = ("packed",)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (8, 4, 2):
            raise ValueError(f"quant bits must be one of 8, 4, 2, got {self.bits!r}")
        if not isinstance(self.renorm, bool):
            raise TypeError(f"quant renorm must be a bool, got {self.renorm!r}")

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def row_sum_excess(self, num_classes: int) -> float:
        """Without renormalisation every entry may round up by half a level."""
        return 0.0 if self.renorm else num_classes * 0.5 / self.levels

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        q = torch.round(x.double().clamp(0.0, 1.0) * self.levels).to(torch.uint8).flatten()
        return {"packed": _pack(q, self.bits)}

    def _decode(self, enc: Encoded, n: int, c: int) -> torch.Tensor:
        packed = self._expect(enc, "packed", torch.uint8, (math.ceil(n * c * self.bits / 8),))
        v = _unpack(packed, self.bits, n * c).view(n, c).float() / float(self.levels)
        return _renormalize(v) if self.renorm else v


@dataclass(frozen=True, kw_only=True)
class HardCodec(LabelCodec):
    """The argmax class per row (ties: lowest index) in the smallest integer dtype; decodes to one-hot."""

    name: ClassVar[str] = "hard"
    TENSORS: ClassVar[tuple[str, ...]] = ("indices",)

    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"indices": x.argmax(dim=1).to(smallest_uint_dtype(x.shape[1] - 1)).contiguous()}

    def _decode(self, enc: Encoded, n: int, c: int) -> torch.Tensor:
        idx = _check_indices(self.spec, self._expect(enc, "indices", smallest_uint_dtype(c - 1), (n,)), c)
        return torch.zeros(n, c, dtype=torch.float32).scatter_(1, idx.unsqueeze(1), 1.0)


LABEL_CODECS: Registry[type[LabelCodec]] = Registry("label codec")
for _cls in (Fp32Codec, Fp16Codec, Bf16Codec, TopKCodec, QuantCodec, HardCodec):
    LABEL_CODECS.register(_cls.name, _cls)


def label_codec(spec: str) -> LabelCodec:
    """The label codec named by ``spec``, e.g. ``"fp16"``, ``"topk:k=4,values=int8"``, ``"quant:bits=4"``."""
    return build_codec(LABEL_CODECS, "label codec", spec)  # type: ignore[return-value]


def decode_labels(enc: Encoded) -> torch.Tensor:
    """Decode a label payload with the codec named in ``enc.codec``."""
    return label_codec(enc.codec).decode(enc)


def list_label_codecs() -> dict[str, str]:
    return LABEL_CODECS.describe()


def short_label_codec(spec: str) -> str:
    """A compact legend name: ``topk:k=2,values=fp16,renorm=0`` -> ``top2/fp16``."""
    name, _, rest = spec.partition(":")
    params = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
    if name == "topk":
        s = f"top{params.get('k')}/{params.get('values', 'fp32')}"
    elif name == "projector":
        s = f"proj{params.get('dim')}/{params.get('bits')}b"
    elif name == "quant":
        s = f"{params.get('bits')}-bit"
    else:
        s = name
    return s + ("+renorm" if params.get("renorm") == "1" else "")
