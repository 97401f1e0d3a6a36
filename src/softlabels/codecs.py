"""Exact codecs for what a compressed training set stores: uint8 images and soft labels.

A codec turns a tensor into an :class:`Encoded` payload (a few CPU tensors of compact dtypes plus small
string metadata) and back. ``Encoded.nbytes`` is the payload size: the raw bytes of the payload tensors as
safetensors writes them, so a file holding one payload is ``8 + header_length + nbytes`` bytes.

Codecs are named by spec strings, parsed by :func:`label_codec` and :func:`image_codec`::

    spec   := NAME [":" param ("," param)*]
    param  := KEY "=" VALUE

    "fp32" | "fp16" | "bf16" | "hard" | "topk:k=5,values=fp16,renorm=1" | "quant:bits=4"
    "raw" | "png" | "zlib"

Whitespace around tokens is ignored; keys may appear in any order but at most once; omitted keys take their
defaults. ``codec.spec`` (and ``Encoded.codec``) is the canonical form, with every parameter written out in
declaration order, e.g. ``"quant:bits=4,renorm=0"``.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .registry import Registry
from .validation import CorruptFileError, check_choice, check_images, check_labels, check_positive_int

__all__ = [
    "IMAGE_CODECS",
    "LABEL_CODECS",
    "Bf16Codec",
    "Encoded",
    "Fp16Codec",
    "Fp32Codec",
    "HardCodec",
    "ImageCodec",
    "LabelCodec",
    "PngCodec",
    "QuantCodec",
    "RawCodec",
    "TopKCodec",
    "ZlibCodec",
    "decode_images",
    "decode_labels",
    "encoded_from_safetensors_dict",
    "encoded_to_safetensors_dict",
    "image_codec",
    "label_codec",
    "payload_nbytes",
    "smallest_uint_dtype",
]

_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------- payload


@dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded tensor: ``codec`` spec, payload ``tensors`` (CPU, contiguous) and decode ``meta`` strings."""

    codec: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not self.codec:
            raise TypeError(f"Encoded.codec must be a non-empty spec string, got {self.codec!r}")
        if not isinstance(self.tensors, Mapping) or not self.tensors:
            raise TypeError("Encoded.tensors must be a non-empty dict of name -> torch.Tensor")
        for k, t in self.tensors.items():
            if not isinstance(k, str) or not _KEY_RE.fullmatch(k):
                raise ValueError(f"payload tensor name {k!r} must match [A-Za-z0-9_]+ (no dots)")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"payload tensor {k!r} must be a torch.Tensor, got {type(t).__name__}")
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"payload tensor {k!r} must be a contiguous CPU tensor")
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"Encoded.meta must be a dict of str -> str, got {type(self.meta).__name__}")
        for k, v in self.meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"Encoded.meta must map str -> str, got {k!r}: {v!r}")
        object.__setattr__(self, "tensors", dict(self.tensors))
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def nbytes(self) -> int:
        """Payload bytes: the sum of ``numel * element_size`` over the payload tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def payload_nbytes(enc: Encoded) -> int:
    """The stored payload size of ``enc`` in bytes (``enc.nbytes``)."""
    return enc.nbytes


def smallest_uint_dtype(max_value: int) -> torch.dtype:
    """The smallest integer dtype holding every integer in ``[0, max_value]``.

    One of ``uint8`` (<= 255), ``int16`` (<= 32767), ``int32`` or ``int64``; wider unsigned torch dtypes
    are avoided because their op support is partial.
    """
    if isinstance(max_value, bool) or not isinstance(max_value, (int, np.integer)):
        raise TypeError(f"max_value must be an integer, got {max_value!r} ({type(max_value).__name__})")
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        if max_value <= torch.iinfo(dtype).max:
            return dtype
    raise ValueError(f"max_value {max_value} does not fit in int64")


# ------------------------------------------------------------------------------------------ spec parsing


_REQUIRED = object()


@dataclass(frozen=True)
class _Param:
    """One spec parameter: its key, the accepted string values (``None``: an integer >= 1) and a default."""

    key: str
    choices: tuple[str, ...] | None = None
    default: object = _REQUIRED
    convert: Callable[[str], object] = str

    def parse(self, codec: str, text: str) -> object:
        if self.choices is None:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{codec} parameter {self.key} must be an integer, got {text!r}") from None
        return self.convert(check_choice(f"{codec} parameter {self.key}", text, self.choices))


def _flag(text: str) -> bool:
    return text == "1"


_RENORM = _Param("renorm", ("0", "1"), False, _flag)


def _split_spec(spec: object, kind: str) -> tuple[str, dict[str, str]]:
    if not isinstance(spec, str):
        raise TypeError(f"{kind} spec must be a string like 'name' or 'name:key=value', got {type(spec).__name__}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"empty {kind} name in spec {spec!r}; write NAME or NAME:key=value,...")
    params: dict[str, str] = {}
    if sep:
        if not rest.strip():
            raise ValueError(f"{kind} spec {spec!r} has ':' but no parameters; drop the ':' or add key=value")
        for item in rest.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or not key or not value:
                raise ValueError(f"malformed parameter {item.strip()!r} in {kind} spec {spec!r}; write key=value")
            if key in params:
                raise ValueError(f"parameter {key!r} is given twice in {kind} spec {spec!r}")
            params[key] = value
    return name, params


def _build(registry: Registry, kind: str, spec: object) -> _Codec:
    name, raw = _split_spec(spec, kind)
    cls = registry.get(name)
    known = {p.key: p for p in cls.PARAMS}
    kwargs: dict[str, object] = {}
    for key, text in raw.items():
        if key not in known:
            if not known:
                raise ValueError(f"{kind} {name!r} takes no parameters, got {key!r} in spec {spec!r}")
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown parameter {key!r} for {kind} {name!r}.{hint} "
                             f"Valid parameters: {', '.join(known)}")
        kwargs[key] = known[key].parse(name, text)
    missing = [p.key for p in cls.PARAMS if p.default is _REQUIRED and p.key not in kwargs]
    if missing:
        example = ",".join(f"{k}=..." for k in missing)
        raise ValueError(f"{kind} {name!r} needs parameter(s) {', '.join(missing)}; write e.g. '{name}:{example}'")
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------- codec base


class _Codec:
    """Shared spec formatting and payload checks; subclasses are frozen keyword-only dataclasses."""

    name: ClassVar[str]
    kind: ClassVar[str]
    PARAMS: ClassVar[tuple[_Param, ...]] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string, every parameter written out."""
        parts = []
        for p in self.PARAMS:
            v = getattr(self, p.key)
            parts.append(f"{p.key}={int(v) if isinstance(v, bool) else v}")
        return f"{self.name}:{','.join(parts)}" if parts else self.name

    def _check_payload(self, enc: Encoded, names: tuple[str, ...], ndim: int) -> tuple[int, ...]:
        """Check that ``enc`` was made by this codec and holds ``names``; return the decoded shape."""
        if not isinstance(enc, Encoded):
            raise TypeError(f"decode needs an Encoded payload, got {type(enc).__name__}")
        if enc.codec != self.spec:
            raise ValueError(f"payload was encoded with {enc.codec!r} but this {self.kind} is {self.spec!r}; "
                             f"decode it with {self.kind}({enc.codec!r}) or decode_{self.kind.split()[0]}s()")
        if set(enc.tensors) != set(names):
            raise CorruptFileError(f"{self.spec} payload must hold tensors {sorted(names)}, got {sorted(enc.tensors)}")
        try:
            shape = tuple(int(s) for s in enc.meta["shape"].split(","))
        except (KeyError, ValueError):
            raise CorruptFileError(f"{self.spec} payload meta needs shape with {ndim} integers, "
                                   f"got {enc.meta.get('shape')!r}") from None
        if len(shape) != ndim or min(shape) < 1:
            raise CorruptFileError(f"{self.spec} payload has bad shape {enc.meta['shape']!r}")
        return shape

    def _expect(self, enc: Encoded, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        t = enc.tensors[key]
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise CorruptFileError(f"{self.spec} payload tensor {key!r} should be {dtype} {shape}, "
                                   f"got {t.dtype} {tuple(t.shape)}")
        return t


def _meta_shape(shape: tuple[int, ...]) -> dict[str, str]:
    return {"shape": ",".join(str(int(s)) for s in shape)}


# ------------------------------------------------------------------------------------------ label codecs


class LabelCodec(_Codec):
    """Encodes soft labels (N, C) and decodes them to float32 (N, C)."""

    kind: ClassVar[str] = "label codec"
    TENSORS: ClassVar[tuple[str, ...]] = ()

    def encode(self, labels: torch.Tensor) -> Encoded:
        """Encode (N, C) non-negative probabilities (rows summing to <= 1)."""
        check_labels(labels)
        if labels.shape[0] == 0 or labels.shape[1] == 0:
            raise ValueError(f"labels are empty (shape {tuple(labels.shape)}); need N >= 1 rows and C >= 1 classes")
        x = labels.detach().to("cpu")
        return Encoded(self.spec, self._encode(x), _meta_shape(tuple(x.shape)))

    def decode(self, enc: Encoded) -> torch.Tensor:
        """Decode a payload made by this codec to float32 (N, C)."""
        n, c = self._check_payload(enc, self.TENSORS, 2)
        return self._decode(enc, n, c)

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
    PARAMS: ClassVar[tuple[_Param, ...]] = (_Param("k"), _Param("values", tuple(_TOPK_VALUE_DTYPES), "fp32"),
                                            _RENORM)
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
    PARAMS: ClassVar[tuple[_Param, ...]] = (_Param("bits", ("8", "4", "2"), 8, int), _RENORM)
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
    return _build(LABEL_CODECS, "label codec", spec)  # type: ignore[return-value]


def decode_labels(enc: Encoded) -> torch.Tensor:
    """Decode a label payload with the codec named in ``enc.codec``."""
    return label_codec(enc.codec).decode(enc)


# ------------------------------------------------------------------------------------------ image codecs


class ImageCodec(_Codec):
    """Encodes uint8 images (N, C, H, W) and decodes them bit-exactly."""

    kind: ClassVar[str] = "image codec"
    TENSORS: ClassVar[tuple[str, ...]] = ()

    def encode(self, images: torch.Tensor) -> Encoded:
        """Encode uint8 (N, C, H, W) images."""
        check_images(images)
        if images.dtype != torch.uint8:
            raise TypeError(f"image codecs store uint8 images, got {images.dtype}; quantise first, e.g. "
                            "(x * 255).round().clamp(0, 255).to(torch.uint8)")
        x = images.detach().to("cpu").contiguous()
        return Encoded(self.spec, self._encode(x), _meta_shape(tuple(x.shape)))

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
            raise CorruptFileError(f"png payload data must be 1-D uint8, got {data.dtype} {tuple(data.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or tuple(lengths.shape) != (n,):
            raise CorruptFileError(f"png payload lengths must be {n} integers, got {lengths.dtype} "
                                   f"{tuple(lengths.shape)}")
        ends = lengths.long().cumsum(0)
        if int(lengths.min()) <= 0 or int(ends[-1]) != data.numel():
            raise CorruptFileError(f"png payload lengths sum to {int(ends[-1])} but it holds {data.numel()} bytes")
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
            raise CorruptFileError(f"zlib payload data must be 1-D uint8, got {data.dtype} {tuple(data.shape)}")
        try:
            raw = zlib.decompress(data.numpy().tobytes())
        except zlib.error as e:
            raise CorruptFileError(f"zlib payload does not decompress ({e})") from None
        if len(raw) != math.prod(shape):
            raise CorruptFileError(f"zlib payload decompresses to {len(raw)} bytes, expected {math.prod(shape)}")
        return _bytes_tensor(raw).view(shape)


IMAGE_CODECS: Registry[type[ImageCodec]] = Registry("image codec")
for _cls in (RawCodec, PngCodec, ZlibCodec):
    IMAGE_CODECS.register(_cls.name, _cls)
del _cls


def image_codec(spec: str) -> ImageCodec:
    """The image codec named by ``spec``: ``"raw"``, ``"png"`` or ``"zlib"``."""
    return _build(IMAGE_CODECS, "image codec", spec)  # type: ignore[return-value]


def decode_images(enc: Encoded) -> torch.Tensor:
    """Decode an image payload with the codec named in ``enc.codec``."""
    return image_codec(enc.codec).decode(enc)


# ----------------------------------------------------------------------------------------- safetensors


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix must match [A-Za-z0-9_-]+ (e.g. 'images', 'labels'), got {prefix!r}")
    return prefix


def encoded_to_safetensors_dict(enc: Encoded, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors ``{prefix}.{name}`` and metadata ``{prefix}.codec`` / ``{prefix}.meta`` (JSON) for safetensors."""
    p = _check_prefix(prefix)
    tensors = {f"{p}.{k}": t for k, t in enc.tensors.items()}
    meta = {f"{p}.codec": enc.codec, f"{p}.meta": json.dumps(enc.meta, sort_keys=True, separators=(",", ":"))}
    return tensors, meta


def encoded_from_safetensors_dict(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
                                  prefix: str) -> Encoded:
    """The :class:`Encoded` stored under ``prefix`` by :func:`encoded_to_safetensors_dict`."""
    p = _check_prefix(prefix)
    if f"{p}.codec" not in meta or f"{p}.meta" not in meta:
        found = sorted({k.split(".", 1)[0] for k in meta if k.endswith(".codec")})
        raise CorruptFileError(f"no payload under prefix {p!r} in the metadata (payload prefixes: {found})")
    try:
        decode_meta = json.loads(meta[f"{p}.meta"])
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{p}.meta is not valid JSON ({e})") from None
    own = {k[len(p) + 1:]: t for k, t in tensors.items() if k.startswith(f"{p}.")}
    try:
        return Encoded(meta[f"{p}.codec"], {k: t.contiguous() for k, t in own.items()}, decode_meta)
    except (TypeError, ValueError) as e:
        raise CorruptFileError(f"payload under prefix {p!r} is malformed: {e}") from None
