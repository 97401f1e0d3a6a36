"""The codec machinery: exact codecs for what a compressed training set stores: uint8 images and soft labels.

A codec turns a tensor into an :class:`Encoded` payload (a few CPU tensors of compact dtypes plus small
string metadata) and back. ``Encoded.nbytes`` is the payload size: the raw bytes of the payload tensors as
safetensors writes them, so a file holding one payload is ``8 + header_length + nbytes`` bytes.

Codecs are named by spec strings (the grammar of :mod:`softlabels.specs`), parsed by
:func:`~softlabels.sets.label_codecs.label_codec` and :func:`~softlabels.sets.image_codecs.image_codec`::

    spec   := NAME [":" param ("," param)*]
    param  := KEY "=" VALUE

    "fp32" | "fp16" | "bf16" | "hard" | "topk:k=5,values=fp16,renorm=1" | "quant:bits=4"
    "raw" | "png" | "zlib"

Whitespace around tokens is ignored; keys may appear in any order but at most once; omitted keys take their
defaults. ``codec.spec`` (and ``Encoded.codec``) is the canonical form, with every parameter written out in
declaration order, e.g. ``"quant:bits=4,renorm=0"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ..registry import Registry
from ..specs import Param, format_spec, parse_params, split_spec
from ..validation import CorruptFileError

__all__ = ["Codec", "Encoded", "build_codec", "encoded_from_safetensors_dict", "encoded_to_safetensors_dict",
           "meta_shape", "payload_nbytes", "smallest_uint_dtype"]

_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------- payload


@dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded tensor: ``codec`` spec, payload ``tensors`` (CPU, contiguous), decode ``meta`` strings."""

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


RENORM = Param(key="renorm", kind="bool", default=False)


def build_codec(registry: Registry, kind: str, spec: object) -> Codec:
    """The codec of ``registry`` named by ``spec`` (its class built from the parsed parameters)."""
    name, raw = split_spec(spec, kind)
    cls = registry.get(name)
    return cls(**parse_params(name, cls.PARAMS, raw, kind=kind))


# ------------------------------------------------------------------------------------------- codec base


class Codec:
    """Shared spec formatting and payload checks; subclasses are frozen keyword-only dataclasses."""

    name: ClassVar[str]
    kind: ClassVar[str]
    PARAMS: ClassVar[tuple[Param, ...]] = ()

    @property
    def spec(self) -> str:
        """The canonical spec string, every parameter written out."""
        return format_spec(self.name, self.PARAMS, {p.key: getattr(self, p.key) for p in self.PARAMS})

    def _check_payload(self, enc: Encoded, names: tuple[str, ...], ndim: int) -> tuple[int, ...]:
        """Check that ``enc`` was made by this codec and holds ``names``; return the decoded shape."""
        if not isinstance(enc, Encoded):
            raise TypeError(f"decode needs an Encoded payload, got {type(enc).__name__}")
        if enc.codec != self.spec:
            raise ValueError(f"payload was encoded with {enc.codec!r} but this {self.kind} is {self.spec!r}; "
                             f"decode it with {self.kind}({enc.codec!r}) or decode_{self.kind.split()[0]}s()")
        if set(enc.tensors) != set(names):
            raise CorruptFileError(
                f"{self.spec} payload must hold tensors {sorted(names)}, got {sorted(enc.tensors)}"
            )
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


def meta_shape(shape: tuple[int, ...]) -> dict[str, str]:
    return {"shape": ",".join(str(int(s)) for s in shape)}


# ----------------------------------------------------------------------------------------- safetensors


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix must match [A-Za-z0-9_-]+ (e.g. 'images', 'labels'), got {prefix!r}")
    return prefix


def encoded_to_safetensors_dict(enc: Encoded, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors ``{prefix}.{name}`` and metadata ``{prefix}.codec`` / ``{prefix}.meta`` (JSON), for
    safetensors."""
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
