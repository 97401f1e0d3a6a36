"""Codecs for what a compressed training set stores: one import path for the codec machinery
(:mod:`.codec_base`), the label codecs (:mod:`.label_codecs`) and the image codecs (:mod:`.image_codecs`;
the lossy ones in :mod:`.lossy_codecs`) and the projector label codec (:mod:`.projector_codec`)."""

from .codec_base import (
    Codec,
    Encoded,
    encoded_from_safetensors_dict,
    encoded_to_safetensors_dict,
    payload_nbytes,
    smallest_uint_dtype,
)
from .image_codecs import IMAGE_CODECS, ImageCodec, PngCodec, RawCodec, ZlibCodec, decode_images, image_codec
from .label_codecs import (
    LABEL_CODECS,
    Bf16Codec,
    Fp16Codec,
    Fp32Codec,
    HardCodec,
    LabelCodec,
    QuantCodec,
    TopKCodec,
    decode_labels,
    label_codec,
)
from .lossy_codecs import DownCodec, JpegCodec, PackCodec, WebpCodec
from .projector_codec import ProjectorCodec

__all__ = [
    "IMAGE_CODECS",
    "LABEL_CODECS",
    "Bf16Codec",
    "Codec",
    "DownCodec",
    "Encoded",
    "Fp16Codec",
    "Fp32Codec",
    "HardCodec",
    "ImageCodec",
    "JpegCodec",
    "LabelCodec",
    "PackCodec",
    "PngCodec",
    "ProjectorCodec",
    "QuantCodec",
    "RawCodec",
    "TopKCodec",
    "WebpCodec",
    "ZlibCodec",
    "decode_images",
    "decode_labels",
    "encoded_from_safetensors_dict",
    "encoded_to_safetensors_dict",
    "image_codec",
    "label_codec",
    "list_codecs",
    "payload_nbytes",
    "smallest_uint_dtype",
]


def list_codecs() -> dict[str, dict[str, str]]:
    """The registered codecs: ``{"image": {name: help}, "label": {name: help}}``."""
    return {"image": IMAGE_CODECS.describe(), "label": LABEL_CODECS.describe()}
